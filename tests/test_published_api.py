"""The published Python API (SPEC section 9) from a checkout: a notebook written against the
authors' scripts runs unchanged through the top-level modules inv_layer, inv_net and utils."""
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ENV, REPO

# Written only against the published API: a network, a few steps of each rule with
# update_inverse_model(), its parameters saved and loaded.
PUBLISHED_NOTEBOOK = r"""
import sys
import numpy as np
from inv_layer import InvLayer
from inv_net import SquareInvNet, TowerInvNet

rng = np.random.RandomState(0)
net = SquareInvNet(16, 2, start_seed=1, orthogonal_init=True)
assert len(net.layers) == 3 and isinstance(net.layers[0], InvLayer)
x = rng.rand(12, 16)
targets = np.zeros((12, 16))
targets[np.arange(12), rng.randint(0, 10, 12)] = 1.0
for rule, options in (("get_backprop_updates", {}), ("get_gait_updates", {"gamma": 0.001}),
                      ("get_tp_updates", {})):
    for _ in range(3):
        forward = net.forward_pass(x)
        assert len(forward) == len(net.layers) + 1
        weight_directions, bias_directions = getattr(net, rule)(forward, targets, 0.0,
                                                                **options)
        assert [w.shape for w in weight_directions] == [(16, 16)] * 3
        assert [b.shape for b in bias_directions] == [(16,)] * 3
        before = net.layers[1].weight_matrix.copy()
        net.update_parameters(weight_directions, bias_directions, 1e-3)
        net.update_inverse_model()
        assert not np.array_equal(before, net.layers[1].weight_matrix)
layer = net.layers[1]
h = layer.forward(x)
assert np.allclose(layer.inverse(h), x, atol=1e-10)
net.save_params(sys.argv[1])
other = SquareInvNet(16, 2, start_seed=7)
other.load_params(sys.argv[1])
for mine, theirs in zip(net.layers, other.layers):
    assert np.array_equal(mine.weight_matrix, theirs.weight_matrix)
    assert np.array_equal(mine.biases, theirs.biases)
tower = TowerInvNet([16, 12, 10], start_seed=3)
assert [w.shape for w in tower.get_backprop_updates(tower.forward_pass(x), targets[:, :10])[0]] \
    == [(12, 12), (10, 10)]
print("published API ok")
"""


