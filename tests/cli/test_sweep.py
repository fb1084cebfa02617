"""sweep.py: the grid, the preset, the commands, the skip/resume rules, local and SLURM runs."""
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from gaitprop.cli import pack
from gaitprop.runs import run_folder
from gaitprop.cli import sweep
from gaitprop.runs.settings import build_parser as build_run_parser
from gaitprop.runs.settings import refusal as settings_refusal
from sweep_helpers import (TINY_RUN, fabricate, fake_pack, mnist_root, real_sweep, record,
                           run_folders, start_slurm, sweep_command, wait_for)


def expand(*arguments):
    """The runs sweep.py would make of `arguments`."""
    return sweep.expand(sweep.build_parser().parse_args([str(a) for a in arguments]))


def member_flags(line):
    """(script name, each run's run.py flags) of a printed command: run.py's or pack.py's."""
    tokens = shlex.split(line)
    script = os.path.basename(tokens[1])
    if script == "pack.py":
        return script, [shlex.split(text) for text in
                        pack.build_parser().parse_args(tokens[2:]).member]
    return script, [tokens[2:]]


def dry_run_launches(capsys, *arguments):
    """(exit status, [(script name, run.py Namespaces)] of the printed commands, stderr) of a
    --dry-run."""
    status = sweep.main([str(a) for a in arguments] + ["--dry-run"])
    out, err = capsys.readouterr()
    launches = []
    for line in out.splitlines():
        script, flags = member_flags(line)
        launches.append((script, [build_run_parser().parse_args(each) for each in flags]))
    return status, launches, err


def dry_run(capsys, *arguments):
    """(exit status, run.py Namespaces of the printed commands' runs, stderr) of a --dry-run."""
    status, launches, err = dry_run_launches(capsys, *arguments)
    return status, [settings for _, members in launches for settings in members], err


def test_grid_is_the_product_of_the_values_with_seeds_innermost():
    runs = expand("--dataset", "MNIST", "FMNIST", "--algorithm", "BP", "GAIT", "--seed", "1-3",
                  "--nb_layers", "2", "4")
    combos = [(r.dataset, r.algorithm, r.nb_layers, r.seed) for r in runs]
    assert len(combos) == len(set(combos)) == 24
    assert set(combos) == {(d, a, n, s) for d in ("MNIST", "FMNIST") for a in ("BP", "GAIT")
                           for n in (2, 4) for s in (1, 2, 3)}
    assert [r.seed for r in runs[:3]] == [1, 2, 3]
    assert all(r.learning_rate == 1e-4 and r.orthogonal_reg == 0.0 for r in runs)


def test_switches_take_on_off_or_nothing_and_values_are_deduplicated():
    runs = expand("--linear", "on", "off", "--tower", "--seed", "3", "3", "--learning_rate",
                  "1e-4", "0.0001")
    assert [(r.linear, r.tower, r.orthogonal_init) for r in runs] == [(True, True, False),
                                                                      (False, True, False)]
    assert all(r.seed == 3 and r.learning_rate == 1e-4 for r in runs)
    assert [r.orthogonal_init for r in expand("--orthogonal_init", "no")] == [False]


def test_paper_preset_per_algorithm_and_explicit_flags_override_it():
    runs = {r.algorithm: r for r in expand("--preset", "paper", "--algorithm", "BP", "GAIT",
                                           "TP")}
    assert (runs["BP"].learning_rate, runs["BP"].orthogonal_reg,
            runs["BP"].orthogonal_init) == (1e-4, 0.0, False)
    assert (runs["GAIT"].learning_rate, runs["GAIT"].orthogonal_reg,
            runs["GAIT"].orthogonal_init) == (1e-4, 0.1, False)
    assert (runs["TP"].learning_rate, runs["TP"].orthogonal_reg,
            runs["TP"].orthogonal_init) == (1e-5, 1000.0, False)
    assert {run.nb_layers for run in runs.values()} == {4}  # the paper's network
    overridden = expand("--preset", "paper", "--algorithm", "GAIT", "TP", "--learning_rate",
                        "1e-3", "--orthogonal_init", "on", "--nb_layers", "2")
    assert [(r.learning_rate, r.orthogonal_reg, r.orthogonal_init, r.nb_layers)
            for r in overridden] == [(1e-3, 0.1, True, 2), (1e-3, 1000.0, True, 2)]


