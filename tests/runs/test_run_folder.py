"""run_folder: a results folder's name read back into the settings it was made from, and the
comparison of a stored run's settings with the ones asked for."""
import argparse
import os

import pytest

from gaitprop.runs import run_folder
from gaitprop.runs.settings import build_parser


@pytest.mark.parametrize("argv", [
    [],
    ["--linear"],
    ["--orthogonal_init", "--orthogonal_reg=0.1", "--algorithm=GAIT"],
    ["--tower", "--nb_layers=4", "--dataset=FMNIST"],
    ["--linear", "--orthogonal_init", "--tower", "--algorithm=TP", "--dataset=KMNIST"],
    ["--seed=0"],
    ["--seed=4294967295", "--nb_layers=0"],
    ["--seed=4294967292", "--tower"],
    ["--learning_rate=1e-5", "--orthogonal_reg=1000"],
    ["--learning_rate=0.5", "--orthogonal_reg=1e-3"],
    ["--learning_rate=1e20", "--orthogonal_reg=2.5e-12"],
    ["--learning_rate=123456789", "--orthogonal_reg=0.30000000000000004"],
    ["--validation=10000", "--nb_layers=4"],
    ["--validation=1", "--tower", "--linear"],
    ["--algorithm=GAIT", "--learn_inv", "--orthogonal_reg=0.1"],
    ["--algorithm=TP", "--learn_inv", "--no_inv_init", "--inv_learning_rate=1e-3", "--tower"],
    ["--algorithm=GAIT", "--gamma=0.01", "--learn_inv", "--inv_learning_rate=2.5e-12",
     "--learning_rate=1e-5", "--validation=10000"],
    ["--algorithm=GAIT", "--gamma=1e-12"],
])
def test_folder_name_reads_back_into_the_settings_it_holds(argv):
    args = build_parser().parse_args(argv)
    name = run_folder.folder_name(args)
    assert run_folder.settings_from_name(name) == {key: getattr(args, key)
                                                   for key in run_folder.NAMED}
    assert run_folder.results_folder(args).endswith(name)


@pytest.mark.parametrize("name", [
    "", "notes", "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1", "MNIST_BP_xOrthoReg_1Seed_0.0001LR_1L",
    "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L_copy", "mnist_BP_0.0OrthoReg_1Seed_0.0001LR_1L"])
def test_other_names_are_not_results_folders(name):
    assert run_folder.settings_from_name(name) is None


def test_named_settings_are_computation_settings():
    assert set(run_folder.NAMED) <= set(run_folder.COMPUTATION)


def test_setting_differences_name_each_differing_computation_setting():
    args = build_parser().parse_args(["--eval_interval=0", "--nb_epochs=3"])
    stored = run_folder.computation_settings(args)
    assert run_folder.setting_differences(stored, args) == []
    asked = build_parser().parse_args(["--nb_epochs=5", "--device=1"])  # not computation
    assert run_folder.setting_differences(stored, asked) == ["eval_interval stored 0, asked 10"]
    assert run_folder.setting_differences({}, args)[0] == "algorithm stored None, asked 'BP'"


def test_the_validation_split_shows_in_the_name_only_when_there_is_one():
    parser = build_parser()
    assert run_folder.folder_name(parser.parse_args(["--nb_layers=4"])) == (
        "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_4L")
    assert run_folder.folder_name(parser.parse_args(["--nb_layers=4", "--validation=10000"])) == (
        "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_10000Val_4L")
    stored = run_folder.computation_settings(parser.parse_args(["--validation=10000"]))
    assert run_folder.setting_differences(stored, parser.parse_args(["--validation=5000"])) == [
        "validation stored 10000, asked 5000"]


@pytest.mark.parametrize("value", ["59001", "60000", "-1", "x"])
def test_a_validation_split_that_leaves_no_batch_layout_is_refused(value):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([f"--validation={value}"])
    assert stopped.value.code == 2


