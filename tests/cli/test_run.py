"""The command line (run.py): flags, bad input, the results folder name, the evaluation
cadence, and one-epoch end-to-end runs of BP, GAIT and TP on genuine MNIST and
Fashion-MNIST (issue 2, item 8: "the CLI" and "end to end on real data").

Runs are subprocesses `python run.py ...` (helpers.cli) with single-threaded BLAS (several
run side by side on a small machine; timings are never asserted).
"""
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

import numpy
import pytest

from gaitprop.arrays import backend
from gaitprop.runs import run_folder
from gaitprop.runs import settings as settings_table
from gaitprop.engine import training
from gaitprop.engine import cadence
from helpers import (ENV, NO_NETWORK, RUN_PY, STATISTICS, assert_clean, cli, copy_raw,
                     line_count, missing_data)
from gaitprop.runs.settings import build_net, build_parser


# ----------------------------------------------------------------------------- helpers

def read_statistics(folder):
    return {name: numpy.loadtxt(os.path.join(folder, name + ".txt"), ndmin=1)
            for name in STATISTICS}


def assert_results_files(folder, nb_layers, nb_lines):
    """Every results file (docs/results.md's table): statistics with `nb_lines` lines,
    (784, 784)/(784,) arrays."""
    for name in STATISTICS:
        path = os.path.join(folder, name + ".txt")
        assert line_count(path) == nb_lines, (name, nb_lines)
        values = numpy.loadtxt(path, ndmin=1)
        assert values.shape == (nb_lines,) and numpy.isfinite(values).all()
        if name.endswith("_acc"):
            assert ((values >= 0) & (values <= 1)).all()
        else:
            assert (values >= 0).all()
    for index in range(nb_layers + 1):
        weights = numpy.load(os.path.join(folder, f"{index}Lweights.npy"), allow_pickle=False)
        biases = numpy.load(os.path.join(folder, f"{index}Lbiases.npy"), allow_pickle=False)
        assert weights.shape == (784, 784) and biases.shape == (784,)
        assert weights.dtype == biases.dtype == numpy.float64
        assert numpy.isfinite(weights).all() and numpy.isfinite(biases).all()
    for name in (f"{nb_layers + 1}Lweights.npy", f"{nb_layers + 1}Lbiases.npy"):
        assert not os.path.exists(os.path.join(folder, name)), "one layer too many"


# ----------------------------------------------------------------------------- parsing

# flag -> (text on the command line, parsed value); none of them is the default.
SAMPLES = {
    "algorithm": ("GAIT", "GAIT"), "seed": ("7", 7), "orthogonal_reg": ("0.5", 0.5),
    "device": ("1", 1), "nb_epochs": ("3", 3), "nb_layers": ("4", 4),
    "learning_rate": ("1e-05", 1e-05), "dataset": ("FMNIST", "FMNIST"),
    "eval_interval": ("0", 0), "dtype": ("float32", "float32"), "backend": ("numpy", "numpy"),
    "data_dir": ("/some/data", "/some/data"), "results_dir": ("/some/results", "/some/results"),
    "target_step": ("0.25", 0.25), "inv_steps": ("7", 7), "inv_loss": ("difference", "difference"),
}
PUBLISHED_FLAGS = ("algorithm", "seed", "orthogonal_reg", "device", "nb_epochs", "nb_layers",
              "learning_rate", "dataset", "linear", "tower", "orthogonal_init", "load")
DEFAULTS = {"algorithm": "BP", "seed": 1, "orthogonal_reg": 0.0, "device": 0,
                 "nb_epochs": 100, "nb_layers": 1, "learning_rate": 0.0001, "dataset": "MNIST",
                 "linear": False, "tower": False, "orthogonal_init": False, "load": False,
                 "eval_interval": 10, "overwrite": False}


def parser_options():
    """(option string, argparse action) for every flag of run.py but --help."""
    return [(option, action) for action in build_parser()._actions
            for option in action.option_strings if option not in ("-h", "--help")]


def sample(action):
    """(text, parsed value) for a flag's action; None for a switch."""
    if action.nargs == 0:
        return None
    if action.dest in SAMPLES:
        return SAMPLES[action.dest]
    if action.choices:
        choice = [c for c in action.choices if c != action.default][0]
        return str(choice), choice
    return "3", action.type("3") if action.type else "3"


def test_published_flags_exist_with_their_defaults():
    options = {option for option, _ in parser_options()}
    for flag in PUBLISHED_FLAGS + ("eval_interval", "overwrite", "data_dir", "results_dir"):
        assert f"--{flag}" in options, flag
    assert "--orthogona_reg" in options  # the published README's spelling
    args = build_parser().parse_args([])
    for name, value in DEFAULTS.items():
        assert getattr(args, name) == value and type(getattr(args, name)) is type(value), name