def test_dry_run_prints_commands_run_py_accepts(capsys, tmp_path):
    status, parsed, err = dry_run(
        capsys, "--preset", "paper", "--dataset", "MNIST", "KMNIST", "--algorithm", "BP", "TP",
        "--seed", "1-2", "--nb_layers", "4", "--tower", "on", "off", "--nb_epochs", "3",
        "--eval_interval", "0", "--dtype", "float32", "--results_dir", tmp_path / "r",
        "--data_dir", tmp_path / "d", "--devices", "0", "1")
    assert status == 0 and "prepared 16 (16 new)" in err
    expected = expand("--preset", "paper", "--dataset", "MNIST", "KMNIST", "--algorithm", "BP",
                      "TP", "--seed", "1-2", "--nb_layers", "4", "--tower", "on", "off",
                      "--nb_epochs", "3", "--eval_interval", "0", "--dtype", "float32",
                      "--results_dir", tmp_path / "r", "--data_dir", tmp_path / "d")
    for index, (printed, wanted) in enumerate(zip(parsed, expected, strict=True)):
        assert run_folder.computation_settings(printed) == run_folder.computation_settings(wanted)
        assert run_folder.results_folder(printed) == run_folder.results_folder(wanted)
        assert (printed.nb_epochs, printed.device) == (3, index % 2)
        assert printed.results_dir == str(tmp_path / "r")
        assert not printed.load and not printed.overwrite
    assert not os.path.exists(tmp_path / "r")


def test_a_sweep_leaves_out_what_run_py_refuses_and_says_so(capsys, tmp_path):
    """--learn_inv on off over BP, GAIT and TP: BP with learned inverses is left out (one
    line saying why), every other combination is run, and the commands carry the flags; a
    grid of refused combinations only is bad input."""
    status, parsed, err = dry_run(
        capsys, "--algorithm", "BP", "GAIT", "TP", "--learn_inv", "on", "off",
        "--log_alignment", "5", "--results_dir", tmp_path / "r")
    assert status == 0 and "prepared 5 (5 new)" in err
    assert err.count("left out 1 combination of the grid that run.py refuses: --learn_inv "
                     "needs --algorithm=GAIT, TP or DTP") == 1
    assert sorted((run.algorithm, run.learn_inv) for run in parsed) == [
        ("BP", False), ("GAIT", False), ("GAIT", True), ("TP", False), ("TP", True)]
    assert all(run.log_alignment == 5 for run in parsed)
    try:
        status = sweep.main(["--algorithm", "BP", "--learn_inv", "--results_dir",
                             str(tmp_path), "--dry-run"])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2 and "every combination of the grid" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [
    ["--seed", "5-1"], ["--dataset", "CIFAR"], ["--learning_rate", "-1"], ["--linear", "maybe"],
    ["--nb_layers", "two"], ["--eval_interval", "0", "10"], ["--jobs", "0"], ["--nosuch"],
    ["--algorithm"], ["--devices", "-1"], ["--slurm", "--jobs", "2"], ["--pack", "0"],
    ["--seed", "-3"], ["--seed", "4294967296"], ["--seed", "4294967294-4294967296"],
    ["--seed", "1", "-3"],
    ["--learning_rate", "1e-4", "nan"], ["--orthogonal_reg", "0", "inf"]])
def test_bad_input_exits_2_with_one_message(capsys, tmp_path, arguments):
    try:
        status = sweep.main(arguments + ["--results_dir", str(tmp_path), "--dry-run"])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("sweep.py: ") and err.count("\n") == 1


@pytest.mark.parametrize("flag, extra", [("--results_dir", []), ("--log-dir", []),
                                         ("--slurm-dir", ["--slurm", "--dry-run"])])
