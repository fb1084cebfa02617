"""The step runner's pieces that a CPU can check alone (step_runner.py); the runner itself
is tested through training in test_training.py and test_pack.py."""
import math

import numpy as np

from gaitprop.engine.step_runner import replay_difference


def test_replay_difference_is_relative_to_the_largest_expected_entry():
    expected = np.array([[1.0, -4.0], [2.0, 0.0]])
    replayed = expected + np.array([[0.0, 0.0], [2e-12, 0.0]])
    assert math.isclose(replay_difference(replayed, expected), 2e-12 / 4.0, rel_tol=1e-3)
    assert replay_difference(expected.copy(), expected) == 0.0
    assert replay_difference(np.zeros(3), np.zeros(3)) == 0.0
    assert replay_difference(np.array([1e-30]), np.zeros(1)) == math.inf


def test_non_finite_entries_the_replay_reproduces_are_no_difference():
    """A run whose weights were already NaN at capture: the replay gives the same NaN and
    infinities, and the graph is kept for the pack (NaN compared as a number was a NaN
    difference, which turned graphs off)."""
    expected = np.array([np.nan, np.inf, -np.inf, 3.0])
    assert replay_difference(expected.copy(), expected) == 0.0
    assert replay_difference(np.float32(1) * expected.astype(np.float32),
                             expected.astype(np.float32)) == 0.0


def test_a_replay_that_differs_in_a_non_finite_entry_is_infinitely_off():
    expected = np.array([1.0, 2.0, 3.0])
    for wrong in (np.nan, np.inf):
        replayed = expected.copy()
        replayed[2] = wrong  # not only the first array's first entry counts
        assert replay_difference(replayed, expected) == math.inf
    assert replay_difference(expected, np.array([1.0, 2.0, np.nan])) == math.inf


def test_a_runner_resumed_after_the_switch_to_lu_solves_replays_no_graph():
    """Graphs are off whenever a run solves by LU (`lu_only`): a run resumed switched (its
    checkpoint says so) as well as one that switches during training (StepRunner.settle).
    On CuPy an LU solve reads back to the host, which a CUDA graph's capture cannot hold."""
    from gaitprop.engine.step_runner import StepRunner
    from gaitprop.engine.training import StepSettings
    from gaitprop.model.net import InvNet, SquareInvNet
    for lu_only in (False, True):
        runner = StepRunner(InvNet.stack([SquareInvNet(16, 1, 1, True)]),
                            StepSettings.of_pack([StepSettings("GAIT", 1e-4)]), deferred=True,
                            graphs=True, lu_only=lu_only)
        assert runner.inverses.lu_only is lu_only
        assert runner.replay.enabled is not lu_only