# The flags a flag needs beside it (run.py refuses it alone, see settings.refusal).
CONTEXT = {"learn_inv": ["--algorithm=GAIT"], "gamma": ["--algorithm=GAIT"],
           "no_inv_init": ["--algorithm=TP", "--learn_inv"],
           "inv_learning_rate": ["--algorithm=GAIT", "--learn_inv"],
           "inv_noise": ["--algorithm=DTP", "--learn_inv"],
           "target_step": ["--algorithm=TP"], "inv_steps": ["--algorithm=DTP", "--learn_inv"],
           "inv_loss": ["--algorithm=GAIT", "--learn_inv", "--inv_noise=0.1"]}


@pytest.mark.parametrize("option", [option for option, _ in parser_options()])
def test_every_flag_parses_in_both_forms(option):
    action = dict(parser_options())[option]
    parser = build_parser()
    value = sample(action)
    context = CONTEXT.get(action.dest, [])
    if value is None:
        args = parser.parse_args(context + [option])
        assert getattr(args, action.dest) is True
        assert getattr(parser.parse_args([]), action.dest) is False
        return
    text, expected = value
    assert expected != action.default, "the sample must differ from the default"
    joined = parser.parse_args(context + [f"{option}={text}"])
    separate = parser.parse_args(context + [option, text])
    assert getattr(joined, action.dest) == expected
    assert getattr(separate, action.dest) == expected
    assert type(getattr(joined, action.dest)) is type(expected)
    assert vars(joined) == vars(separate)


def test_published_spelling_of_the_regulariser_flag():
    parser = build_parser()
    for argv in (["--orthogona_reg=0.1"], ["--orthogona_reg", "0.1"]):
        args = parser.parse_args(argv)
        assert args.orthogonal_reg == 0.1
    assert parser.parse_args(["--orthogonal_reg=1000"]).orthogonal_reg == 1000.0


@pytest.mark.parametrize("argv", [["--algorithm=BP"], ["--algorithm=GAIT"], ["--algorithm=TP"],
                                  ["--dataset=MNIST"], ["--dataset=FMNIST"],
                                  ["--dataset=KMNIST"], ["--seed=0"], ["--nb_layers=0"]])
def test_every_allowed_value_parses(argv):
    name, text = argv[0][2:].split("=")
    assert str(getattr(build_parser().parse_args(argv), name)) == text


BAD = [  # (argv, a word the message must contain)
    (["--algorithm=SGD"], "SGD"),
    (["--dataset=CIFAR10"], "CIFAR10"),
    (["--seed=1.5"], "1.5"),
    (["--seed=one"], "one"),
    (["--nb_epochs=0"], "nb_epochs"),
    (["--learning_rate=0"], "learning_rate"),
    (["--nb_layers=-1"], "-1"),
    (["--learning_rate=inf"], "inf"),
    (["--orthogonal_reg=-0.1"], "orthogonal_reg"),
    (["--learning_rate=nan"], "nan"),
    (["--eval_interval=-5"], "eval_interval"),
    (["--dtype=float16"], "float16"),
    (["--learnig_rate=0.1"], "learnig_rate"),
    (["--nb_layres", "2"], "nb_layres"),
    (["stray_argument"], "stray_argument"),
    (["--learn_inv"], "--learn_inv"),
    (["--algorithm=BP", "--learn_inv", "--nb_layers=4"], "BP"),
    (["--algorithm=GAIT", "--no_inv_init"], "--learn_inv"),
    (["--algorithm=TP", "--inv_learning_rate=0.01"], "--inv_learning_rate"),
    (["--algorithm=GAIT", "--learn_inv", "--gamma=0"], "gamma"),
    (["--seed=-3"], "--seed"),
    (["--seed=4294967296"], "--seed"),
    (["--algorithm=BP", "--gamma=0.01"], "--gamma"),
    (["--algorithm=GAIT", "--learn_inv", "--nb_layers=0"], "--nb_layers"),
    (["--eval_interval=1000"], "--eval_interval"),
    (["--load", "--overwrite"], "--overwrite"),
    (["--orthogonal_reg=inf"], "finite"),
    (["--algorithm=DTP", "--learn_inv", "--inv_noise=1e300"], "--inv_noise"),
    (["--algorithm=GAIT", "--learn_inv", "--inv_noise=1000.5"], "--inv_noise"),
]
AS_PROCESSES = [BAD[index] for index in (0, 1, 3, 5, 6, 9, 12, 16, 17, 20, 21, 24, 25)]