def test_a_file_where_a_folder_goes_exits_2_and_writes_nothing(capsys, tmp_path, flag, extra):
    """--results_dir, --log-dir or --slurm-dir naming a file (or a folder below one): one
    message naming the flag and the file, exit 2, nothing run or written (it was a
    NotADirectoryError or FileExistsError traceback)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    folders = {"--results_dir": str(tmp_path / "results"), flag: str(blocker / "below")}
    if flag == "--log-dir":
        folders[flag] = str(blocker)
    arguments = ["--seed", "1", "--nb_epochs", "1", "--nb_layers", "0"] + extra + [
        part for pair in folders.items() for part in pair]
    status = sweep.main(arguments)
    out, err = capsys.readouterr()
    assert status == 2 and out == "", out
    assert err.startswith("sweep.py: ") and err.count("\n") == 1, err
    assert flag in err and str(blocker) in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("arguments", [
    ["--seed", "1-200000"], ["--seed", "1-400", "--nb_layers", "0-299"],
    ["--seed", "1-100000000"], ["--seed", "1-1000", "1001-100000000"],
    ["--seed", "1-1000", "--nb_epochs", "1-1000", "--learning_rate", "1", "2"]],
    ids=["range", "product", "huge range", "huge second range", "product of three"])
def test_a_grid_larger_than_a_sweep_takes_is_refused_before_it_is_made(capsys, tmp_path,
                                                                         arguments):
    """More than MAX_RUNS runs: exit 2 and one message, before the commands are built (a
    range of 10**8 seeds hung, building them)."""
    status = sweep.main(arguments + ["--results_dir", str(tmp_path / "r"), "--dry-run"])
    out, err = capsys.readouterr()
    assert status == 2 and out == "", out
    assert err.startswith("sweep.py: ") and err.count("\n") == 1, err
    assert f"{sweep.MAX_RUNS}" in err and "split" in err, err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("flag", ["--results_dir", "--data_dir"])
def test_an_empty_folder_flag_is_refused_by_the_sweep(capsys, tmp_path, flag, monkeypatch):
    """--results_dir "" made the results folders in the current folder (its absolute path)."""
    monkeypatch.chdir(tmp_path)
    folders = {"--results_dir": str(tmp_path / "r"), flag: ""}
    with pytest.raises(SystemExit) as stopped:
        sweep.main(["--seed", "1", "--dry-run"] + [part for pair in folders.items()
                                                   for part in pair])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and out == "" and flag in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("arguments, message", [
    (["--seed", "-3"], "'-3' is not a seed"),
    (["--seed", "1", "4294967296"], "'4294967296' is not a seed"),
    (["--seed=-3-1"], "'-3' is not a seed"),
    (["--seed", "1-4294967296"], "'4294967296' is not a seed"),  # refused before it expands
    (["--learning_rate", "1e-4", "nan"], "'nan' must be a finite number"),
    (["--gamma", "inf"], "'inf' must be a finite number"),
    (["--orthogonal_reg", "0", "infinity"], "'infinity' must be a finite number"),
    (["--inv_learning_rate", "NaN", "--learn_inv", "--algorithm", "GAIT"],
     "'NaN' must be a finite number")])
def test_values_run_py_refuses_are_refused_by_the_sweep(capsys, tmp_path, arguments, message):
    status = sweep.main(arguments + ["--results_dir", str(tmp_path / "r"), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("arguments, kept, reason", [
    (["--algorithm", "BP", "GAIT", "TP", "--gamma", "0.001", "0.01"],
     [("BP", None), ("GAIT", 0.01), ("GAIT", None), ("TP", None)],
     "--gamma applies only to --algorithm=GAIT: the runs of the other rules take none "
     "(their 4 combinations with it run once each without it)"),
    (["--algorithm", "GAIT", "--learn_inv", "--nb_layers", "0", "1"], [("GAIT", None)],
     "left out 1 combination of the grid that run.py refuses: --learn_inv needs"),
    (["--eval_interval", "999", "1000"], [("BP", None)],
     "left out 1 combination of the grid that run.py refuses: --eval_interval=1000"),
    (["--seed", "4294967295", "--nb_layers", "1", "2"], [("BP", None)],
     "left out 1 combination of the grid that run.py refuses: --seed=4294967295")])
def test_a_sweep_leaves_out_the_combinations_run_py_refuses(capsys, tmp_path, arguments, kept,
                                                             reason):
    status, parsed, err = dry_run(capsys, *arguments, "--results_dir", tmp_path / "r")
    assert status == 0 and err.count(reason) == 1, err
    assert sorted(((run.algorithm, run.gamma) for run in parsed), key=str) == sorted(kept,
                                                                                 key=str)
    for run in parsed:
        assert settings_refusal(run) is None


@pytest.mark.parametrize("name, values", [
    ("log_alignment", ["0", "5"]), ("eval_interval", ["0", "10"]),
    ("dtype", ["float64", "float32"]), ("nb_epochs", ["1", "2"])])
def test_runs_that_would_share_a_folder_name_what_tells_them_apart(capsys, tmp_path, name,
                                                                   values):
    """The settings a folder name lacks are named from the table: each grid flag without a
    name piece (log_alignment among them), and the one in which the runs differ."""
    status = sweep.main([f"--{name}", *values, "--results_dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2 and "would share the results folder" in err, err
    for unnamed in ("dtype", "eval_interval", "log_alignment", "nb_epochs"):
        assert unnamed in err, (unnamed, err)
    assert f"give --{name} a single value" in err, err


def test_an_inverse_learning_rate_equal_to_the_learning_rate_is_the_default(capsys, tmp_path):
    """The run whose --inv_learning_rate equals its --learning_rate is the default's run: its
    folder has no InvLR piece and its command no --inv_learning_rate."""
    arguments = ["--algorithm", "GAIT", "--learn_inv", "--learning_rate", "1e-4", "1e-3",
                 "--inv_learning_rate", "1e-4", "--results_dir", str(tmp_path)]
    runs = expand(*arguments)
    assert [(run.learning_rate, run.inv_learning_rate) for run in runs] == [(1e-4, None),
                                                                          (1e-3, 1e-4)]
    assert [os.path.basename(run_folder.results_folder(run)) for run in runs] == [
        "MNIST_GAIT_0.0OrthoReg_LearnInv_1Seed_0.0001LR_1L",
        "MNIST_GAIT_0.0OrthoReg_LearnInv_1Seed_0.001LR_0.0001InvLR_1L"]
    assert sweep.main(arguments + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["--inv_learning_rate=0.0001" in line for line in lines] == [False, True]


def test_rerun_skips_finished_resumes_interrupted_and_reports_the_rest(capsys, tmp_path):
    arguments = ["--seed", "1-11", "--nb_epochs", "2", "--results_dir", tmp_path]
    runs = {r.seed: r for r in expand(*arguments)}
    fabricate(runs[1], "finished", epochs_done=2, with_checkpoint=True)
    fabricate(runs[2], "interrupted", with_checkpoint=True)
    fabricate(runs[3], "failed", epochs_done=0)
    fabricate(runs[4], "diverged", with_checkpoint=True)
    fabricate(runs[5], "running", with_checkpoint=True)  # stale: nobody holds its lock
    busy = fabricate(runs[6], "running", with_checkpoint=True)
    fabricate(runs[7], "finished", epochs_done=2, eval_interval=0)
    fabricate(runs[8], "finished", epochs_done=1, with_checkpoint=True)  # asked for 2 now
    published = run_folder.results_folder(runs[9])
    os.makedirs(published)
    open(os.path.join(published, "training_acc.txt"), "w").write("0.1\n")
    fabricate(runs[10], "interrupted")  # stopped before its first checkpoint
    with open(os.path.join(busy, "run.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status, parsed, err = dry_run(capsys, *arguments)
    modes = {r.seed: "load" if r.load else "overwrite" if r.overwrite else "new" for r in parsed}
    assert modes == {2: "load", 3: "overwrite", 5: "load", 8: "load", 10: "overwrite",
                     11: "new"}
    assert "skip (finished)" in err and "skip (diverged" in err and "running elsewhere" in err
    assert "eval_interval stored 0, asked 10" in err and "published scripts" in err
    assert ("prepared 6 (1 new, 3 resumed, 2 restarted); skipped as finished 1; skipped as "
            "diverged 1; skipped as running elsewhere 1; could not run 2") in err
    assert status == 1  # two folders cannot be used as asked
    status, parsed, err = dry_run(capsys, *arguments, "--retry-diverged")
    assert {r.seed for r in parsed if r.overwrite} == {3, 4, 10}


def test_a_failing_run_is_reported_with_its_exit_status(capsys, tmp_path):
    settings = expand("--seed", "1", "--results_dir", tmp_path)[0]
    folder = fabricate(settings, "interrupted", with_checkpoint=True)  # unreadable checkpoint
    status = sweep.main(["--seed", "1", "--results_dir", str(tmp_path), "--backend", "numpy"])
    out, _ = capsys.readouterr()
    assert status == 1
    assert "failed 1 (exit 1 (failed): 1)" in out and folder in out
    log = os.path.join(tmp_path, "logs", os.path.basename(folder) + ".log")
    assert "cannot be read" in open(log).read()
    assert record(folder)["status"] == "interrupted"


def test_slurm_files_map_array_tasks_to_commands(capsys, tmp_path):
    arguments = ["--seed", "1-3", "--results_dir", tmp_path / "r", "--slurm", "--slurm-dir",
                 tmp_path / "s", "--partition", "gpu", "--time", "1:00:00", "--gpus-per-task",
                 "1", "--mem", "8G", "--cpus-per-task", "4", "--max-parallel", "2", "--dry-run"]
    assert sweep.main([str(a) for a in arguments]) == 0
    out, _ = capsys.readouterr()
    sbatch = shlex.split(out.splitlines()[0])
    assert sbatch[:3] == ["sbatch", "--parsable", "--array=0-2%2"]
    script = open(sbatch[3]).read()
    for directive in ("--partition=gpu", "--time=1:00:00", "--gpus-per-task=1", "--mem=8G",
                      "--cpus-per-task=4"):
        assert f"#SBATCH {directive}\n" in script
    commands = sbatch[3][:-len(".sh")] + ".commands"
    seeds = [build_run_parser().parse_args(shlex.split(line)[2:]).seed
             for line in open(commands)]
    assert seeds == [1, 2, 3]
    with open(commands, "w") as file:  # stand-ins for the runs: what does task 1 execute?
        file.write("echo first\necho 'second run'\necho third\n")
    task = subprocess.run(["bash", sbatch[3]], capture_output=True, text=True,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "1",
                               "SLURM_ARRAY_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4"})
    assert task.returncode == 0 and task.stdout.splitlines()[-1] == "second run"


def test_slurm_without_sbatch_is_a_clean_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    status = sweep.main(["--results_dir", str(tmp_path), "--slurm"])
    assert status == 2 and "needs sbatch" in capsys.readouterr().err


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    return real_sweep(tmp_path_factory)


def test_local_sweep_runs_every_seed_then_skips_them(finished_sweep):
    results, process = finished_sweep
    assert process.returncode == 0, process.stdout + process.stderr
    assert "completed 2 (2 new)" in process.stdout
    folders = run_folders(results)
    assert [record(f)["settings"]["seed"] for f in folders] == [1, 2]
    for folder in folders:
        assert record(folder)["status"] == "finished" and record(folder)["epochs_done"] == 1
        assert os.path.getsize(os.path.join(results, "logs", os.path.basename(folder) + ".log"))
    again = subprocess.run(sweep_command("--seed", "1-2", "--results_dir", results, *TINY_RUN),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skipped as finished 2" in again.stdout


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM of the test's own; yields the environment that points at it."""
    yield from start_slurm(tmp_path_factory.mktemp("slurm"))


