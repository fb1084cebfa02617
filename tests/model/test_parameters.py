"""Parameters by name (parameters.py): setting a network's state copies into the arrays it
has, so that a CUDA graph captured over them (which replays the addresses it captured)
goes on reading and writing the arrays that checkpoints read."""
import numpy as np

from gaitprop.model.net import SquareInvNet, TowerInvNet


def addresses(net):
    """{checkpoint key: (the array object, its data address)} of every parameter and moment."""
    return {key: (array, array.__array_interface__["data"][0])
            for key, array in net.state().items()}


def stepped(net, seed):
    """`net` after one optimiser step along random directions (so that it has moments)."""
    rng = np.random.RandomState(seed)
    directions = [{name: rng.randn(*array.shape) for name, array in layer.state().items()}
                  for layer in net.layers]
    net.step(directions, 1e-3)
    return net


def test_set_state_keeps_every_parameter_and_moment_array_where_it_is():
    for make in (lambda seed: SquareInvNet(6, 2, start_seed=seed),
                 lambda seed: TowerInvNet([8, 6, 4], start_seed=seed, learn_inverses=True)):
        net, other = stepped(make(1), 0), stepped(make(2), 1)
        before = addresses(net)
        assert {key for key in before if key.startswith(("m", "v"))}  # moments are there
        wanted = {key: array.copy() for key, array in other.state().items()}
        net.set_state(wanted)
        after = addresses(net)
        assert after.keys() == before.keys()
        for key, (array, address) in after.items():
            assert array is before[key][0], key
            assert address == before[key][1], key
            np.testing.assert_array_equal(array, wanted[key], err_msg=key)


def test_set_state_without_moments_zeroes_the_optimiser_in_place():
    """A state without moments (a run before its first step) leaves the optimiser's arrays
    where they are, zeroed: the next step is the step of a new optimiser."""
    net = stepped(SquareInvNet(5, 1, start_seed=3), 0)
    fresh = SquareInvNet(5, 1, start_seed=3)
    moments = {key: array for key, array in net.state().items() if key[0] in "mv"}
    net.set_state(fresh.state())
    for key, array in net.state().items():
        if key[0] in "mv":
            assert array is moments[key]
            assert not array.any(), key
    stepped(net, 4)
    stepped(fresh, 4)
    for key, array in fresh.state().items():
        np.testing.assert_array_equal(net.state()[key], array, err_msg=key)


def test_set_state_refuses_another_shape_and_changes_nothing():
    """Every array is checked before any is copied: a state whose other arrays hold new
    values changes none of them (the arrays before the wrong one were overwritten)."""
    net = SquareInvNet(4, 1, start_seed=1)
    kept = {key: array.copy() for key, array in net.state().items()}
    for wrong_key in ("W0", "b1", "W1"):
        changed = {key: array + 1.0 for key, array in net.state().items()}
        changed[wrong_key] = np.zeros((5, 5))
        try:
            net.set_state(changed)
        except ValueError as error:
            assert "of shape (5, 5)" in str(error)
        else:
            raise AssertionError("a state of another shape was accepted")
        for key, array in net.state().items():
            np.testing.assert_array_equal(array, kept[key], err_msg=f"{key} ({wrong_key})")


def test_set_state_with_a_wrong_moment_changes_nothing_and_makes_no_optimiser():
    """A wrong moment's shape: no parameter is overwritten, and a network without an
    optimiser gets none (every parameter was overwritten, and an optimiser made)."""
    donor = stepped(SquareInvNet(4, 1, start_seed=2), 0)
    for net in (SquareInvNet(4, 1, start_seed=1), stepped(SquareInvNet(4, 1, start_seed=1), 1)):
        had_optimiser = net.optimizer is not None
        kept = {key: array.copy() for key, array in net.state().items()}
        changed = {key: array.copy() for key, array in donor.state().items()}
        changed["vb1"] = np.zeros(3)
        try:
            net.set_state(changed)
        except ValueError as error:
            assert "vb1" in str(error)
        else:
            raise AssertionError("a moment of another shape was accepted")
        assert (net.optimizer is not None) == had_optimiser
        assert net.state().keys() == kept.keys()
        for key, array in net.state().items():
            np.testing.assert_array_equal(array, kept[key], err_msg=key)
