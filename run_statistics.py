"""What a run measures as it trains: accuracy and loss on the training and test sets (and a
validation set) at each evaluation, and the alignment rows of --log_alignment (kept apart
from the training loop, so that checkpoint.py can store and restore them without it)."""
import run_folder
from utils import evaluate


class Statistics:
    """Accuracy and loss on the training and test sets (and the validation set, if a run
    holds one out), one value per evaluation, the alignment rows (epoch, batch, angle per
    layer) of --log_alignment and, for learned inverses, the rows of their quality at the
    same cadence (epoch, batch, reconstruction error per learned inverse, then distance to
    the exact inverse per learned inverse; InvNet.inverse_quality)."""

    NAMES = run_folder.STATISTICS

    def __init__(self, values=None, alignment=None, names=NAMES, inverse_quality=None):
        self.values = values or {name: [] for name in names}
        self.alignment = alignment or []
        self.inverse_quality = inverse_quality or []  # rows (epoch, batch, errors, distances)
        self.evaluated_after = None  # (epoch, batch) of the latest evaluation in this process

    def record(self, net, train, test, validation=None):
        """Evaluate `net` on each set and append its accuracy and loss (the validation set's
        when there is one)."""
        sets = [("training", train), ("test", test)]
        if validation is not None:
            sets.append(("validation", validation))
        for prefix, (images, labels) in sets:
            accuracy, loss = evaluate(net, images, labels)
            self.values[prefix + "_acc"].append(accuracy)
            self.values[prefix + "_loss"].append(loss)

    def latest(self):
        """A short text of the latest evaluation: its accuracies and the batch it followed."""
        where = ("" if self.evaluated_after is None else
                 f" (after epoch {self.evaluated_after[0] + 1} batch {self.evaluated_after[1]})")
        validation = (f", validation acc {self.values['validation_acc'][-1]:.4f}"
                      if self.values.get("validation_acc") else "")
        return (f"evaluation{where}: train acc {self.values['training_acc'][-1]:.4f}, "
                f"test acc {self.values['test_acc'][-1]:.4f}{validation}")