def test_a_run_stored_before_a_setting_existed_resumes_with_its_value():
    """A run stored before --validation existed (its settings lack it) held nothing out:
    it resumes without --validation, and is refused with one."""
    parser = build_parser()
    stored = run_folder.computation_settings(parser.parse_args([]))
    del stored["validation"]
    assert run_folder.setting_differences(stored, parser.parse_args([])) == []
    assert run_folder.setting_differences(stored, parser.parse_args(["--validation=10"])) == [
        "validation stored 0, asked 10"]


@pytest.mark.parametrize("argv", [
    ["--algorithm=GAIT", "--learn_inv", "--inv_learning_rate=1e-4"],
    ["--algorithm=TP", "--learn_inv", "--learning_rate=1e-3", "--inv_learning_rate=0.001"],
])
def test_an_inverse_learning_rate_equal_to_the_learning_rate_is_the_default(argv):
    """--inv_learning_rate equal to --learning_rate computes what its default does: the same
    folder (no InvLR piece), read back as the default, and a run stored either way (run.json
    or a checkpoint of either form) resumes under either."""
    parser = build_parser()
    given = parser.parse_args(argv)
    default = parser.parse_args([arg for arg in argv if "inv_learning_rate" not in arg])
    name = run_folder.folder_name(default)
    assert "InvLR" not in name and run_folder.folder_name(given) == name
    unparsed = argparse.Namespace(**{**vars(default), "inv_learning_rate": default.learning_rate})
    assert run_folder.folder_name(unparsed) == name  # a sweep's settings are not parsed
    assert run_folder.settings_from_name(name) == {key: getattr(default, key)
                                                   for key in run_folder.NAMED}
    stored_forms = [run_folder.computation_settings(each) for each in (given, default, unparsed)]
    for stored in stored_forms:
        for asked in (given, default, unparsed):
            assert run_folder.setting_differences(stored, asked) == []
    other = parser.parse_args(argv[:-1] + ["--inv_learning_rate=0.5"])
    assert run_folder.folder_name(other).endswith("0.5InvLR_1L")
    assert run_folder.setting_differences(stored_forms[0], other) == [
        "inv_learning_rate stored None, asked 0.5"]


@pytest.mark.parametrize("text", ["-0", "-0.0", "-0e3"])
def test_negative_zero_is_named_zero(text):
    parser = build_parser()
    args = parser.parse_args([f"--orthogonal_reg={text}"])
    assert run_folder.folder_name(args) == "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_1L"
    assert run_folder.folder_name(args) == run_folder.folder_name(
        parser.parse_args(["--orthogonal_reg=0"]))
    # every float's name piece, also for settings that were not parsed (a sweep's)
    defaults = vars(parser.parse_args([]))
    for zeros, expected in (
            (("orthogonal_reg", "learning_rate", "gamma"),
             "MNIST_GAIT_0.0OrthoReg_0.0Gamma_1Seed_0.0LR_1L"),
            (("inv_learning_rate",), "MNIST_GAIT_0.0OrthoReg_1Seed_0.0001LR_0.0InvLR_1L")):
        unparsed = argparse.Namespace(**{**defaults, "algorithm": "GAIT",
                                         **dict.fromkeys(zeros, -0.0)})
        assert run_folder.folder_name(unparsed) == expected


def test_a_run_resumes_whether_its_inverse_learning_rate_is_given_or_left_default(tmp_path):
    """Trained with --inv_learning_rate equal to --learning_rate, a run is the default's: one
    folder, continued by --load without the flag (on a small synthetic set; the other way
    round: setting_differences above)."""
    from helpers import synthetic_run_sets, train_in_process
    sets = synthetic_run_sets()
    flags = ["--algorithm=GAIT", "--learn_inv", "--eval_interval=0",
             f"--results_dir={tmp_path}"]
    for epochs, extra in ((1, ["--inv_learning_rate=1e-4"]), (2, ["--load"])):
        _, stored = train_in_process(flags + [f"--nb_epochs={epochs}"] + extra, sets)
        assert (stored is None) == (epochs == 1)
    assert os.listdir(tmp_path) == ["MNIST_GAIT_0.0OrthoReg_LearnInv_1Seed_0.0001LR_1L"]
