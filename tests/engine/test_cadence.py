"""The cadence of an epoch (cadence.py): how the training images are laid out in batches."""
import numpy

from gaitprop.engine import cadence
from gaitprop.engine import training


def test_the_batch_layout_follows_the_training_images_left():
    """len // 1000 images a batch, len // batch batches: 60 x 1000 for all 60,000 images,
    50 x 1000 for the 50,000 left beside the authors' 10,000 validation images."""
    assert cadence.batch_layout(60000) == (60, 1000)
    assert cadence.batch_layout(50000) == (50, 1000)
    assert cadence.batch_layout(55500) == (55, 1009)
    feed = training.Feed([((numpy.zeros((50000, 4)), numpy.zeros(50000, dtype=int)),
                           numpy.zeros((50000, 10)), (numpy.zeros((3, 4)), numpy.zeros(3)))])
    assert (feed.batch_size, feed.nb_batches) == (50, 1000)
