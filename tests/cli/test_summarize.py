"""summarize.py: grouping over seeds, the statistics, the three formats, marks and the plot."""
import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys

import numpy
import pytest

from gaitprop.runs import run_folder
from gaitprop.cli import summarize
from gaitprop.experiments import summary_data
from sweep_helpers import REPO, real_sweep, run_folders
from gaitprop.runs.settings import build_parser


def summarize_cli(*arguments):
    """Run ./summarize.py; (exit status, stdout, stderr)."""
    process = subprocess.run([sys.executable, os.path.join(REPO, "summarize.py")]
                             + [str(a) for a in arguments], capture_output=True, text=True,
                             timeout=120)
    return process.returncode, process.stdout, process.stderr


def summarize_main(capsys, *arguments):
    """summarize.main in this process; (exit status, stdout, stderr)."""
    status = summarize.main([str(a) for a in arguments])
    out, err = capsys.readouterr()
    return status, out, err


def expected_statistics(folders, eval_interval):
    """Mean and sample sd over the folders of final/peak test and final training accuracy."""
    per_epoch = 1 if eval_interval == 0 else 999 // eval_interval
    test = [numpy.loadtxt(os.path.join(f, "test_acc.txt"), ndmin=1) for f in folders]
    train = [numpy.loadtxt(os.path.join(f, "training_acc.txt"), ndmin=1) for f in folders]
    columns = {"final_test_acc": [t[-1] for t in test], "peak_test_acc": [t.max() for t in test],
               "final_training_acc": [t[-1] for t in train]}
    statistics = {name: (numpy.mean(v), numpy.std(v, ddof=1)) for name, v in columns.items()}
    statistics["peak_epoch"] = numpy.mean([numpy.argmax(t) / per_epoch for t in test])
    return statistics


def fabricate_run(root, curve, status="finished", train_curve=None, alignment=None,
                  validation_curve=None, **settings):
    """A results folder with run.json, test_acc.txt and training_acc.txt (and alignment.txt,
    validation_acc.txt)."""
    values = {**vars(build_parser().parse_args([])), "eval_interval": 0, **settings,
              "results_dir": str(root)}
    folder = run_folder.results_folder(argparse.Namespace(**values))
    os.makedirs(folder)
    with open(os.path.join(folder, "run.json"), "w") as file:
        json.dump({"settings": values, "status": status, "epochs_done": 1, "nb_epochs": 1},
                  file)
    numpy.savetxt(os.path.join(folder, "test_acc.txt"), curve)
    numpy.savetxt(os.path.join(folder, "training_acc.txt"),
                  curve if train_curve is None else train_curve)
    if validation_curve is not None:
        numpy.savetxt(os.path.join(folder, "validation_acc.txt"), validation_curve)
    if alignment is not None:
        numpy.savetxt(os.path.join(folder, "alignment.txt"), alignment,
                      header="epoch (0-based) batch (0-based) angle_layer0 angle_layer1")
    return folder


def png_size(path):
    """(width, height) of a PNG file, from its header."""
    with open(path, "rb") as file:
        header = file.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    results, process = real_sweep(tmp_path_factory)
    assert process.returncode == 0, process.stdout + process.stderr
    return results


def test_table_of_a_real_sweep_equals_the_statistics_of_its_files(finished_sweep):
    status, out, err = summarize_cli(finished_sweep)
    assert status == 0, err
    header, rule, row = out.splitlines()
    assert header.split()[:3] == ["dataset", "algorithm", "net"] and set(rule) <= {"-", " "}
    cells = re.split(r"\s{2,}", row.strip())
    assert cells[:6] == ["MNIST", "BP", "0L", "0.0001", "0", "2"]
    expected = expected_statistics(run_folders(finished_sweep), eval_interval=0)
    numbers = [tuple(map(float, cell.split(" ± "))) for cell in (cells[7], cells[8], cells[10])]
    for (mean, sd), name in zip(numbers, ("final_test_acc", "peak_test_acc",
                                          "final_training_acc")):
        assert mean == pytest.approx(100 * expected[name][0], abs=0.0051)
        assert sd == pytest.approx(100 * expected[name][1], abs=0.0051)
    assert float(cells[9]) == pytest.approx(expected["peak_epoch"], abs=0.0051)
    assert cells[6] == "1"  # epochs


