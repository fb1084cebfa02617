"""What a run prints as it trains: a tqdm bar per epoch on a terminal, plain lines elsewhere
(`Progress`), with the latest evaluation (`latest`)."""
import sys
import time


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines (about ten an epoch) elsewhere.

    Each line (and the bar's note, as often) gives the accuracy and loss of the training
    batches since the previous line, as the forward pass computed them before each update
    ("batches"), and the latest evaluation of the whole sets, labelled with when it was made
    ("untrained", "after epoch 1", "after epoch 1 batch 991": batches counted from 1, as
    in "batch 1000/1000") (for a pack, each run's accuracies in the order of its runs).
    """

    def __init__(self, nb_epochs, nb_batches, stream=None):
        self.nb_epochs, self.nb_batches = nb_epochs, nb_batches
        self.stream = sys.stderr if stream is None else stream  # sys.stderr as it is now
        self.interactive = self.stream.isatty()
        self.bar = None

    def start_epoch(self, epoch):
        self.epoch, self.started = epoch, time.monotonic()
        if self.interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=self.nb_batches, desc=f"epoch {epoch + 1}/{self.nb_epochs}",
                            unit="batch", file=self.stream, leave=False, dynamic_ncols=True)

    def batch_done(self, batch_index, statistics, runner):
        """After each batch: move the bar; at each tenth of the epoch, a line or a note."""
        if self.bar is not None:
            self.bar.update(1)
        if (batch_index + 1) % max(1, self.nb_batches // 10):
            return
        running = runner.running_statistics()
        if running is None:
            batches = ""
        elif len(running) == 1:
            batches = f"batches acc {running[0][0]:.4f} loss {running[0][1]:.4f}; "
        else:  # a pair per run of the pack
            batches = "batches acc " + " ".join(f"{accuracy:.4f}" for accuracy, _ in running) + "; "
        note = batches + latest(statistics)
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            return
        print(f"epoch {self.epoch + 1}/{self.nb_epochs} batch {batch_index + 1}/"
              f"{self.nb_batches} {time.monotonic() - self.started:.1f}s {note}",
              file=self.stream, flush=True)

    def end_epoch(self, statistics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {self.epoch + 1}/{self.nb_epochs} done in "
              f"{time.monotonic() - self.started:.1f}s: {latest(statistics)}", flush=True)


def latest(statistics):
    """Of a pack's runs' Statistics (a list): Statistics.latest() of a pack of one, the test
    accuracies in order of several (evaluated together: the first run's moment)."""
    if len(statistics) == 1:
        return statistics[0].latest()
    return (f"evaluation{statistics[0].moment_label()}: test acc "
            + " ".join(f"{run.values['test_acc'][-1]:.4f}" for run in statistics))