def test_slurm_job_array_runs_the_sweep(slurm_cluster, tmp_path, tmp_path_factory):
    data = mnist_root(tmp_path_factory)
    arguments = ["--seed", "1-2", "--data_dir", data, "--results_dir", tmp_path / "results",
                 *TINY_RUN, "--slurm", "--slurm-dir", tmp_path / "slurm", "--partition",
                 "debug", "--time", "10", "--cpus-per-task", "1", "--mem", "400",
                 "--max-parallel", "2"]
    submitted = subprocess.run(sweep_command(*arguments), capture_output=True, text=True,
                               env=slurm_cluster, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"Submitted job array (\d+)", submitted.stdout)[1]

    def queue_empty():
        return subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                              env=slurm_cluster).stdout.strip() == ""
    wait_for(queue_empty, 300, f"job array {job}")
    logs = sorted((tmp_path / "slurm").glob(f"*_{job}_*.log"))
    text = "\n".join(log.read_text() for log in logs)
    assert len(logs) == 2 and text.count("Finished 1 epochs") == 2, text
    folders = run_folders(tmp_path / "results")
    assert [record(f)["status"] for f in folders] == ["finished", "finished"], text
    again = subprocess.run(sweep_command(*arguments), capture_output=True, text=True,
                           env=slurm_cluster, timeout=120)
    assert again.returncode == 0 and "Submitted" not in again.stdout
    assert "skipped as finished 2" in again.stdout


