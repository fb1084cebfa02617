"""What a run measures as it trains: accuracy and loss on the training and test sets at each
evaluation, and the alignment rows of --log_alignment (kept apart from the training loop, so
that checkpoint.py can store and restore them without it)."""
import run_folder
from utils import evaluate


class Statistics:
    """Accuracy and loss on the training and test sets, one value per evaluation, and the
    alignment rows (epoch, batch, angle per layer) of --log_alignment."""

    NAMES = run_folder.STATISTICS

    def __init__(self, values=None, alignment=None):
        self.values = values or {name: [] for name in self.NAMES}
        self.alignment = alignment or []
        self.evaluated_after = None  # (epoch, batch) of the latest evaluation in this process

    def record(self, net, train, test):
        """Evaluate `net` on both sets and append the four numbers."""
        for prefix, (images, labels) in (("training", train), ("test", test)):
            accuracy, loss = evaluate(net, images, labels)
            self.values[prefix + "_acc"].append(accuracy)
            self.values[prefix + "_loss"].append(loss)

    def latest(self):
        """A short text of the latest evaluation: its accuracies and the batch it followed."""
        where = ("" if self.evaluated_after is None else
                 f" (after epoch {self.evaluated_after[0] + 1} batch {self.evaluated_after[1]})")
        return (f"evaluation{where}: train acc {self.values['training_acc'][-1]:.4f}, "
                f"test acc {self.values['test_acc'][-1]:.4f}")