def test_csv_and_markdown_of_a_real_sweep_parse(finished_sweep):
    status, out, _ = summarize_cli(finished_sweep, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and len(rows) == 1
    row = rows[0]
    expected = expected_statistics(run_folders(finished_sweep), eval_interval=0)
    for name in ("final_test_acc", "peak_test_acc", "final_training_acc"):
        assert float(row[name + "_mean"]) == pytest.approx(expected[name][0], rel=1e-12)
        assert float(row[name + "_sd"]) == pytest.approx(expected[name][1], rel=1e-12)
    assert (row["seeds"], row["statuses"], row["not_finished"]) == ("2", "finished:2", "0")
    status, out, _ = summarize_cli(finished_sweep, "--format", "markdown")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert re.fullmatch(r"\|(-+:?\|)+", lines[1])
    assert len({line.count("|") for line in lines}) == 1


def test_plot_of_a_real_sweep_is_a_png(finished_sweep, tmp_path):
    status, _, err = summarize_cli(finished_sweep, "--plot", tmp_path / "curves.png")
    assert status == 0, err
    assert os.path.getsize(tmp_path / "curves.png") > 10_000
    assert png_size(tmp_path / "curves.png") == (1000, 420)


def test_groups_mark_runs_in_progress_and_diverged(capsys, tmp_path):
    for seed in (1, 2):
        fabricate_run(tmp_path, [0.1, 0.5 + seed / 10, 0.6], seed=seed)
    fabricate_run(tmp_path, [0.1, 0.4], status="interrupted", seed=3)
    fabricate_run(tmp_path, [0.1, 0.3], status="diverged", algorithm="GAIT",
                  orthogonal_reg=0.1, orthogonal_init=True)
    status, out, _ = summarize_main(capsys, tmp_path)
    lines = out.splitlines()
    assert status == 0
    bp, gait = lines[2], lines[3]
    assert re.search(r"BP .* 3\* ", bp) and re.search(r"GAIT .* 1! ", gait)
    assert "ortho init" in lines[0]  # shown because it differs between the groups
    assert any(line.startswith("* MNIST BP") and "2 finished, 1 interrupted" in line
               for line in lines)
    assert any(line.startswith("! MNIST GAIT") and "1 diverged" in line for line in lines)
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["algorithm"], r["seeds"], r["not_finished"], r["diverged"]) for r in rows] == [
        ("BP", "3", "1", "0"), ("GAIT", "1", "0", "1")]
    assert float(rows[0]["final_test_acc_mean"]) == pytest.approx(numpy.mean([0.6, 0.6, 0.4]))
    assert float(rows[0]["peak_test_acc_mean"]) == pytest.approx(numpy.mean([0.6, 0.7, 0.4]))
    assert rows[1]["final_test_acc_sd"] == ""  # one seed: no standard deviation


def test_epochs_follow_the_evaluation_cadence(capsys, tmp_path):
    curve = numpy.linspace(0.1, 0.5, 1 + 99 * 3)
    curve[99] = 0.9  # the last evaluation of epoch 1
    fabricate_run(tmp_path, curve, eval_interval=10)
    fabricate_run(tmp_path, [0.1, 0.2, 0.9, 0.3], eval_interval=0, seed=2)
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    rows = {int(r["eval_interval"]): r for r in csv.DictReader(io.StringIO(out))}
    assert float(rows[10]["peak_epoch_mean"]) == 1.0 and float(rows[10]["epochs_max"]) == 3.0
    assert float(rows[0]["peak_epoch_mean"]) == 2.0 and float(rows[0]["epochs_max"]) == 3.0


def test_evaluations_per_epoch_are_those_a_run_makes():
    """1 + 99 E lines at the published cadence, 1 + 19 E every 50 batches, 1 + E at 0."""
    assert [summary_data.evaluations_per_epoch(n) for n in (10, 50, 0)] == [99, 19, 1]


def test_published_folders_are_read_from_their_names(capsys, tmp_path):
    for seed in (1, 2):
        folder = tmp_path / "old" / f"FMNIST_TP_OrthoInit_1000.0OrthoReg_{seed}Seed_1e-05LR_4L"
        folder.mkdir(parents=True)
        numpy.savetxt(folder / "test_acc.txt", numpy.linspace(0.1, 0.8, 1 + 99 * 2))
        numpy.savetxt(folder / "training_acc.txt", numpy.linspace(0.1, 0.9, 1 + 99 * 2))
    (tmp_path / "old" / "notes").mkdir()
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    row, = csv.DictReader(io.StringIO(out))
    assert status == 0
    assert (row["dataset"], row["algorithm"], row["nb_layers"], row["tower"],
            row["orthogonal_init"], row["orthogonal_reg"], row["learning_rate"],
            row["eval_interval"], row["seeds"], row["epochs_max"], row["not_finished"]) == (
        "FMNIST", "TP", "4", "False", "True", "1000.0", "1e-05", "10", "2", "2.0", "0")


