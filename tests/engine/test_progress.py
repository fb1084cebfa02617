"""The progress lines (progress.py): the batches' running statistics and the latest
evaluation, labelled with when it was made (batches counted from 1; "untrained" until the
epoch's end with --eval_interval=0).
"""
import io
import re

import numpy

from gaitprop.engine import cadence
from gaitprop.engine import progress as progress_lines
from gaitprop.engine import step as training_step
from gaitprop.engine import step_runner
from gaitprop.engine import training
from gaitprop.model.functions import one_hot
from gaitprop.model.net import InvNet, SquareInvNet


def test_progress_lines_show_the_batches_and_the_latest_evaluation():
    stream = io.StringIO()
    progress = progress_lines.Progress(1, 20, stream)
    statistics = training.Statistics({"training_acc": [0.5], "training_loss": [1.0],
                                      "test_acc": [0.25], "test_loss": [1.0]})
    statistics.evaluation_moment = cadence.evaluation_moment(0, 9, 20)

    class Runner:  # a pack of one run, as run.py trains it
        def running_statistics(self):
            return [(0.75, 0.125)]
    progress.start_epoch(0)
    for batch_index in range(2):
        progress.batch_done(batch_index, [statistics], Runner())
    assert re.fullmatch(r"epoch 1/1 batch 2/20 [0-9.]+s batches acc 0.7500 loss 0.1250; "
                        r"evaluation \(after epoch 1 batch 10\): train acc 0.5000, "
                        r"test acc 0.2500\n", stream.getvalue())


def test_evaluations_are_labelled_with_when_they_were_made_batches_counted_from_1():
    """Batches are counted from 1 in what a run prints (the progress line's "batch 10/20" has
    done 10): an evaluation after batch index 9 of 20 is "after epoch 1 batch 10", after the
    last batch "after epoch 1"; the one a run starts or resumes with is the untrained one or
    its checkpoint epoch's last (at the published cadence after batch index 990)."""
    assert cadence.evaluation_moment(0, 9, 20) == "after epoch 1 batch 10"
    assert cadence.evaluation_moment(1, 19, 20) == "after epoch 2"
    assert cadence.last_evaluation_moment(0, 10, 1000) == "untrained"
    assert cadence.last_evaluation_moment(2, 10, 1000) == "after epoch 2 batch 991"
    assert cadence.last_evaluation_moment(2, 0, 1000) == "after epoch 2"
    assert cadence.last_evaluation_moment(2, 1000, 1000) == "untrained"  # none in training
    pack = [training.Statistics({name: [0.125] for name in training.Statistics.NAMES})
            for _ in range(2)]
    for statistics in pack:
        statistics.evaluation_moment = "untrained"
    assert progress_lines.latest(pack) == "evaluation (untrained): test acc 0.1250 0.1250"


def test_eval_interval_0_labels_the_untrained_evaluation_until_the_epochs_end(capsys):
    """--eval_interval=0: every line of the first epoch shows the evaluation before training,
    labelled "untrained"; the evaluation after the last batch (on the last line, "batch
    20/20", and the epoch's summary) is "after epoch 1"."""
    generator = numpy.random.RandomState(0)
    labels = generator.randint(0, 10, 1000)
    feed = training.Feed([((generator.rand(1000, 16), labels), one_hot(labels),
                           (generator.rand(50, 16), generator.randint(0, 10, 50)))])
    runner = step_runner.StepRunner(InvNet.stack([SquareInvNet(16, 1, 1, True)]),
                                    training_step.StepSettings.of_pack([training_step.StepSettings(
                                        "BP", 1e-3)]))
    statistics = [training.Statistics()]
    feed.record(runner.net, statistics, [0], None)  # before training
    stream = io.StringIO()
    progress = progress_lines.Progress(1, feed.nb_batches, stream)
    progress.start_epoch(0)
    assert training.train_epoch(runner, feed, statistics, 0, progress, lambda: False, 0)
    progress.end_epoch(statistics)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    for line in lines[:-1]:
        assert re.search(r"batch \d+00/1000 .*; evaluation \(untrained\): ", line), line
    assert re.fullmatch(r"epoch 1/1 batch 1000/1000 .*; evaluation \(after epoch 1\): .*",
                        lines[-1])
    assert "evaluation (after epoch 1): " in capsys.readouterr().out
