"""checkpoint.py: the files a run writes (atomically, with the mode a plain open() gives)."""
import os

import numpy
import pytest

from gaitprop.runs import checkpoint
from gaitprop.engine import training
from gaitprop.engine import step as training_step
from gaitprop.model.net import SquareInvNet

# A checkpoint of a 12-unit network stored with the moments' earlier positional names.
POSITIONAL_MOMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "data", "positional_moments")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_a_run_writes_gets_the_mode_of_a_plain_open(tmp_path, umask):
    """Results files, weights, the checkpoint and run.json: 0666 less the umask (0644 with
    umask 022, so that a group on a shared machine can read the results), as open() gives."""
    net = SquareInvNet(12, 1, start_seed=1)
    statistics = training.Statistics({name: [0.5] for name in training.Statistics.NAMES},
                                     [[0, 0, 1.0, 2.0]])
    previous = os.umask(umask)
    try:
        checkpoint.save_results(str(tmp_path), net, statistics)
        checkpoint.save_checkpoint(str(tmp_path), net, statistics, 1, {"seed": 1})
        checkpoint.save_json(str(tmp_path / "run.json"), {"status": "running"})
        with open(tmp_path / "plain.txt", "w"):
            pass
        assert checkpoint.creation_mode() == 0o666 & ~umask
        assert os.umask(umask) == umask  # creation_mode left the umask as it was
    finally:
        os.umask(previous)
    names = sorted(os.listdir(tmp_path))
    assert {"checkpoint.npz", "run.json", "test_acc.txt", "alignment.txt",
            "0Lweights.npy", "1Lbiases.npy"} <= set(names)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in names}
    assert modes == dict.fromkeys(names, 0o666 & ~umask)


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "values.npy"
    checkpoint.save_array(str(path), numpy.arange(3.0))

    def failing(file):
        file.write(b"partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        checkpoint.write_atomically(str(path), failing)
    assert os.listdir(tmp_path) == ["values.npy"]
    numpy.testing.assert_array_equal(numpy.load(path), numpy.arange(3.0))


def test_a_checkpoint_with_positional_moments_still_resumes():
    """tests/data/positional_moments/checkpoint.npz was written before the moments were named
    by parameter (m0, v0, m1, ... in the order W0, b0, W1, b1): a 12-unit network with one
    hidden layer, seed 3, after three steps. It restores every array by its old name, and
    the next step equals that step taken from the stored arrays themselves."""
    from gaitprop.model.optimizer import MomentOptimizer
    stored = checkpoint.read_checkpoint(POSITIONAL_MOMENTS)
    meta, arrays = stored
    assert meta["epoch"] == 1
    net = SquareInvNet(12, 1, start_seed=7)
    statistics = checkpoint.restore_checkpoint(net, arrays)
    assert statistics.values["test_acc"] == [0.1, 0.2]
    for position, name in enumerate(("W0", "b0", "W1", "b1")):
        numpy.testing.assert_array_equal(net.parameters()[name], arrays[name])
        numpy.testing.assert_array_equal(net.optimizer.first_moments[name],
                                         arrays[f"m{position}"])
        numpy.testing.assert_array_equal(net.optimizer.second_moments[name],
                                         arrays[f"v{position}"])
    directions = {name: numpy.full_like(arrays[name], 0.5) for name in ("W0", "b0", "W1", "b1")}
    parameters = {name: arrays[name].copy() for name in directions}
    optimizer = MomentOptimizer(parameters)
    for position, name in enumerate(directions):
        optimizer.first_moments[name][...] = arrays[f"m{position}"]
        optimizer.second_moments[name][...] = arrays[f"v{position}"]
    optimizer.step(parameters, directions, dict.fromkeys(parameters, 1e-2))
    net.step([{"weights": directions[f"W{i}"], "biases": directions[f"b{i}"]}
                           for i in range(2)], 1e-2)
    for name in parameters:
        numpy.testing.assert_array_equal(net.parameters()[name], parameters[name])
    assert sorted(net.state()) == ["W0", "W1", "b0", "b1", "mW0", "mW1", "mb0", "mb1",
                                   "vW0", "vW1", "vb0", "vb1"]


def test_moments_of_the_wrong_shape_are_refused_by_name():
    net = SquareInvNet(12, 1, start_seed=1)
    net.step([{"weights": numpy.ones((12, 12)), "biases": numpy.ones(12)}] * 2, 0.1)
    state = {name: array.copy() for name, array in net.state().items()}
    state["vb1"] = numpy.zeros(11)
    with pytest.raises(ValueError, match=r"the moment vb1 is of shape \(11,\), not of the "
                                         r"shape \(12,\) of b1"):
        SquareInvNet(12, 1, start_seed=2).set_state(state)


@pytest.mark.parametrize("algorithm, inv_noise, inv_steps, inv_loss", [
    ("GAIT", 0.0, 1, "reconstruction"), ("DTP", 0.05, 1, "reconstruction"),
    ("DTP", 0.05, 3, "difference")])
def test_learned_inverses_resume_exactly_from_a_checkpoint(tmp_path, algorithm, inv_noise,
                                                           inv_steps, inv_loss):
    """A run with learned inverses (drawn start) checkpointed after 4 steps and restored
    into a fresh network goes on bit for bit as the uninterrupted run: V, c and their
    moments are in the checkpoint (the authors' branch reset them to exact inverses), and
    the inverses' noise (of each of their steps a batch) is drawn again as it was; the
    inverse-quality rows come back too, and inverse_quality.txt names its columns."""
    from helpers import assert_resumes_halfway_exactly
    settings = training_step.StepSettings(algorithm, 1e-3, 0.1, log_alignment=2,
                                          inv_learning_rate=3e-3, inv_noise=inv_noise,
                                          inv_steps=inv_steps, inv_loss=inv_loss)

    def make():
        return SquareInvNet(48, 2, 5, True, learn_inverses=True, exact_start=False)
    arrays, first_statistics, resumed_statistics, whole_statistics = (
        assert_resumes_halfway_exactly(str(tmp_path), settings, make))
    assert {"V1", "c2", "mV1", "vc2"} <= set(arrays)
    restored_statistics = checkpoint.restore_checkpoint(make(), arrays)
    assert restored_statistics.inverse_quality == first_statistics.inverse_quality
    assert resumed_statistics.inverse_quality == whole_statistics.inverse_quality
    rows = numpy.loadtxt(tmp_path / "inverse_quality.txt")
    assert rows.shape == (2, 2 + 2 + 2)
    with open(tmp_path / "inverse_quality.txt") as file:
        assert "reconstruction_layer1 reconstruction_layer2 distance_layer1" in file.readline()


def test_the_switch_to_lu_solves_is_checkpointed_and_restored_on_resume(tmp_path, monkeypatch,
                                                                        capsys):
    """step_runner.InversePolicy's switch from kept inverses to LU solves (a GPU run's, after
    many failed solves) is stored in checkpoint.npz ("lu_only"); a checkpoint without it
    (written before it was stored) means not switched. A run switched in epoch 1 and resumed
    gets a runner already switched, which keeps no inverses, and checkpoints the switch
    again. (On NumPy no run switches by itself: the runner of epoch 1 is switched by hand.)
    The evaluation a resumed run starts with is labelled with when it was made."""
    from gaitprop.engine import step_runner
    from gaitprop.engine import step as training_step
    from helpers import synthetic_run_sets, train_in_process
    from gaitprop.model.net import InvNet
    net = SquareInvNet(12, 1, start_seed=1)
    statistics = training.Statistics({name: [0.5] for name in training.Statistics.NAMES})
    for switched in (False, True):
        checkpoint.save_checkpoint(str(tmp_path), net, statistics, 1, {"seed": 1},
                                   lu_only=switched)
        assert checkpoint.switched_to_lu(checkpoint.read_checkpoint(str(tmp_path))[1]) is switched
    old = checkpoint.read_checkpoint(POSITIONAL_MOMENTS)
    assert "lu_only" not in old[1] and checkpoint.switched_to_lu(old[1]) is False
    for lu_only in (False, True):  # a switched runner keeps no inverses
        runner = step_runner.StepRunner(
            InvNet.stack([SquareInvNet(16, 1, 1, True)]),
            training_step.StepSettings.of_pack([training_step.StepSettings("GAIT", 1e-4)]),
            deferred=True, lu_only=lu_only)
        assert runner.inverses.lu_only is lu_only
        assert bool(runner.inverses.kept) is not lu_only
        assert (runner.net.layers[1].kept_inverse is None) is lu_only

    made = []

    class Runner(step_runner.StepRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.inverses.lu_only)
            if len(made) == 1:
                self.inverses.lu_only = True  # as InversePolicy.failed switches a GPU run
    monkeypatch.setattr(step_runner, "StepRunner", Runner)

    sets = synthetic_run_sets()
    flags = ["--nb_layers=0", "--eval_interval=0", f"--results_dir={tmp_path / 'results'}"]
    for epochs, extra in ((1, []), (2, ["--load"])):
        folder, _ = train_in_process(flags + [f"--nb_epochs={epochs}"] + extra, sets)
        meta, arrays = checkpoint.read_checkpoint(folder)
        assert meta["epoch"] == epochs and checkpoint.switched_to_lu(arrays)
    assert made == [False, True]
    resumed_lines = [line for line in capsys.readouterr().err.splitlines()
                     if line.startswith("epoch 2/2 batch ")]
    assert len(resumed_lines) == 10
    assert all("evaluation (after epoch 1): " in line for line in resumed_lines[:-1])