def test_alignment_adds_a_third_panel(capsys, tmp_path):
    rows = numpy.array([[epoch, batch, 5.0 + epoch, 30.0] for epoch in (0, 1)
                        for batch in (0, 500, 999)])
    for seed in (1, 2):
        fabricate_run(tmp_path, [0.1, 0.5, 0.6], algorithm="GAIT", seed=seed, alignment=rows)
    fabricate_run(tmp_path, [0.1, 0.5, 0.7])
    status, _, err = summarize_main(capsys, tmp_path, "--plot", tmp_path / "curves.png")
    assert status == 0, err
    assert png_size(tmp_path / "curves.png") == (1500, 420)


def test_learned_inverses_add_columns_and_two_panels(capsys, tmp_path):
    """Runs with inverse_quality.txt: the table and the CSV give the last row's mean
    reconstruction error and distance over the learned inverses, mean ± sd over seeds ("-"
    for a group without); the figure gets two more panels (log scale)."""
    for seed, scale in ((1, 1.0), (2, 3.0)):
        rows = numpy.array([[0, batch, 0.5 * scale, 0.3 * scale, 0.2, 0.4]
                            for batch in (0, 500)] + [[0, 999, 0.1 * scale, 0.3 * scale,
                                                       0.2 * scale, 0.0]])
        folder = fabricate_run(tmp_path, [0.1, 0.5], algorithm="GAIT", seed=seed,
                               learn_inv=True, alignment=rows[:, :4])
        numpy.savetxt(os.path.join(folder, "inverse_quality.txt"), rows)
    fabricate_run(tmp_path, [0.1, 0.6], algorithm="GAIT")
    status, out, err = summarize_main(capsys, tmp_path, "--plot", tmp_path / "curves.png")
    assert status == 0, err
    assert "reconstruction error" in out and "inverse distance" in out
    plain, learned = (line for line in out.splitlines() if line.startswith("MNIST"))
    assert learned.split()[:6] == ["MNIST", "GAIT", "1L", "0.0001", "0", "yes"], out
    assert plain.split()[:6] == ["MNIST", "GAIT", "1L", "0.0001", "0", "no"], out
    assert plain.split()[-2:] == ["-", "-"], out
    # reconstruction: means (0.1 + 0.3) / 2 = 0.2 and (0.3 + 0.9) / 2 = 0.6; distances 0.1, 0.3
    assert "0.4 ± 0.28" in learned and "0.2 ± 0.14" in learned, out
    assert png_size(tmp_path / "curves.png") == (2500, 420)
    status, out, err = summarize_main(capsys, tmp_path, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    with_inverses = next(row for row in table if row["learn_inv"] == "True")
    assert float(with_inverses["reconstruction_error_mean"]) == pytest.approx(0.4)
    assert float(with_inverses["inverse_distance_sd"]) == pytest.approx(numpy.std([0.1, 0.3],
                                                                                ddof=1))
    assert next(row for row in table if row["learn_inv"] == "False")[
        "reconstruction_error_mean"] == ""


def test_bad_paths_and_unreadable_folders(capsys, tmp_path):
    status, _, err = summarize_main(capsys, tmp_path / "missing")
    assert status == 2 and "is not a folder" in err
    status, _, err = summarize_main(capsys, tmp_path)
    assert status == 2 and "no results folders" in err
    fabricate_run(tmp_path, [0.1, 0.5])
    broken = fabricate_run(tmp_path, [0.1, 0.5], seed=2)
    open(os.path.join(broken, "test_acc.txt"), "w").close()
    status, out, err = summarize_main(capsys, tmp_path)
    assert status == 0 and f"skipping {broken}: test_acc.txt is empty" in err
    assert re.search(r"BP .* 1 ", out.splitlines()[2])
    status, _, err = summarize_main(capsys, tmp_path, "--plot", tmp_path / "no" / "x.png")
    assert status == 2 and "cannot write the figure" in err


def test_every_skipped_folder_is_named_with_its_reason_and_the_count_read(capsys, tmp_path):
    """Every run unreadable (a broken run.json, a name that is no results folder name): each
    skipped folder with its reason, and how many were read, not "no results folders"."""
    broken = fabricate_run(tmp_path, [0.1, 0.5])
    with open(os.path.join(broken, "run.json"), "w") as file:
        file.write('{"status": "fini')
    unnamed = tmp_path / "my_experiment"
    unnamed.mkdir()
    numpy.savetxt(unnamed / "training_acc.txt", [0.1, 0.5])
    status, out, err = summarize_main(capsys, tmp_path)
    assert status == 2 and out == ""
    assert f"skipping {broken}: " in err and f"skipping {unnamed}: " in err, err
    assert "not a results folder name" in err and "no results folders" not in err, err
    assert "read 0 of 2 results folders" in err, err
    fabricate_run(tmp_path, [0.1, 0.5], seed=2)
    status, out, err = summarize_main(capsys, tmp_path)
    assert status == 0 and "BP" in out
    assert f"skipping {broken}: " in err and "read 1 of 3 results folders" in err, err


def test_runs_with_a_validation_set_are_selected_on_it(capsys, tmp_path):
    """Two seeds held out 10,000 images: the table adds the test accuracy at each run's
    evaluation of best validation accuracy (not the peak test accuracy) and its epoch; a
    group without a validation set shows '-' there; the figure gets a validation panel."""
    fabricate_run(tmp_path, [0.1, 0.8, 0.7, 0.9], validation_curve=[0.1, 0.5, 0.6, 0.4],
                  validation=10000, seed=1)
    fabricate_run(tmp_path, [0.1, 0.6, 0.75, 0.7], validation_curve=[0.1, 0.7, 0.2, 0.3],
                  validation=10000, seed=2)
    fabricate_run(tmp_path, [0.1, 0.5, 0.6])
    status, out, err = summarize_main(capsys, tmp_path, "--format", "csv")
    assert status == 0, err
    rows = {int(row["validation"]): row for row in csv.DictReader(io.StringIO(out))}
    assert float(rows[10000]["selected_test_acc_mean"]) == pytest.approx((0.7 + 0.6) / 2)
    assert float(rows[10000]["selected_epoch_mean"]) == pytest.approx((2 + 1) / 2)
    assert float(rows[10000]["peak_test_acc_mean"]) == pytest.approx((0.9 + 0.75) / 2)
    assert rows[0]["selected_test_acc_mean"] == ""
    status, out, _ = summarize_main(capsys, tmp_path)
    lines = out.splitlines()
    assert "test % at best val" in lines[0] and "best val epoch" in lines[0]
    assert "validation" in lines[0]  # the setting's column: it differs between the groups
    selected = next(line for line in lines if "10000" in line)
    assert "65.00 ± 7.07" in selected and selected.rstrip().endswith("1.50")
    assert next(line for line in lines[2:] if " 0 " in line).split()[-2:] == ["-", "-"]
    status, _, err = summarize_main(capsys, tmp_path, "--plot", tmp_path / "curves.png")
    assert status == 0, err
    assert png_size(tmp_path / "curves.png") == (1500, 420)


def test_a_run_without_validation_is_read_as_before(capsys, tmp_path):
    fabricate_run(tmp_path, [0.1, 0.5, 0.6])
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    assert "selected_test_acc_mean" not in out.splitlines()[0]


def test_a_run_recorded_before_validation_existed_groups_with_runs_without_one(capsys,
                                                                                tmp_path):
    """run.json of an earlier version lacks "validation": it held nothing out (0), so it
    groups with a new run of the same settings."""
    old = fabricate_run(tmp_path, [0.1, 0.5, 0.6], seed=1)
    fabricate_run(tmp_path, [0.1, 0.5, 0.7], seed=2)
    record = json.load(open(os.path.join(old, "run.json")))
    del record["settings"]["validation"]
    json.dump(record, open(os.path.join(old, "run.json"), "w"))
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and [(row["validation"], row["seeds"]) for row in rows] == [("0", "2")]


def test_runs_whose_inverse_learning_rate_is_their_learning_rate_group_with_the_default(
        capsys, tmp_path):
    """A run recorded with --inv_learning_rate equal to its --learning_rate (as given before
    that was the default's folder) computed what the default computes: one group."""
    flags = {"algorithm": "GAIT", "learn_inv": True, "learning_rate": 1e-4}
    fabricate_run(tmp_path, [0.1, 0.5, 0.6], seed=1, inv_learning_rate=1e-4, **flags)
    fabricate_run(tmp_path, [0.1, 0.5, 0.7], seed=2, **flags)
    status, out, _ = summarize_main(capsys, tmp_path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and [row["seeds"] for row in rows] == ["2"], out