# Settings run.py refuses once parsed (settings.refusal), each with the words its message
# must hold: the flag at fault and the fix (the values it takes).
REFUSED = [
    (["--seed=-3"], ["--seed", "0 to 4294967295"]),
    (["--seed=4294967296"], ["--seed", "0 to 4294967295"]),
    (["--seed=4294967295", "--nb_layers=2"], ["--seed", "at most 4294967294"]),
    (["--seed=4294967293", "--tower"], ["--seed", "at most 4294967292"]),
    (["--algorithm=BP", "--gamma=0.01"], ["--gamma", "--algorithm=GAIT", "Drop --gamma"]),
    (["--algorithm=BP", "--gamma=0.001"], ["--gamma", "BP takes no gamma"]),
    (["--algorithm=TP", "--gamma=1e-3"], ["--gamma", "TP takes no gamma"]),
    (["--algorithm=TP", "--gamma=1e-05", "--learn_inv"], ["--gamma", "--algorithm=GAIT"]),
    (["--algorithm=GAIT", "--learn_inv", "--nb_layers=0"],
     ["--learn_inv", "--nb_layers=1", "--tower"]),
    (["--algorithm=TP", "--learn_inv", "--no_inv_init", "--nb_layers=0"], ["--learn_inv"]),
    (["--eval_interval=1000"], ["--eval_interval", "1000 batches", "at most 999"]),
    (["--eval_interval=5000", "--validation=10000"], ["--eval_interval", "at most 999"]),
    (["--eval_interval=1001", "--validation=58999"], ["--eval_interval", "at most 1000"]),
    (["--load", "--overwrite"], ["--load", "--overwrite", "one of them"]),
    (["--algorithm=DTP", "--inv_noise=0.1"], ["--inv_noise", "add --learn_inv"]),
    (["--algorithm=DTP", "--learn_inv", "--gamma=0.01"], ["--gamma", "--algorithm=GAIT"]),
    (["--algorithm=BP", "--learn_inv"], ["--learn_inv", "GAIT, TP or DTP"]),
    (["--nb_layers=1000000"], ["--nb_layers=1000000", "memory", "at most"]),
    (["--nb_layers=" + "9" * 30], ["--nb_layers", "memory", "at most"]),
]
# Their neighbours, which make a run.
ACCEPTED = [["--seed=0"], ["--seed=4294967295"], ["--seed=4294967295", "--nb_layers=0"],
            ["--seed=4294967294", "--nb_layers=2"], ["--seed=4294967292", "--tower"],
            ["--algorithm=GAIT", "--gamma=0.01"], ["--algorithm=GAIT", "--gamma=0.001"],
            ["--algorithm=TP", "--target_step=0.5"],
            ["--algorithm=GAIT", "--learn_inv", "--nb_layers=0", "--tower"],
            ["--algorithm=TP", "--learn_inv", "--nb_layers=1"],
            ["--eval_interval=999"], ["--eval_interval=0"], ["--eval_interval=1"],
            ["--eval_interval=1000", "--validation=58999"], ["--load"], ["--overwrite"],
            ["--algorithm=DTP"], ["--algorithm=DTP", "--learn_inv", "--inv_noise=0.1"],
            ["--algorithm=GAIT", "--learn_inv", "--inv_noise=0"],
            ["--algorithm=DTP", "--learn_inv", "--inv_noise=1000"]]


def assert_one_paragraph(message, word):
    message = message.strip()
    assert message and "\n\n" not in message and len(message.splitlines()) <= 3, message
    assert word in message and "Traceback" not in message, message


