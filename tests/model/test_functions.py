"""utils: statistics of a network on a data set, one-hot labels."""

import numpy as np
import pytest

from gaitprop.model import functions as utils
from gaitprop.model.net import SquareInvNet


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
