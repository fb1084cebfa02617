"""checkpoint.py: the files a run writes (atomically, with the mode a plain open() gives)."""
import os

import numpy
import pytest

import checkpoint
import training
from inv_net import SquareInvNet


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
