"""The published code's fingerprints (published_steps.npz in $GAITPROP_GOLDEN, by default
../shared/golden beside the repository), reproduced.

Setup as the golden README gives it: SquareInvNet(784, 4, start_seed=1), leaky ReLU, the
first 5 batches of 60 genuine MNIST training images in file order scaled by 1/255, output
target = one-hot label in the first 10 units and the network's own output elsewhere, one
optimiser step per batch. Each matrix M is stored as M @ r.
"""
import gzip
import os

import numpy as np
import pytest

from gaitprop.model import net as inv_net
from gaitprop.model import functions as utils
from helpers import GOLDEN_ROOT, by_layer, require_files, split

GOLDEN = "published_steps.npz"
BATCH, NB_BATCHES = 60, 5

# name: (rule, orthogonal_init, lambda, learning rate)
CASES = {
    "BP": ("BP", True, 0.0, 1e-4),
    "GAIT": ("GAIT", False, 0.1, 1e-4),
    "TP": ("TP", False, 1000.0, 1e-5),
}


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def read_idx(path, header, count, row_size):
    """The first `count` records of a gzipped IDX file, as uint8 rows."""
    with gzip.open(path, "rb") as stream:
        stream.read(header)
        data = stream.read(count * row_size)
    return np.frombuffer(data, dtype=np.uint8).reshape(count, row_size)


@pytest.fixture(scope="module")
def golden():
    """The fingerprints; fails (CI set) or skips (otherwise) without the file."""
    require_files(GOLDEN_ROOT, GOLDEN)
    return dict(np.load(os.path.join(GOLDEN_ROOT, GOLDEN)))


@pytest.fixture
def batches(mnist_raw):
    raw = os.path.join(mnist_raw, "MNIST", "raw")
    count = BATCH * NB_BATCHES
    images = read_idx(os.path.join(raw, "train-images-idx3-ubyte.gz"), 16, count, 784)
    labels = read_idx(os.path.join(raw, "train-labels-idx1-ubyte.gz"), 8, count, 1)[:, 0]
    images = images.astype(np.float64) / 255.0
    return [(images[i * BATCH:(i + 1) * BATCH], labels[i * BATCH:(i + 1) * BATCH])
            for i in range(NB_BATCHES)]


def directions(net, rule, forward, targets, ortho):
    if rule == "BP":
        return net.directions("BP", forward, targets, ortho_weighting=ortho)
    if rule == "GAIT":
        return net.directions("GAIT", forward, targets, ortho_weighting=ortho, gamma=1e-3)
    return net.directions("TP", forward, targets, ortho_weighting=ortho)


@pytest.mark.parametrize("name", sorted(CASES))
def test_published_steps(name, golden, batches):
    rule, orthogonal, ortho, learning_rate = CASES[name]
    r = golden["r"]
    net = inv_net.SquareInvNet(784, 4, start_seed=1, orthogonal_init=orthogonal)
    assert len(net.layers) == 5

    for i, layer in enumerate(net.layers):
        expected = golden[f"{name}/init_W{i}@r"]
        np.testing.assert_allclose(layer.weight_matrix @ r, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(layer.biases, 0.0)

    for step, (images, labels) in enumerate(batches):
        forward = net.forward_pass(images)
        targets = inv_net.output_targets(forward[-1], utils.one_hot(labels))
        weight_dirs, bias_dirs = split(directions(net, rule, forward, targets, ortho))
        if step == 0:
            for i in range(len(net.layers)):
                assert relative_error(weight_dirs[i] @ r,
                                      golden[f"{name}/step1_dirW{i}@r"]) < 1e-8, (name, i)
                assert relative_error(bias_dirs[i], golden[f"{name}/step1_dirb{i}"]) < 1e-8, \
                    (name, i)
        net.step(by_layer(weight_dirs, bias_dirs), learning_rate)
        net.update_inverse_model()

    for i, layer in enumerate(net.layers):
        assert relative_error(layer.weight_matrix @ r, golden[f"{name}/step5_W{i}@r"]) < 1e-8, \
            (name, i)
        assert relative_error(layer.biases, golden[f"{name}/step5_b{i}"]) < 1e-8, (name, i)
