"""The statistics a run records at each evaluation (a .txt file each in its results
folder). Only the standard library."""

STATISTICS = ("training_acc", "training_loss", "test_acc", "test_loss")
VALIDATION_STATISTICS = ("validation_acc", "validation_loss")  # with --validation > 0


def statistics_names(validation):
    """The statistics a run records: STATISTICS, and VALIDATION_STATISTICS when it holds out
    a validation set (`validation` > 0)."""
    return STATISTICS + (VALIDATION_STATISTICS if validation else ())
