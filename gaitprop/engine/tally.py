"""A running tally, on the device, of the training batches' accuracy and loss (`BatchTally`):
what the progress lines report between evaluations."""
import numpy

from gaitprop.arrays import backend


def _tally_batch_on_host(outputs, labels, classes, width, tally):
    """Add each row's hit (argmax of its class outputs == its label) and squared error."""
    scores = outputs[..., :classes]
    tally[..., 0] += scores.argmax(axis=-1) == labels.argmax(axis=-1)
    tally[..., 1] += ((scores - labels) ** 2).sum(axis=-1)


_TALLY_BATCH = backend.Fused(
    _tally_batch_on_host, "raw T outputs, raw T labels, int32 classes, int32 width", "raw T tally",
    """int best = 0, label = 0;
    T squared_error = 0;
    for (int k = 0; k < classes; ++k) {
        T output = outputs[i * width + k], target = labels[i * classes + k];
        if (output > outputs[i * width + best]) best = k;
        if (target > labels[i * classes + label]) label = k;
        squared_error += (output - target) * (output - target);
    }
    tally[2 * i] += best == label ? 1 : 0;
    tally[2 * i + 1] += squared_error""", "tally_batch")


class BatchTally:
    """A running tally, on the device, of the training batches' accuracy and loss (each
    row's hit, argmax of its class outputs == its label, and squared error) and of the
    steps tallied."""

    def __init__(self, xp):
        self.xp, self.sums, self.steps = xp, None, 0

    def add(self, output, one_hot_labels):
        """Add a step's batch (the forward pass's output before the update)."""
        if self.sums is None:
            self.sums = self.xp.zeros(output.shape[:-1] + (2,), dtype=output.dtype)
        _TALLY_BATCH(output, one_hot_labels, numpy.int32(one_hot_labels.shape[-1]),
                     numpy.int32(output.shape[-1]), self.sums,
                     size=output.size // output.shape[-1])

    def select(self, keep):
        """Keep the tallies of the runs at the positions `keep` (a copy: no graph has it)."""
        if self.sums is not None:
            self.sums = self.sums[keep]

    def read(self):
        """[(accuracy, loss)] per run of the batches since the last read, as evaluate()
        computes them for a data set, or None if there was none (waits for the device); the
        tally starts again. Steps redone after a failed check count twice."""
        if not self.steps or self.sums is None:
            return None
        sums = backend.to_host(self.sums.sum(axis=-2)).reshape(-1, 2)
        samples = self.steps * self.sums.shape[-2]
        self.sums[...] = 0
        self.steps = 0
        return [(float(hits) / samples, float(squared_error) / samples)
                for hits, squared_error in sums]