def test_packs_hold_runs_of_one_key_in_grid_order_at_most_n_each(capsys, tmp_path):
    status, launches, err = dry_run_launches(
        capsys, "--orthogonal_reg", "0.1", "0", "0.2", "--learning_rate", "1e-4", "1e-3",
        "--seed", "1-2", "--pack", "3", "--results_dir", tmp_path)
    assert status == 0 and "prepared 12 (12 new)" in err
    members = [(script, [(r.orthogonal_reg, r.learning_rate, r.seed) for r in runs])
               for script, runs in launches]
    assert members == [  # lambda 0.1 and 0.2 share a key, lambda 0 has its own
        ("pack.py", [(0.1, 1e-4, 1), (0.1, 1e-4, 2), (0.1, 1e-3, 1)]),
        ("pack.py", [(0.1, 1e-3, 2), (0.2, 1e-4, 1), (0.2, 1e-4, 2)]),
        ("pack.py", [(0.0, 1e-4, 1), (0.0, 1e-4, 2), (0.0, 1e-3, 1)]),
        ("run.py", [(0.0, 1e-3, 2)]),  # a chunk of one: a plain run.py command
        ("pack.py", [(0.2, 1e-3, 1), (0.2, 1e-3, 2)])]
    for _, runs in launches:
        assert len({pack.pack_key(r) for r in runs}) == 1