@pytest.mark.parametrize("argv, word", BAD)
def test_bad_value_is_a_usage_error(argv, word, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_paragraph(captured.err, word)


@pytest.mark.parametrize("argv, words", REFUSED)
def test_settings_that_cannot_make_a_run_are_refused_naming_flag_and_fix(argv, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    for word in words:
        assert_one_paragraph(captured.err, word)


@pytest.mark.parametrize("argv", ACCEPTED)
def test_the_neighbours_of_refused_settings_make_a_run(argv):
    build_parser().parse_args(argv)


@pytest.mark.parametrize("extra", [[], ["--algorithm=GAIT", "--learn_inv"], ["--dtype=float32"]])
def test_the_deepest_network_this_machines_memory_holds_is_the_bound(extra, capsys):
    """--nb_layers is refused where the network (weights, moments, a step's directions and
    inverses) and the data set would not fit in this machine's memory: the largest value the
    message gives makes a run, one more is refused."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--nb_layers=1000000"] + extra)
    message = capsys.readouterr().err
    largest = int(re.search(r"--nb_layers at most (\d+)", message)[1])
    assert 1 <= largest < 1000000, message
    assert build_parser().parse_args([f"--nb_layers={largest}"] + extra).nb_layers == largest
    with pytest.raises(SystemExit):
        build_parser().parse_args([f"--nb_layers={largest + 1}"] + extra)
    assert f"--nb_layers={largest + 1}" in capsys.readouterr().err


def test_a_network_larger_than_memory_is_refused_before_anything_is_made(data_root, tmp_path):
    """It made its folder, ran out of memory and reported an unexpected error, leaving
    error.log and run.lock."""
    done = cli(["--nb_layers", "1000000", "--nb_epochs", "1", "--data_dir",
                data_root.require("MNIST"), "--results_dir", tmp_path / "results"], cwd=tmp_path)
    assert_clean(done, 2)
    assert_one_paragraph(done.stderr, "--nb_layers")
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


@pytest.mark.parametrize("name", [setting.name for setting in settings_table.TABLE
                                  if getattr(setting.convert, "kind", None) is float])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "+infinity"])
def test_a_float_flag_must_be_finite(name, text, capsys):
    context = {"gamma": ["--algorithm=GAIT"],
               "inv_learning_rate": ["--algorithm=GAIT", "--learn_inv"],
           "inv_noise": ["--algorithm=DTP", "--learn_inv"],
           "target_step": ["--algorithm=TP"], "inv_steps": ["--algorithm=DTP", "--learn_inv"],
           "inv_loss": ["--algorithm=GAIT", "--learn_inv", "--inv_noise=0.1"]}.get(name, [])
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(context + [f"--{name}={text}"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert_one_paragraph(message, f"--{name}")
    assert f"{text!r} must be a finite number" in message, message


@pytest.mark.parametrize("name", ["results_dir", "data_dir"])
def test_an_empty_folder_flag_is_refused(name, capsys):
    """--results_dir "" trained into the current folder (os.path.join("", name)); an empty
    --data_dir read the current folder's MNIST/raw."""
    for argv in ([f"--{name}="], [f"--{name}", ""]):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args(argv)
        assert stopped.value.code == 2
        assert_one_paragraph(capsys.readouterr().err, f"--{name}")


def test_an_empty_results_dir_exits_2_and_writes_nothing(tmp_path):
    done = cli(["--results_dir", "", "--nb_layers", "0", "--nb_epochs", "1"], cwd=tmp_path,
               env=NO_NETWORK)
    assert_clean(done, 2)
    assert_one_paragraph(done.stderr, "--results_dir")
    assert os.listdir(tmp_path) == []


def test_bad_values_exit_2_with_one_clean_paragraph(tmp_path):
    """As processes: status 2, a short message naming the culprit, nothing written."""
    processes = []
    for index, (argv, word) in enumerate(AS_PROCESSES):
        cwd = tmp_path / str(index)
        cwd.mkdir()
        processes.append((argv, word, cwd, subprocess.Popen(
            [sys.executable, RUN_PY, *argv], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)))
    for argv, word, cwd, process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (argv, stdout, stderr)
        assert "Traceback" not in stdout + stderr, argv
        assert_one_paragraph(stderr, word)
        assert stdout == "", (argv, stdout)
        assert os.listdir(cwd) == [], (argv, os.listdir(cwd))  # nothing was written


def test_run_py_is_executable_and_helps():
    assert os.access(RUN_PY, os.X_OK)
    with open(RUN_PY) as file:
        first = file.readline()
    assert first.startswith("#!") and "python" in first
    done = subprocess.run([RUN_PY, "--help"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for flag in PUBLISHED_FLAGS + ("eval_interval", "overwrite"):
        assert f"--{flag}" in done.stdout, flag


@pytest.mark.parametrize("script", ["run.py", "./run.py", RUN_PY])
def test_the_printed_resume_command_runs(script, monkeypatch):
    """The command printed after Ctrl-C or SIGTERM runs as printed, however run.py was started
    (`python run.py`: not `run.py ...`, which the shell does not find), with every flag kept,
    quoted, --overwrite dropped and --load added."""
    from gaitprop.cli import run
    argv = ["--seed=2", "--data_dir=a b", "--overwrite"]
    monkeypatch.setattr(sys, "argv", [script] + argv)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, script] + argv)
    words = shlex.split(run.resume_command(argv))
    assert words[-3:] == ["--seed=2", "--data_dir=a b", "--load"], words
    done = subprocess.run(words[:-3] + ["--help"], cwd=os.path.dirname(RUN_PY), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--load" in done.stdout, (words, done.stderr)


# ----------------------------------------------------------------------------- folder names

@pytest.mark.parametrize("argv, name", [
    ([], "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L"),
    (["--algorithm=GAIT", "--orthogonal_reg=0.1", "--nb_layers=4"],
     "MNIST_GAIT_0.1OrthoReg_1Seed_0.0001LR_4L"),
    (["--algorithm", "GAIT", "--orthogona_reg", "0.1", "--nb_layers", "4"],
     "MNIST_GAIT_0.1OrthoReg_1Seed_0.0001LR_4L"),
    (["--algorithm=TP", "--orthogonal_reg=1000", "--orthogonal_init", "--learning_rate=1e-5",
      "--dataset=FMNIST", "--seed=3"], "FMNIST_TP_OrthoInit_1000.0OrthoReg_3Seed_1e-05LR_1L"),
    (["--linear", "--orthogonal_init", "--dataset=KMNIST", "--nb_layers=0", "--seed=0"],
     "KMNIST_BP_Linear_OrthoInit_0.0OrthoReg_0Seed_0.0001LR_0L"),
    (["--linear", "--learning_rate=0.001"], "MNIST_BP_Linear_0.0OrthoReg_1Seed_0.001LR_1L"),
    (["--tower", "--algorithm=GAIT", "--orthogonal_reg=0.1"],
     "MNIST_GAIT_0.1OrthoReg_1Seed_0.0001LR_1TOWER"),
    (["--tower", "--nb_layers=3", "--orthogonal_init", "--learning_rate=1e-4"],
     "MNIST_BP_OrthoInit_0.0OrthoReg_1Seed_0.0001LR_3TOWER"),
    (["--orthogonal_reg=1e-3", "--learning_rate=0.5", "--seed=12"],
     "MNIST_BP_0.001OrthoReg_12Seed_0.5LR_1L"),
    (["--algorithm=GAIT", "--orthogonal_reg=0.1", "--orthogonal_init", "--nb_layers=4",
      "--learn_inv"], "MNIST_GAIT_OrthoInit_0.1OrthoReg_LearnInv_1Seed_0.0001LR_4L"),
    (["--algorithm=TP", "--orthogonal_reg=1000", "--learning_rate=1e-5", "--learn_inv",
      "--no_inv_init", "--inv_learning_rate=1e-4", "--tower"],
     "MNIST_TP_1000.0OrthoReg_LearnInv_NoInvInit_1Seed_1e-05LR_0.0001InvLR_1TOWER"),
    (["--algorithm=GAIT", "--gamma=0.01", "--validation=10000"],
     "MNIST_GAIT_0.0OrthoReg_0.01Gamma_1Seed_0.0001LR_10000Val_1L"),
    (["--algorithm=GAIT", "--gamma=0.001"], "MNIST_GAIT_0.0OrthoReg_1Seed_0.0001LR_1L"),
    (["--algorithm=DTP", "--orthogonal_reg=1000", "--learn_inv", "--no_inv_init",
      "--inv_noise=0.2", "--nb_layers=4"],
     "MNIST_DTP_1000.0OrthoReg_LearnInv_NoInvInit_0.2InvNoise_1Seed_0.0001LR_4L"),
    # DTP's own defaults (noise 0.1, the difference loss) leave the name alone
    (["--algorithm=DTP", "--learn_inv", "--inv_noise=0.1", "--inv_loss=difference"],
     "MNIST_DTP_0.0OrthoReg_LearnInv_1Seed_0.0001LR_1L"),
    (["--algorithm=DTP", "--learn_inv", "--inv_noise=0", "--inv_loss=reconstruction"],
     "MNIST_DTP_0.0OrthoReg_LearnInv_0.0InvNoise_reconstructionInvLoss_1Seed_0.0001LR_1L"),
    # flags that are not part of the name leave it alone
    (["--eval_interval=0", "--nb_epochs=3", "--dtype=float32", "--load"],
     "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L"),
    (["--log_alignment=5", "--overwrite"], "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L"),
    # negative zero is zero; an inverse learning rate equal to the learning rate the default
    (["--orthogonal_reg=-0"], "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L"),
    (["--algorithm=GAIT", "--learn_inv", "--inv_learning_rate=0.0001"],
     "MNIST_GAIT_0.0OrthoReg_LearnInv_1Seed_0.0001LR_1L"),
])
def test_results_folder_is_named_as_published(argv, name):
    args = build_parser().parse_args(argv)
    assert run_folder.results_folder(args) == "results/" + name
    elsewhere = build_parser().parse_args(argv + ["--results_dir=/data/runs"])
    assert run_folder.results_folder(elsewhere) == "/data/runs/" + name


# ----------------------------------------------------------------------------- cadence

def statistics_lines(nb_epochs, eval_interval, nb_batches=1000):
    """Lines of each statistics file after `nb_epochs` epochs, per cadence.evaluates_after."""
    return 1 + sum(cadence.evaluates_after(b, eval_interval, nb_batches)
                   for _ in range(nb_epochs) for b in range(nb_batches))


def test_batch_layout_of_the_real_data_sets():
    assert cadence.batch_layout(60000) == (60, 1000)


@pytest.mark.parametrize("nb_epochs", [1, 2])
def test_published_cadence_gives_1_plus_99_E_lines(nb_epochs):
    after = [b for b in range(1000) if cadence.evaluates_after(b, 10, 1000)]
    assert after == list(range(10, 1000, 10))  # after batches 10, 20, ..., 990
    assert statistics_lines(nb_epochs, 10) == 1 + 99 * nb_epochs


@pytest.mark.parametrize("nb_epochs", [1, 2])
def test_eval_interval_0_gives_1_plus_E_lines(nb_epochs):
    assert [b for b in range(1000) if cadence.evaluates_after(b, 0, 1000)] == [999]
    assert statistics_lines(nb_epochs, 0) == 1 + nb_epochs
    assert statistics_lines(nb_epochs, 50) == 1 + 19 * nb_epochs


def test_default_cadence_real_run_writes_100_lines(tmp_path):
    """One epoch of a 1-layer network, the published cadence, from MNIST's .gz files only."""
    missing = copy_raw("MNIST", str(tmp_path / "data"), unpack=False)
    if missing:
        missing_data(missing)
    done = cli(["--nb_layers", "0", "--nb_epochs", "1", "--data_dir", tmp_path / "data",
                "--results_dir", tmp_path / "results"], cwd=tmp_path)
    assert_clean(done, 0)
    folder = str(tmp_path / "results" / "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_0L")
    assert os.listdir(tmp_path / "results") == [os.path.basename(folder)]
    assert_results_files(folder, nb_layers=0, nb_lines=100)
    statistics = read_statistics(folder)
    assert statistics["test_acc"][0] < 0.3 < 0.7 < statistics["test_acc"][-1]
    assert statistics["test_loss"][-1] < statistics["test_loss"][0]


def test_progress_lines_say_when_their_evaluation_was_made(data_root, tmp_path):
    """--eval_interval=0: the lines of the first epoch show the evaluation before training,
    labelled "untrained" (not as if nothing learnt); the last line and the epoch's summary
    show the one after epoch 1. Batches are counted from 1 (no "batch 999" beside "batch
    1000/1000")."""
    done = cli(["--nb_layers", "0", "--nb_epochs", "1", "--eval_interval", "0", "--data_dir",
                data_root.require("MNIST"), "--results_dir", tmp_path / "results"], cwd=tmp_path)
    assert_clean(done, 0)
    lines = [line for line in done.stderr.splitlines() if line.startswith("epoch 1/1 batch ")]
    assert len(lines) == 10, done.stderr
    for line in lines[:-1]:
        assert "; evaluation (untrained): train acc 0." in line, line
    assert re.match(r"epoch 1/1 batch 1000/1000 .*; evaluation \(after epoch 1\): ", lines[-1])
    assert re.search(r"epoch 1/1 done in [0-9.]+s: evaluation \(after epoch 1\): ", done.stdout)
    assert "batch 999" not in done.output


# ----------------------------------------------------------------------------- end to end

# The paper's settings of each rule, but for its depth: each run below chooses its own.
PAPER = {rule: [f"--{name}" if value is True else f"--{name}={value}"
                for name, value in settings_table.presets(settings_table.PAPER, rule).items()
                if value is not False and name != "nb_layers"]
         for rule in ("BP", "GAIT", "TP")}
# GAIT and TP also take --orthogonal_init, as the one-epoch table of docs/REPRODUCTION.md
# does: from the published random initialisation TP is still at chance after one epoch
# (MNIST test 0.089, Fashion-MNIST 0.077) and GAIT at 0.89.
# (dataset, algorithm) -> (hidden layers, test accuracy to beat after one epoch). The
# regulariser costs 2 * 784**3 multiply-adds per layer per batch, so GAIT and TP run one
# hidden layer on MNIST (their inverses on real data) and none on Fashion-MNIST.
# Thresholds: 3 to 5 points below the test accuracies measured (NumPy float64, one BLAS
# thread): MNIST BP 0.9474, GAIT 0.9353, TP 0.7002; Fashion-MNIST BP 0.8351, GAIT (no
# hidden layer) 0.7710, TP (no hidden layer) 0.4116. Chance is 0.1.
E2E = {("MNIST", "GAIT"): (1, 0.91), ("MNIST", "TP"): (1, 0.65),
       ("FMNIST", "GAIT"): (0, 0.74), ("FMNIST", "TP"): (0, 0.36),
       ("MNIST", "BP"): (1, 0.92), ("FMNIST", "BP"): (1, 0.80)}


class EndToEnd:
    """The six one-epoch runs, two at a time (longest first), started when first needed."""

    def __init__(self, root, results):
        self.root, self.results = root, results
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        self.futures = {key: self.pool.submit(self._run, key) for key in E2E
                        if not root.missing[key[0]]}

    def _run(self, key):
        dataset, algorithm = key
        argv = (["--dataset", dataset, "--algorithm", algorithm, "--nb_layers",
                 str(E2E[key][0]), "--nb_epochs", "1", "--eval_interval=0", "--data_dir",
                 self.root.path, "--results_dir", self.results] + PAPER[algorithm]
                + ([] if algorithm == "BP" else ["--orthogonal_init"]))
        done = cli(argv, cwd=self.results, timeout=3600)
        done.argv = argv
        return done

    def result(self, key):
        self.root.require(key[0])
        return self.futures[key].result()


@pytest.fixture(scope="module")
def end_to_end(data_root, tmp_path_factory):
    runs = EndToEnd(data_root, str(tmp_path_factory.mktemp("e2e")))
    yield runs
    runs.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def start_end_to_end_early(request):
    """Start the end-to-end runs with the first test of this file, when any is selected."""
    if any("end_to_end" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("end_to_end")


@pytest.mark.parametrize("dataset, algorithm", list(E2E))
def test_one_epoch_on_real_data_beats_threshold(end_to_end, dataset, algorithm):
    nb_layers, threshold = E2E[(dataset, algorithm)]
    done = end_to_end.result((dataset, algorithm))
    assert_clean(done, 0)
    args = build_parser().parse_args(done.argv)
    folder = run_folder.results_folder(args)
    assert os.path.isdir(folder), (folder, os.listdir(end_to_end.results))
    assert_results_files(folder, nb_layers, nb_lines=2)
    statistics = read_statistics(folder)
    seconds = re.search(r"done in ([0-9.]+)s", done.output)
    print(f"\n{dataset} {algorithm} {nb_layers} hidden: test acc {statistics['test_acc'][-1]:.4f}"
          f" train acc {statistics['training_acc'][-1]:.4f}, epoch "
          f"{seconds.group(1) if seconds else '?'} s, process {done.seconds:.0f} s")
    assert statistics["test_acc"][0] < 0.3  # untrained: about chance
    assert statistics["test_acc"][-1] > threshold, statistics["test_acc"]
    assert statistics["training_acc"][-1] > threshold - 0.05, statistics["training_acc"]
    assert statistics["test_loss"][-1] < statistics["test_loss"][0]
    assert os.path.isfile(os.path.join(folder, "checkpoint.npz"))
    assert os.path.isfile(os.path.join(folder, "run.json"))


def test_a_resumed_run_records_its_epochs_before_it_trains(tmp_path):
    """The run.json a resumed run writes as it begins says the epochs its checkpoint holds,
    so that a SIGKILL in the first epoch after --load leaves that record, not epochs_done 0."""
    from gaitprop.runs import checkpoint
    from gaitprop.runs import run_folder
    from gaitprop.runs.folders import Folders, Run
    flags = ["--nb_layers=0", "--nb_epochs=3", f"--results_dir={tmp_path}"]
    args = build_parser().parse_args(flags)
    folder = run_folder.results_folder(args)
    os.makedirs(folder)
    statistics = training.Statistics({name: [0.5, 0.5, 0.5] for name in STATISTICS})
    checkpoint.save_checkpoint(folder, build_net(args), statistics, 2,
                               run_folder.computation_settings(args))
    resumed = build_parser().parse_args(flags + ["--load"])
    folders = Folders()
    try:
        opened, stored = folders.open(resumed)
        Run(resumed, flags + ["--load"], opened, stored).begin(None)
    finally:
        folders.release()
    record = json.load(open(os.path.join(folder, "run.json")))
    assert (record["status"], record["epochs_done"]) == ("running", 2)


def test_a_run_with_a_validation_set_scores_it_and_trains_on_the_rest(data_root, tmp_path):
    """--validation=10000 on genuine MNIST (one 784-unit layer, one epoch): the folder name
    shows the split; validation_acc/_loss.txt beside the others, in the checkpoint too; the
    training score is over the 50,000 images trained on; --load with another split finds no
    run, with the same one it extends the run."""
    from gaitprop.runs import data
    from gaitprop.model.net import SquareInvNet
    from gaitprop.model.functions import evaluate
    root = data_root.require("MNIST")
    flags = ["--nb_layers=0", "--nb_epochs=1", "--eval_interval=0", "--validation=10000",
             "--backend=numpy", f"--data_dir={root}", f"--results_dir={tmp_path}"]
    assert_clean(cli(flags), 0)
    folder = tmp_path / "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_10000Val_0L"
    for name in STATISTICS + ("validation_acc", "validation_loss"):
        assert len(numpy.loadtxt(folder / f"{name}.txt")) == 2, name
    record = json.load(open(folder / "run.json"))
    assert record["settings"]["validation"] == 10000 and record["status"] == "finished"
    with numpy.load(folder / "checkpoint.npz") as stored:
        assert json.loads(str(stored["meta"]))["settings"]["validation"] == 10000
        assert len(stored["validation_acc"]) == 2
    net = SquareInvNet(784, 0)
    net.load_params(str(folder))
    train, _, held_out = data.load_run_sets("MNIST", root, 10000)
    assert len(train[1]) == 50000 and len(held_out[1]) == 10000
    assert evaluate(net, *train)[0] == numpy.loadtxt(folder / "training_acc.txt")[-1]
    assert evaluate(net, *held_out)[0] == numpy.loadtxt(folder / "validation_acc.txt")[-1]
    other = [flag.replace("=10000", "=5000") for flag in flags]
    assert_clean(cli(other + ["--load"]), 2)
    assert_clean(cli([flag.replace("--nb_epochs=1", "--nb_epochs=2") for flag in flags]
                     + ["--load"]), 0)
    assert len(numpy.loadtxt(folder / "validation_acc.txt")) == 3


def test_a_run_with_learned_inverses_dumps_and_resumes_them(data_root, tmp_path):
    """TP with learned inverses from a drawn start on genuine MNIST (one hidden layer, one
    epoch, the quality logged every 250 batches): V and c of layer 1 (only: layer 0's inverse
    is never used) beside W and b, in the checkpoint with their moments; inverse_quality.txt
    with a row per logged batch; --load under another start is refused. (That V, c and
    their moments resume exactly: test_checkpoint.)"""
    root = data_root.require("MNIST")
    flags = ["--algorithm=TP", "--learn_inv", "--no_inv_init", "--orthogonal_reg=1000",
             "--learning_rate=1e-5", "--inv_learning_rate=1e-4", "--nb_epochs=1",
             "--eval_interval=0", "--log_alignment=250", "--backend=numpy",
             f"--data_dir={root}", f"--results_dir={tmp_path}"]
    assert_clean(cli(flags), 0)
    folder = tmp_path / "MNIST_TP_1000.0OrthoReg_LearnInv_NoInvInit_1Seed_1e-05LR_0.0001InvLR_1L"
    names = sorted(path.name for path in folder.iterdir())
    assert [name for name in names if "backward" in name] == [
        "1Lbackward_biases.npy", "1Lbackward_weights.npy"]
    quality = numpy.loadtxt(folder / "inverse_quality.txt")
    assert quality.shape == (4, 4) and list(quality[:, 1]) == [0, 250, 500, 750]
    assert quality[-1, 2] < quality[0, 2]  # the reconstruction error falls
    with numpy.load(folder / "checkpoint.npz") as stored:
        assert {"V1", "c1", "mV1", "vc1"} <= set(stored.files) and "V0" not in stored.files
        numpy.testing.assert_array_equal(stored["V1"],
                                         numpy.load(folder / "1Lbackward_weights.npy"))
    record = json.load(open(folder / "run.json"))
    assert record["settings"]["learn_inv"] and record["settings"]["inv_learning_rate"] == 1e-4
    assert_clean(cli([flag for flag in flags if flag != "--no_inv_init"] + ["--load"]), 2)


# ----------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.skipif(backend._import_cupy() is None, reason="no GPU with CuPy here")


def run_files(folder):
    """{name: bytes} of a results folder's statistics, logs and parameter files, and of its
    checkpoint's arrays (not its meta, which names the backend that wrote it)."""
    files = {name: open(os.path.join(folder, name), "rb").read()
             for name in sorted(os.listdir(folder)) if name.endswith((".txt", ".npy"))}
    with numpy.load(os.path.join(folder, run_folder.CHECKPOINT)) as stored:
        files.update({f"checkpoint:{name}": stored[name].tobytes()
                      for name in stored.files if name != "meta"})
    return files


@gpu
def test_cupy_run_py_end_to_end_resumes_exactly_and_across_devices(data_root, tmp_path):
    """run.py on the GPU (--backend=cupy), BP on genuine MNIST (one 784-unit layer) with
    10,000 validation images held out and the alignment logged every 250 batches, 2 epochs:
    made at once, and made 1 epoch then resumed with --load: the same files, bit for bit
    (statistics, validation, alignment, weights, checkpoint). A checkpoint of epoch 1 made on
    the GPU resumes on the CPU (--backend=numpy), and one made on the CPU resumes on the GPU:
    each run ends finished after 2 epochs, its checkpoint naming the backend that resumed it,
    its final test and validation accuracies within 0.5 points of the run made at once."""
    import shutil
    root = data_root.require("MNIST")
    name = "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_10000Val_0L"

    def run(results, backend_name, epochs, load=False):
        threads = "4" if backend_name == "numpy" else "1"  # the CPU epochs are the long ones
        return cli(["--algorithm=BP", "--nb_layers=0", "--eval_interval=0", "--validation=10000",
                    "--log_alignment=250", f"--data_dir={root}", f"--backend={backend_name}",
                    f"--nb_epochs={epochs}", f"--results_dir={tmp_path / results}"]
                   + (["--load"] if load else []), timeout=1800,
                   env={"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads})

    def side_by_side(*runs):
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(runs)) as pool:
            for done in pool.map(lambda arguments: run(*arguments), runs):
                assert_clean(done, 0)
                yield done
    list(side_by_side(("at_once", "cupy", 2), ("gpu", "cupy", 1), ("cpu_then_gpu", "numpy", 1)))
    shutil.copytree(tmp_path / "gpu", tmp_path / "gpu_then_cpu")
    for done in side_by_side(("gpu", "cupy", 2, True), ("gpu_then_cpu", "numpy", 2, True),
                             ("cpu_then_gpu", "cupy", 2, True)):
        assert "Resuming" in done.output, done.output
    folders = {results: tmp_path / results / name
               for results in ("at_once", "gpu", "gpu_then_cpu", "cpu_then_gpu")}
    at_once = run_files(folders["at_once"])
    assert run_files(folders["gpu"]) == at_once
    alignment = numpy.loadtxt(folders["at_once"] / run_folder.ALIGNMENT, ndmin=2)
    assert [tuple(row[:2]) for row in alignment] == [(epoch, batch) for epoch in (0, 1)
                                                     for batch in (0, 250, 500, 750)]
    final = {statistic: numpy.loadtxt(folders["at_once"] / f"{statistic}.txt")
             for statistic in ("test_acc", "validation_acc")}
    for results, resumed_on in (("gpu_then_cpu", "numpy"), ("cpu_then_gpu", "cupy")):
        folder = folders[results]
        record = json.load(open(folder / run_folder.RUN_RECORD))
        assert (record["status"], record["epochs_done"]) == ("finished", 2), record
        with numpy.load(folder / run_folder.CHECKPOINT) as stored:
            meta = json.loads(str(stored["meta"]))
            assert (meta["epoch"], meta["backend"]) == (2, resumed_on)
            assert len(stored["alignment"]) == len(alignment)
        for statistic, values in final.items():
            got = numpy.loadtxt(folder / f"{statistic}.txt")
            print(f"{results} {statistic}: {got[-1]:.4f}, at once on the GPU {values[-1]:.4f}")
            assert len(got) == len(values) == 3
            assert abs(got[-1] - values[-1]) <= 0.005
