"""utils: statistics of a network on a data set, one-hot labels, data loading (SPEC 1, 6)."""
import gzip
import os
import shutil

import numpy as np
import pytest

import utils
from inv_net import SquareInvNet

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- evaluate

def identity_net(units):
    """A linear one-layer net with W = I, b = 0: its outputs are its inputs."""
    net = SquareInvNet(units, 0, start_seed=0, linear=True)
    net.layers[0].weight_matrix = np.eye(units)
    net.layers[0].biases = np.zeros(units)
    return net


def hand_made_set():
    """Seven samples of 12 units (only the first 10 are class outputs) and their labels.

    row label argmax-of-first-10 correct  squared error over the first 10 units
    0   2     2                   yes      (0.9-1)^2 + 0.1^2         = 0.02
    1   0     3                   no       (0.2-1)^2 + 0.5^2         = 0.89
    2   9     9                   yes      0 (unit 11 = 5 is not a class output)
    3   4     1                   no       (-0.5-1)^2 + 0.3^2        = 2.34
    4   7     7                   yes      (2-1)^2                   = 1
    5   1     1                   yes      (0.6-1)^2 + 0.4^2         = 0.32
    6   5     6                   no       0.7^2 + (0.2-1)^2         = 1.13
    accuracy 4/7, loss (0.02 + 0.89 + 0 + 2.34 + 1 + 0.32 + 1.13) / 7 = 5.7 / 7
    """
    x = np.zeros((7, 12))
    x[0, 2], x[0, 5] = 0.9, 0.1
    x[1, 3], x[1, 0] = 0.5, 0.2
    x[2, 9], x[2, 11] = 1.0, 5.0
    x[3, 4], x[3, 1] = -0.5, 0.3
    x[4, 7] = 2.0
    x[5, 1], x[5, 8] = 0.6, 0.4
    x[6, 6], x[6, 5] = 0.7, 0.2
    return x, np.array([2, 0, 9, 4, 7, 1, 5])


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10000])
def test_evaluate_hand_made(chunk_size):
    x, labels = hand_made_set()
    original = x.copy()
    accuracy, loss = utils.evaluate(identity_net(12), x, labels, chunk_size=chunk_size)
    assert accuracy == pytest.approx(4 / 7, abs=1e-15)
    assert loss == pytest.approx(5.7 / 7, rel=1e-13)
    np.testing.assert_array_equal(x, original)


def test_evaluate_matches_forward_pass_of_a_leaky_net():
    rng = np.random.RandomState(3)
    net = SquareInvNet(20, 2, start_seed=4)
    x = rng.rand(53, 20)
    labels = rng.randint(0, 10, 53)
    scores = net.forward_pass(x)[-1][:, :10]
    expected_accuracy = np.mean(np.argmax(scores, axis=1) == labels)
    expected_loss = np.mean(np.sum((scores - utils.one_hot(labels)) ** 2, axis=1))
    accuracy, loss = utils.evaluate(net, x, labels, chunk_size=8)
    assert accuracy == pytest.approx(expected_accuracy, abs=1e-15)
    assert 0 < accuracy < 1
    assert loss == pytest.approx(expected_loss, rel=1e-12)


def test_one_hot():
    rows = utils.one_hot(np.array([3, 0, 9, 3]))
    assert rows.shape == (4, 10) and rows.dtype == np.float64
    expected = np.zeros((4, 10))
    expected[0, 3] = expected[1, 0] = expected[2, 9] = expected[3, 3] = 1.0
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(utils.one_hot(np.array([1, 0]), nb_classes=3),
                                  [[0, 1, 0], [1, 0, 0]])


# ----------------------------------------------------------------------------- load_dataset

def copy_mnist(source_root, data_root, files=MNIST_FILES):
    raw = os.path.join(data_root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for stem in files:
        shutil.copyfile(os.path.join(source_root, "MNIST", "raw", stem + ".gz"),
                        os.path.join(raw, stem + ".gz"))
    return raw


def read_idx(path, header):
    with gzip.open(path, "rb") as stream:
        return np.frombuffer(stream.read()[header:], dtype=np.uint8)


@pytest.fixture(scope="module")
def mnist_loaded(mnist_raw, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    copy_mnist(mnist_raw, root)
    return utils.load_dataset("MNIST", root), mnist_raw


def test_load_mnist_shapes_and_values(mnist_loaded):
    ((x_train, y_train), (x_test, y_test)), _ = mnist_loaded
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.float64 and x_test.dtype == np.float64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                             5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                            1009]
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_load_mnist_equals_the_idx_files_in_stored_order(mnist_loaded):
    ((x_train, y_train), (x_test, y_test)), source = mnist_loaded
    raw = os.path.join(source, "MNIST", "raw")
    train = read_idx(os.path.join(raw, "train-images-idx3-ubyte.gz"), 16).reshape(60000, 784)
    test = read_idx(os.path.join(raw, "t10k-images-idx3-ubyte.gz"), 16).reshape(10000, 784)
    np.testing.assert_array_equal(x_train, train / 255.0)
    np.testing.assert_array_equal(x_test, test / 255.0)
    np.testing.assert_array_equal(y_train, read_idx(os.path.join(
        raw, "train-labels-idx1-ubyte.gz"), 8))
    np.testing.assert_array_equal(y_test, read_idx(os.path.join(
        raw, "t10k-labels-idx1-ubyte.gz"), 8))


def test_load_dataset_reports_missing_files(tmp_path):
    with pytest.raises(utils.DataError) as caught:
        utils.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message
    for stem in MNIST_FILES:
        assert stem in message


def test_load_dataset_names_only_the_missing_files(mnist_raw, tmp_path):
    raw = copy_mnist(mnist_raw, str(tmp_path), MNIST_FILES[1:])
    with pytest.raises(utils.DataError) as caught:
        utils.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert raw in message and "train-images-idx3-ubyte" in message
    for stem in MNIST_FILES[1:]:
        assert stem not in message


def test_load_dataset_rejects_truncated_gzip(mnist_raw, tmp_path):
    raw = copy_mnist(mnist_raw, str(tmp_path))
    damaged = os.path.join(raw, "train-labels-idx1-ubyte.gz")
    with open(damaged, "rb") as stream:
        content = stream.read()
    with open(damaged, "wb") as stream:
        stream.write(content[:len(content) // 2])
    with pytest.raises(utils.DataError) as caught:
        utils.load_dataset("MNIST", str(tmp_path))
    assert damaged in str(caught.value)
    assert not os.path.exists(os.path.join(raw, "train-labels-idx1-ubyte"))
    assert not os.path.exists(os.path.join(raw, "train-labels-idx1-ubyte.partial"))


def test_load_dataset_rejects_unknown_name(tmp_path):
    with pytest.raises(utils.DataError) as caught:
        utils.load_dataset("CIFAR", str(tmp_path))
    assert "CIFAR" in str(caught.value)


def test_load_dataset_rejects_truncated_unpacked_file(mnist_raw, tmp_path):
    raw = os.path.join(str(tmp_path), "MNIST", "raw")
    os.makedirs(raw)
    for stem in MNIST_FILES:
        with gzip.open(os.path.join(mnist_raw, "MNIST", "raw", stem + ".gz"), "rb") as stream:
            content = stream.read()
        if stem == "t10k-images-idx3-ubyte":
            content = content[:len(content) // 2]
        with open(os.path.join(raw, stem), "wb") as stream:
            stream.write(content)
    with pytest.raises(utils.DataError) as caught:
        utils.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert raw in message and "t10k-images-idx3-ubyte" in message
