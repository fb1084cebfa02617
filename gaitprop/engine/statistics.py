"""What a run measures as it trains: accuracy and loss on the training and test sets (and a
validation set) at each evaluation, and the alignment rows of --log_alignment (kept apart
from the training loop, so that checkpoint.py can store and restore them without it)."""
from gaitprop.engine.statistic_names import STATISTICS
from gaitprop.model.functions import evaluate


class Statistics:
    """Accuracy and loss on the training and test sets (and the validation set, if a run
    holds one out), one value per evaluation, the alignment rows (epoch, batch, angle per
    layer) of --log_alignment and, for learned inverses, the rows of their quality at the
    same cadence (epoch, batch, reconstruction error per learned inverse, then distance to
    the exact inverse per learned inverse; InvNet.inverse_quality)."""

    NAMES = STATISTICS

    def __init__(self, values=None, alignment=None, names=NAMES, inverse_quality=None):
        self.values = values or {name: [] for name in names}
        self.alignment = alignment or []
        self.inverse_quality = inverse_quality or []  # rows (epoch, batch, errors, distances)
        # when the latest evaluation was made (training.evaluation_moment: "untrained",
        # "after epoch 1", "after epoch 1 batch 991"), None if not known
        self.evaluation_moment = None

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

    def moment_label(self):
        """When the latest evaluation was made, in parentheses after a space (" (untrained)",
        " (after epoch 1)"), or an empty text if not known."""
        return "" if self.evaluation_moment is None else f" ({self.evaluation_moment})"

    def latest(self):
        """A short text of the latest evaluation: its accuracies and when it was made."""
        where = self.moment_label()
        validation = (f", validation acc {self.values['validation_acc'][-1]:.4f}"
                      if self.values.get("validation_acc") else "")
        return (f"evaluation{where}: train acc {self.values['training_acc'][-1]:.4f}, "
                f"test acc {self.values['test_acc'][-1]:.4f}{validation}")