def test_devices_go_round_robin_to_packs_and_pack_1_changes_nothing(capsys, tmp_path):
    arguments = ["--preset", "paper", "--algorithm", "BP", "GAIT", "--seed", "1-3",
                 "--results_dir", tmp_path, "--devices", "0", "1"]
    status, launches, _ = dry_run_launches(capsys, *arguments, "--pack", "2")
    assert status == 0
    assert [(script, [(r.algorithm, r.seed, r.device) for r in runs])
            for script, runs in launches] == [
        ("pack.py", [("BP", 1, 0), ("BP", 2, 0)]), ("run.py", [("BP", 3, 1)]),
        ("pack.py", [("GAIT", 1, 0), ("GAIT", 2, 0)]), ("run.py", [("GAIT", 3, 1)])]
    printed = []
    for extra in ([], ["--pack", "1"]):
        assert sweep.main([str(a) for a in arguments + extra] + ["--dry-run"]) == 0
        printed.append(capsys.readouterr())
    assert printed[0] == printed[1] and "pack.py" not in printed[0].out


def test_pack_members_are_run_py_flags_with_their_own_mode(capsys, tmp_path):
    arguments = ["--seed", "1-5", "--nb_epochs", "2", "--pack", "2", "--results_dir", tmp_path]
    runs = {r.seed: r for r in expand(*arguments)}
    fabricate(runs[1], "finished", epochs_done=2)
    fabricate(runs[2], "interrupted", with_checkpoint=True)
    fabricate(runs[4], "failed", epochs_done=0)
    assert sweep.main([str(a) for a in arguments] + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "prepared 4 (2 new, 1 resumed, 1 restarted); skipped as finished 1" in err
    packs = [member_flags(line) for line in out.splitlines()]
    assert packs == [
        ("pack.py", [sweep.command(runs[2], "load")[2:], sweep.command(runs[3])[2:]]),
        ("pack.py", [sweep.command(runs[4], "overwrite")[2:], sweep.command(runs[5])[2:]])]
    assert packs[0][1][0][-1] == "--load" and packs[1][1][0][-1] == "--overwrite"
    texts = shlex.split(out.splitlines()[0])[3::2]
    assert [settings.seed for settings, _ in pack.parse_members(texts)] == [2, 3]


def test_a_packs_runs_are_judged_by_their_run_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "PACK_PY", [sys.executable, fake_pack(tmp_path)])
    arguments = ["--seed", "1-4", "--nb_epochs", "1", "--results_dir", tmp_path / "r",
                 "--backend", "numpy"]
    monkeypatch.setenv("FAKE_PACK_STATUSES", json.dumps(
        {"1": "finished", "2": "diverged", "3": "interrupted", "4": "running"}))
    monkeypatch.setenv("FAKE_PACK_EXIT", "1")
    assert sweep.main([str(a) for a in arguments] + ["--pack", "4"]) == 1
    out, _ = capsys.readouterr()
    assert ("Sweep of 4 runs: completed 1 (1 new); failed 2 (exit 1 (failed): 1, exit 3 "
            "(diverged): 1); interrupted 1 (run the sweep again to resume).") in out
    first = os.path.basename(run_folder.results_folder(expand(*arguments)[0]))
    log = open(tmp_path / "r" / "logs" / f"{first}+3.log").read()
    assert log.startswith("# a pack of 4 runs: ") and "fake pack.py" in log

    def modes(launches):
        return [(script, [(r.seed, "load" if r.load else "overwrite" if r.overwrite else "new")
                          for r in runs]) for script, runs in launches]
    status, launches, err = dry_run_launches(capsys, *arguments, "--pack", "2")
    assert modes(launches) == [("pack.py", [(3, "load"), (4, "overwrite")])]
    assert "skipped as finished 1; skipped as diverged 1" in err
    status, launches, _ = dry_run_launches(capsys, *arguments, "--pack", "2", "--retry-diverged")
    assert modes(launches) == [("pack.py", [(2, "overwrite"), (3, "load")]),
                               ("run.py", [(4, "overwrite")])]
    monkeypatch.setenv("FAKE_PACK_STATUSES", "{}")  # the pack stops before its runs begin
    for code, summary in ((2, "failed 2 (exit 2 (bad input): 2)"), (130, "interrupted 2")):
        monkeypatch.setenv("FAKE_PACK_EXIT", str(code))
        assert sweep.main([str(a) for a in arguments] + ["--pack", "2"]) == 1
        assert summary in capsys.readouterr().out


