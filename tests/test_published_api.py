"""The published Python API (SPEC section 9) from a checkout: a notebook written against the
authors' scripts runs unchanged through the top-level modules inv_layer, inv_net and utils."""
import os
import subprocess
import sys

import numpy as np

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
    for published, by_name in (("get_backprop_updates", "backprop_directions"),
                               ("get_gait_updates", "gait_directions"),
                               ("get_tp_updates", "tp_directions")):
        weights, biases = getattr(net, published)(forward, targets)
        named = getattr(net, by_name)(forward, targets)
        for index, layer in enumerate(named):
            np.testing.assert_array_equal(weights[index], layer["weights"])
            np.testing.assert_array_equal(biases[index], layer["biases"])


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
    directions = net.gait_directions(forward, targets)
    net.add_inverse_directions(forward, directions)
    net.step(directions, 1e-3)
    assert not np.array_equal(net.parameters()["V1"], kept["V1"])