def test_a_script_written_against_the_published_api_runs_from_the_checkout(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", PUBLISHED_NOTEBOOK, str(folder)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "published API ok" in done.stdout
    assert sorted(os.listdir(folder)) == sorted(
        f"{index}L{name}.npy" for index in range(3) for name in ("weights", "biases"))


def test_the_published_directions_are_the_by_name_directions():
    from inv_net import SquareInvNet
    rng = np.random.RandomState(1)
    net = SquareInvNet(10, 1, start_seed=2, orthogonal_init=True)
    forward = net.forward_pass(rng.rand(6, 10))
    targets = rng.rand(6, 10)
    for published, rule in (("get_backprop_updates", "BP"), ("get_gait_updates", "GAIT"),
                            ("get_tp_updates", "TP")):
        weights, biases = getattr(net, published)(forward, targets)
        named = net.directions(rule, forward, targets)
        for index, layer in enumerate(named):
            np.testing.assert_array_equal(weights[index], layer["weights"])
            np.testing.assert_array_equal(biases[index], layer["biases"])


# ----------------------------------------------------------------------------- every name

def test_every_public_name_of_the_published_modules_is_there_with_its_signature():
    """The names and keywords of the published inv_layer, inv_net and utils (master)."""
    import inspect

    import inv_layer
    import inv_net
    import utils
    for name in ("leaky_relu", "leaky_relu_derivative", "leaky_relu_inverse", "indices_to_onehot",
                 "performance", "progress", "xp", "is_cupy"):
        assert hasattr(utils, name), name
    assert utils.xp is np and utils.is_cupy is False
    published = {
        inv_layer.InvLayer: ["nb_units", "seed", "transfer_func", "transfer_derivative_func",
                             "transfer_inverse_func", "orthogonal_init", "adaptive", "linear"],
        inv_net.SquareInvNet: ["nb_units", "nb_hidden_layers", "start_seed"],
        inv_net.TowerInvNet: ["net_structure", "start_seed"]}
    for cls, keywords in published.items():
        parameters = list(inspect.signature(cls).parameters)
        assert parameters[:len(keywords)] == keywords, (cls, parameters)
    assert inspect.signature(inv_layer.InvLayer).parameters["seed"].default == 1
    for name in ("__call__", "forward", "inverse", "update_inverse", "update_weights",
                 "update_biases", "save_params", "load_params"):
        assert callable(getattr(inv_layer.InvLayer, name)), name
    for name in ("forward_pass", "inverse_pass", "update_inverse_model", "save_params",
                 "load_params", "ortho_gradients", "update_parameters", "get_gait_updates",
                 "get_tp_updates", "get_backprop_updates"):
        assert callable(getattr(inv_net.SquareInvNet, name)), name
        assert callable(getattr(inv_net.TowerInvNet, name)), name


def test_the_utils_functions_compute_as_published():
    from utils import (indices_to_onehot, leaky_relu, leaky_relu_derivative, leaky_relu_inverse,
                       performance)

    from gaitprop.model.functions import evaluate
    values = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    kept = values.copy()
    np.testing.assert_array_equal(leaky_relu(values), [[-0.2, -0.05, 0.0, 0.5, 3.0]])
    np.testing.assert_array_equal(leaky_relu_derivative(values), [[0.1, 0.1, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(leaky_relu_inverse(values), [[-20.0, -5.0, 0.0, 0.5, 3.0]])
    np.testing.assert_array_equal(values, kept)  # new arrays, as published
    onehot = indices_to_onehot(np.array([3, 0, 9]))
    assert onehot.shape == (3, 10) and onehot.dtype == np.float64
    np.testing.assert_array_equal(np.argmax(onehot, axis=1), [3, 0, 9])
    assert onehot.sum() == 3
    assert indices_to_onehot(np.array([1, 2]), nb_categories=4).shape == (2, 4)
    from inv_net import SquareInvNet
    rng = np.random.RandomState(4)
    net = SquareInvNet(20, 1, start_seed=2)
    x, labels = rng.rand(30, 20), rng.randint(0, 10, 30)
    accuracy, loss = performance(net, x, indices_to_onehot(labels))
    assert (accuracy, loss) == evaluate(net, x, labels)
    outputs = net.forward_pass(x)[-1][:, :10]
    assert accuracy == np.mean(np.argmax(outputs, axis=1) == labels)
    assert np.isclose(loss, np.sum((outputs - indices_to_onehot(labels)) ** 2) / 30)


def test_progress_rewrites_one_line(capsys):
    from utils import progress
    progress(0.25, 0.5)
    progress(0.5, 0.75)
    assert capsys.readouterr().out == ("\r0.25 Percent Complete: 0.5 acc (training)"
                                       "\r0.5 Percent Complete: 0.75 acc (training)")


# ----------------------------------------------------------------------------- keywords

def test_the_published_transfer_keywords_build_the_package_network():
    """The published run.py's keywords: the trio of utils and adaptive=True give the network
    the package builds without them (leaky ReLU, the optimiser)."""
    from inv_net import SquareInvNet, TowerInvNet
    from utils import leaky_relu, leaky_relu_derivative, leaky_relu_inverse
    trio = {"transfer_func": leaky_relu, "transfer_derivative_func": leaky_relu_derivative,
            "transfer_inverse_func": leaky_relu_inverse}
    rng = np.random.RandomState(0)
    x = rng.rand(5, 12)
    for make in (lambda **kw: SquareInvNet(12, 2, start_seed=3, orthogonal_init=True, **kw),
                 lambda **kw: TowerInvNet([12, 12, 10], start_seed=3, **kw)):
        published, own = make(**trio, adaptive=True, linear=False), make()
        for mine, theirs in zip(published.forward_pass(x), own.forward_pass(x)):
            np.testing.assert_array_equal(mine, theirs)
        assert all(layer.adaptive for layer in published.layers)
        assert all(layer.transfer_func is leaky_relu for layer in published.layers)


@pytest.mark.parametrize("keyword", ["transfer_func", "transfer_derivative_func",
                                     "transfer_inverse_func"])
def test_another_transfer_function_is_refused_naming_what_is_supported(keyword):
    from inv_layer import InvLayer
    from inv_net import SquareInvNet, TowerInvNet
    for make in (lambda **kw: InvLayer(6, **kw), lambda **kw: SquareInvNet(6, 1, **kw),
                 lambda **kw: TowerInvNet([6, 5], **kw)):
        with pytest.raises(ValueError) as refused:
            make(**{keyword: lambda x: x})
        message = str(refused.value)
        assert keyword in message and "leaky_relu" in message and "linear=True" in message


def test_a_transfer_function_in_the_wrong_keyword_is_refused():
    from inv_layer import InvLayer
    from utils import leaky_relu, leaky_relu_inverse
    with pytest.raises(ValueError, match="transfer_inverse_func"):
        InvLayer(4, transfer_func=leaky_relu, transfer_inverse_func=leaky_relu)
    with pytest.raises(ValueError, match="transfer_func"):
        InvLayer(4, transfer_func=leaky_relu_inverse)


def test_adaptive_false_is_the_published_plain_step():
    from inv_layer import InvLayer
    from inv_net import SquareInvNet
    rng = np.random.RandomState(5)
    layer = InvLayer(6, seed=2, adaptive=False)
    weights, biases = layer.weight_matrix.copy(), layer.biases.copy()
    direction, bias_direction = rng.randn(6, 6), rng.randn(6)
    layer.update_weights(direction, 0.01)
    layer.update_biases(bias_direction, 0.01)
    np.testing.assert_array_equal(layer.weight_matrix, weights + 0.01 * direction)
    np.testing.assert_array_equal(layer.biases, biases + 0.01 * bias_direction)
    net = SquareInvNet(6, 1, start_seed=1, adaptive=False)
    before = [(each.weight_matrix.copy(), each.biases.copy()) for each in net.layers]
    weight_directions = [rng.randn(6, 6) for _ in net.layers]
    bias_directions = [rng.randn(6) for _ in net.layers]
    net.update_parameters(weight_directions, bias_directions, 0.1)
    for each, (w, b), dw, db in zip(net.layers, before, weight_directions, bias_directions):
        np.testing.assert_array_equal(each.weight_matrix, w + 0.1 * dw)
        np.testing.assert_array_equal(each.biases, b + 0.1 * db)
    assert net.optimizer is None


def test_adaptive_layer_steps_are_the_optimisers_with_moments_of_their_own():
    """update_weights / update_biases with adaptive=True: the optimiser of SPEC section 5, one
    pair of moments per array, kept from step to step."""
    from inv_layer import InvLayer
    rng = np.random.RandomState(6)
    layer = InvLayer(5, seed=1, adaptive=True)
    weights, biases = layer.weight_matrix.copy(), layer.biases.copy()
    m, v, mb, vb = (np.zeros((5, 5)), np.zeros((5, 5)), np.zeros(5), np.zeros(5))
    for _ in range(3):
        direction, bias_direction = rng.randn(5, 5), rng.randn(5)
        layer.update_weights(direction, 1e-2)
        layer.update_biases(bias_direction, 1e-2)
        m, v = 0.9 * m + 0.1 * direction, 0.99 * v + 0.01 * direction ** 2
        mb, vb = 0.9 * mb + 0.1 * bias_direction, 0.99 * vb + 0.01 * bias_direction ** 2
        weights = weights + 1e-2 * m / (1e-8 + np.sqrt(v))
        biases = biases + 1e-2 * mb / (1e-8 + np.sqrt(vb))
    np.testing.assert_allclose(layer.weight_matrix, weights, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.biases, biases, rtol=1e-13, atol=1e-15)


def test_update_parameters_on_learned_inverses_steps_w_and_b_only():
    """The published update_parameters on a network that learns its inverses: W and b take
    the optimiser's step, V and c stay; a training step after it steps them all."""
    from inv_net import SquareInvNet
    net = SquareInvNet(8, 2, start_seed=1, orthogonal_init=True, learn_inverses=True)
    rng = np.random.RandomState(2)
    forward = net.forward_pass(rng.rand(4, 8))
    targets = rng.rand(4, 8)
    kept = {key: array.copy() for key, array in net.parameters().items()}
    net.update_parameters(*net.get_gait_updates(forward, targets), 1e-3)
    for key, array in net.parameters().items():
        assert np.array_equal(array, kept[key]) == (key[0] in "Vc"), key
    directions = net.directions("GAIT", forward, targets)
    net.add_inverse_directions(forward, directions)
    net.step(directions, 1e-3)
    assert not np.array_equal(net.parameters()["V1"], kept["V1"])


def test_inverse_matrix_call_inverse_pass_and_ortho_gradients():
    from inv_layer import InvLayer
    from inv_net import SquareInvNet, TowerInvNet
    rng = np.random.RandomState(3)
    layer = InvLayer(7, seed=3)
    layer.update_weights(rng.randn(7, 7), 0.01)
    layer.update_inverse()
    np.testing.assert_allclose(layer.inverse_matrix, np.linalg.inv(layer.weight_matrix),
                               rtol=1e-10, atol=1e-12)
    x = rng.rand(3, 7)
    np.testing.assert_array_equal(layer(x), layer.forward(x))
    square = SquareInvNet(7, 2, start_seed=1)
    forward = square.forward_pass(x)
    for mine, theirs in zip(square.inverse_pass(forward[-1]), forward):
        np.testing.assert_allclose(mine, theirs, atol=1e-10)
    tower = TowerInvNet([7, 6, 4], start_seed=1)
    forward = tower.forward_pass(x)
    assert tower.net_structure == [7, 6, 4]
    for mine, theirs in zip(tower.inverse_pass(forward[-1], forward), forward):
        np.testing.assert_allclose(mine, theirs, atol=1e-10)
    with pytest.raises(ValueError, match="forward"):
        tower.inverse_pass(forward[-1])
    w = square.layers[1].weight_matrix
    off_diagonal = w @ w.T - np.diag(np.diag(w @ w.T))
    np.testing.assert_allclose(square.ortho_gradients(0.5, 1), 0.5 * 4 * off_diagonal @ w,
                               rtol=1e-12)


# ----------------------------------------------------------------------------- run.py's way

# A stand-in for keras.datasets (which the published run.py loads its data with): load_data()
# reads the IDX files of $KERAS_STAND_IN/<Name>/raw, as torchvision lays them out.
KERAS_STAND_IN = r'''
import os

import numpy


def read_idx(path):
    with open(path, "rb") as file:
        data = file.read()
    shape = numpy.frombuffer(data, ">i4", data[3], 4)
    return numpy.frombuffer(data, numpy.uint8, offset=4 + 4 * data[3]).reshape(shape)


class DataSet:
    def __init__(self, name):
        self.name = name

    def load_data(self):
        raw = os.path.join(os.environ["KERAS_STAND_IN"], self.name, "raw")
        return tuple((read_idx(os.path.join(raw, split + "-images-idx3-ubyte")),
                      read_idx(os.path.join(raw, split + "-labels-idx1-ubyte")))
                     for split in ("train", "t10k"))


mnist, fashion_mnist, cifar10 = DataSet("MNIST"), DataSet("FashionMNIST"), DataSet("CIFAR10")
'''

# A training script written as the authors' published run.py is written: the same calls of
# the published API in the same order with the same keywords, the same getopt flags,
# results folder, batches (len / 1000 images each, an epoch of 1000), evaluation before
# training and after every 10th batch, --load, and dumps.
PUBLISHED_RUN = r'''
import getopt
import os
import sys
import time

import numpy as np
from inv_net import SquareInvNet
from inv_net import TowerInvNet
from keras.datasets import mnist, fashion_mnist, cifar10
from utils import *

try:
    import cupy as xp
    is_cupy = True
except ImportError:
    import numpy as xp
    is_cupy = False

device, nb_epochs, nb_layers, algorithm = 0, 100, 1, "BP"
ortho_init, ortho_reg, load, dataset, seed = False, 0.0, False, "MNIST", 1
learning_rate, linear, tower = 0.0001, False, False
flags, _ = getopt.getopt(sys.argv[1:], "", [
    "algorithm=", "load", "linear", "tower", "seed=", "orthogonal_reg=", "device=",
    "nb_epochs=", "nb_layers=", "learning_rate=", "dataset="])
for flag, value in flags:
    if flag == "--algorithm":
        algorithm = value
    if flag == "--load":
        load = True
    if flag == "--linear":
        linear = True
    if flag == "--tower":
        tower = True
    if flag == "--seed":
        seed = int(value)
    if flag == "--orthogonal_reg":
        ortho_reg = float(value)
    if flag == "--device":
        device = int(value)
    if flag == "--nb_epochs":
        nb_epochs = int(value)
    if flag == "--nb_layers":
        nb_layers = int(value)
    if flag == "--learning_rate":
        learning_rate = float(value)
    if flag == "--dataset":
        dataset = value
if is_cupy:
    xp.cuda.Device(device).use()

outpath = "./results/" + dataset + "_" + algorithm + "_" + ("Linear_" if linear else "")
outpath += str(ortho_reg) + "OrthoReg_"
if ortho_reg == 0.0:
    ortho_init = True
outpath += str(seed) + "Seed_" + str(learning_rate) + "LR_"
outpath += str(nb_layers) + ("TOWER/" if tower else "L/")
os.makedirs(outpath, exist_ok=True)

(x_train, y_train), (x_test, y_test) = {"MNIST": mnist, "FMNIST": fashion_mnist}[
    dataset].load_data()
x_train = x_train.reshape(x_train.shape[0], -1)
x_test = x_test.reshape(x_test.shape[0], -1)
maxval = np.max(np.abs(x_train))
x_train, x_test = x_train / maxval, x_test / maxval
if is_cupy:
    onehot_y_train = indices_to_onehot(xp.asnumpy(y_train))
    onehot_y_test = indices_to_onehot(xp.asnumpy(y_test))
else:
    onehot_y_train, onehot_y_test = indices_to_onehot(y_train), indices_to_onehot(y_test)
device_x_train, device_y_train = xp.asarray(x_train), xp.asarray(onehot_y_train)
device_x_test, device_y_test = xp.asarray(x_test), xp.asarray(onehot_y_test)

if tower:
    net = TowerInvNet([x_train.shape[1], x_train.shape[1], 500, 200, 10], start_seed=seed,
                      transfer_func=leaky_relu, transfer_derivative_func=leaky_relu_derivative,
                      transfer_inverse_func=leaky_relu_inverse, orthogonal_init=ortho_init,
                      adaptive=True, linear=linear)
else:
    net = SquareInvNet(x_train.shape[1], nb_layers, start_seed=seed, transfer_func=leaky_relu,
                       transfer_derivative_func=leaky_relu_derivative,
                       transfer_inverse_func=leaky_relu_inverse, orthogonal_init=ortho_init,
                       adaptive=True, linear=linear)

if load:
    net.load_params(outpath)
    net.update_inverse_model()
    t_accuracies = np.loadtxt(outpath + "training_acc.txt").tolist()
    t_losses = np.loadtxt(outpath + "training_loss.txt").tolist()
    test_accuracies = np.loadtxt(outpath + "test_acc.txt").tolist()
    test_losses = np.loadtxt(outpath + "test_loss.txt").tolist()
    t_accuracy, t_loss = t_accuracies[-1], t_losses[-1]
else:
    t_accuracy, t_loss = performance(net, device_x_train, device_y_train)
    test_accuracy, test_loss = performance(net, device_x_test, device_y_test)
    t_accuracies, t_losses = [t_accuracy], [t_loss]
    test_accuracies, test_losses = [test_accuracy], [test_loss]

batch_size = int(len(device_x_train) / 1000)
nb_batches_per_epoch = int(len(device_x_train) / batch_size)
print_interval = 10
print(outpath)
for e_index in range(nb_epochs):
    print("\nEpoch " + str(e_index))
    progress(0.0, t_accuracy)
    start_time = time.time()
    for b_index in range(nb_batches_per_epoch):
        batch = slice(b_index * batch_size, (b_index + 1) * batch_size)
        forward = net.forward_pass(device_x_train[batch])
        targets = xp.hstack([device_y_train[batch], forward[-1][:, 10:]])
        if algorithm == "BP":
            weight_updates, bias_updates = net.get_backprop_updates(
                forward, targets, ortho_weighting=ortho_reg)
        elif algorithm == "GAIT":
            weight_updates, bias_updates = net.get_gait_updates(
                forward, targets, gamma=1e-3, ortho_weighting=ortho_reg)
        elif algorithm == "TP":
            weight_updates, bias_updates = net.get_tp_updates(
                forward, targets, ortho_weighting=ortho_reg)
        net.update_parameters(weight_updates, bias_updates, learning_rate)
        if algorithm == "GAIT" or algorithm == "TP":
            net.update_inverse_model()
        if b_index != 0 and b_index % print_interval == 0:
            t_accuracy, t_loss = performance(net, device_x_train, device_y_train)
            test_accuracy, test_loss = performance(net, device_x_test, device_y_test)
            t_accuracies.append(t_accuracy), t_losses.append(t_loss)
            test_accuracies.append(test_accuracy), test_losses.append(test_loss)
            progress(b_index / nb_batches_per_epoch, t_accuracy)
    print("\nTime: :" + str(time.time() - start_time))
print("\nTraining Complete!")
np.savetxt(outpath + "training_acc.txt", t_accuracies)
np.savetxt(outpath + "training_loss.txt", t_losses)
np.savetxt(outpath + "test_acc.txt", test_accuracies)
np.savetxt(outpath + "test_loss.txt", test_losses)
net.save_params(outpath)
'''

TRAINING, TEST = 1000, 200  # images of the small data root: batches of 1, 1000 an epoch


def write_idx(path, array):
    """An unsigned-byte IDX file of `array` (uint8), as MNIST's are."""
    with open(path, "wb") as file:
        file.write(bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes())
        file.write(np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_mnist(data_root, tmp_path_factory):
    """A data root holding MNIST's first 1,000 training and 200 test images (genuine), read
    by run.py (torchvision) and by the keras stand-in alike."""
    source = os.path.join(data_root.require("MNIST"), "MNIST", "raw")
    root = str(tmp_path_factory.mktemp("small_mnist"))
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    read = {}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(os.path.join(source, stem), "rb") as file:
            data = file.read()
        shape = np.frombuffer(data, ">i4", data[3], 4)
        read[stem] = np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)
        count = TRAINING if stem.startswith("train") else TEST
        write_idx(os.path.join(raw, stem), read[stem][:count])
    return root


@pytest.mark.parametrize("flags", [["--algorithm=BP", "--nb_layers=1"],
                                   ["--algorithm=GAIT", "--nb_layers=1"],
                                   ["--algorithm=TP", "--tower"]],
                         ids=["BP", "GAIT", "TP-tower"])
def test_a_script_written_as_the_published_run_py_gives_run_pys_results(small_mnist, tmp_path,
                                                                         flags):
    """The published run.py's way (PUBLISHED_RUN, through the checkout's top-level modules,
    run from a folder of its own with the checkout on PYTHONPATH and keras.datasets stood in)
    trains an epoch and dumps the same accuracies, losses and weights as ./run.py with the
    same settings on the same data; loaded again (--load, no epoch) it dumps them unchanged."""
    from helpers import cli
    folder = tmp_path / "published"
    (folder / "keras" / "datasets").mkdir(parents=True)
    (folder / "keras" / "__init__.py").write_text("")
    (folder / "keras" / "datasets" / "__init__.py").write_text(KERAS_STAND_IN)
    (folder / "run.py").write_text(PUBLISHED_RUN)
    env = dict(ENV, PYTHONPATH=REPO, KERAS_STAND_IN=small_mnist)
    argv = [sys.executable, "run.py"] + flags + ["--nb_epochs=1"]
    script = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # beside ./run.py
    try:
        ours = cli(flags + ["--nb_epochs=1", "--data_dir", small_mnist, "--results_dir",
                            tmp_path / "results"], cwd=tmp_path)
        out, err = script.communicate(timeout=900)
    finally:
        if script.poll() is None:
            script.kill()
            script.communicate()
    assert script.returncode == 0, err
    assert "Training Complete!" in out
    assert ours.returncode == 0, ours.output
    [name] = os.listdir(tmp_path / "results")
    theirs, mine = folder / "results" / name, tmp_path / "results" / name
    files = sorted(os.listdir(theirs))
    assert len(files) == 4 + 2 * (4 if "--tower" in flags else 2), files
    for file in files:
        expected = (np.loadtxt(mine / file) if file.endswith(".txt")
                    else np.load(mine / file, allow_pickle=False))
        found = (np.loadtxt(theirs / file) if file.endswith(".txt")
                 else np.load(theirs / file, allow_pickle=False))
        if file.endswith(".txt"):
            assert found.shape == (100,), file
        np.testing.assert_array_equal(found, expected, err_msg=file)
    dumped = {file: (theirs / file).read_bytes() for file in files}
    done = subprocess.run(argv[:-1] + ["--load", "--nb_epochs=0"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert {file: (theirs / file).read_bytes() for file in files} == dumped