def test_slurm_array_task_per_pack(capsys, tmp_path):
    arguments = ["--seed", "1-3", "--pack", "2", "--results_dir", tmp_path / "r", "--slurm",
                 "--slurm-dir", tmp_path / "s", "--dry-run"]
    assert sweep.main([str(a) for a in arguments]) == 0
    out, err = capsys.readouterr()
    sbatch = shlex.split(out.splitlines()[0])
    assert sbatch[2] == "--array=0-1" and "prepared 3 (3 new)" in err
    lines = open(sbatch[3][:-len(".sh")] + ".commands").read().splitlines()
    assert [(script, [build_run_parser().parse_args(each).seed for each in flags])
            for script, flags in map(member_flags, lines)] == [("pack.py", [1, 2]),
                                                                ("run.py", [3])]


def test_real_pack_sweep_matches_the_separate_runs_then_skips_them(finished_sweep, tmp_path,
                                                                   tmp_path_factory):
    arguments = ["--seed", "1-2", "--pack", "2", "--data_dir", mnist_root(tmp_path_factory),
                 "--results_dir", tmp_path, *TINY_RUN]
    process = subprocess.run(sweep_command(*arguments), capture_output=True, text=True,
                             timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "a pack of 2 runs" in process.stdout and "completed 2 (2 new)" in process.stdout
    folders = run_folders(tmp_path)
    assert [(record(f)["status"], record(f)["epochs_done"]) for f in folders] == [
        ("finished", 1), ("finished", 1)]
    assert os.path.exists(tmp_path / "logs" / (os.path.basename(folders[0]) + "+1.log"))
    for folder in folders:  # the same numbers as the runs of the unpacked sweep
        alone = os.path.join(finished_sweep[0], os.path.basename(folder))
        for name in run_folder.STATISTICS:
            with open(os.path.join(folder, run_folder.statistics_file(name))) as packed, \
                    open(os.path.join(alone, run_folder.statistics_file(name))) as single:
                assert packed.read() == single.read(), (folder, name)
    again = subprocess.run(sweep_command(*arguments), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "skipped as finished 2" in again.stdout


def test_a_failed_run_whose_log_is_gone_is_reported_without_a_traceback(capsys, tmp_path):
    """finish() on a failed launch reads its log's last lines; a log deleted while the run
    ran is said so, and the run's outcome is still recorded."""
    import time

    from gaitprop.experiments import launch as launching
    job = launching.Job(folder=str(tmp_path / "run"), settings=None, action="new")
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    done.wait()
    gone = launching.Launch(jobs=[job], command=["run.py"], log=str(tmp_path / "gone.log"),
                            process=done, started=time.monotonic(), index=1)
    launching.finish(gone, 1)
    out = capsys.readouterr().out
    assert "[1/1] exit 3" in out and "its log could not be read: No such file" in out, out
    assert job.returncode == 3
