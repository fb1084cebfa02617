"""When a run evaluates and how it names a moment of training: the batches of an epoch
(`batch_layout`), the evaluation cadence (`evaluates_after`), and the names of a step and of
an evaluation as a run prints them (batches and epochs counted from 1)."""


def batch_layout(nb_samples):
    """(batch_size, nb_batches): len(train) // 1000 samples a batch, len // batch_size batches."""
    batch_size = nb_samples // 1000
    return batch_size, nb_samples // batch_size


def evaluates_after(batch_index, eval_interval, nb_batches):
    """Whether the data sets are evaluated right after batch `batch_index` (0-based).

    eval_interval N > 0: after every batch with b % N == 0 and b != 0 (as published, N = 10);
    N = 0: after the last batch of the epoch only.
    """
    if eval_interval == 0:
        return batch_index == nb_batches - 1
    return batch_index % eval_interval == 0 and batch_index != 0


def evaluation_moment(epoch, batch_index, nb_batches):
    """When an evaluation right after batch `batch_index` (0-based) of epoch `epoch` (0-based)
    was made, as a run prints it (batches and epochs counted from 1, as the progress line's
    "batch 10/1000" has done 10): "after epoch 1" after its last batch, else "after epoch 1
    batch 991"."""
    if batch_index == nb_batches - 1:
        return f"after epoch {epoch + 1}"
    return f"after epoch {epoch + 1} batch {batch_index + 1}"


def last_evaluation_moment(epochs_done, eval_interval, nb_batches):
    """The `evaluation_moment` of the latest evaluation of a run that has trained
    `epochs_done` whole epochs at the cadence `eval_interval`: "untrained" if it has trained
    none (or the cadence evaluates in no epoch)."""
    evaluated = [batch for batch in range(nb_batches)
                 if evaluates_after(batch, eval_interval, nb_batches)]
    if not epochs_done or not evaluated:
        return "untrained"
    return evaluation_moment(epochs_done - 1, evaluated[-1], nb_batches)


def batch_name(epoch, batch_index):
    """Where a step is, as a divergence message says it: batch index 6 of epoch index 0 is
    "epoch 1, batch 7", counted from 1 as a run prints batches (`evaluation_moment`; the
    rows of the files keep 0-based indices)."""
    return f"epoch {epoch + 1}, batch {batch_index + 1}"
