"""Transfer functions, one-hot labels and the statistics of a network on a data set.

The data sets themselves are read by data.py.
"""
import resource

import numpy

import backend

SLOPE = 0.1  # slope of the leaky ReLU for negative inputs
INVERSE_SLOPE = 10.0  # slope of its inverse, 1 / SLOPE
NB_CLASSES = 10


# ----------------------------------------------------------------------------- transfer

def transfer(a, linear=False, out=None):
    """Leaky ReLU f(a) = a for a >= 0, 0.1 a otherwise (the identity when linear).

    With out=a it overwrites its argument instead of allocating the result.
    """
    if linear:
        return a if out is None else out
    xp = backend.array_module(a)
    return xp.maximum(a, SLOPE * a, out=out)


def inverse_transfer(h, linear=False):
    """f^-1(h) = h for h >= 0, 10 h otherwise (the identity when linear)."""
    if linear:
        return h
    xp = backend.array_module(h)
    return xp.minimum(h, INVERSE_SLOPE * h)


def transfer_derivative(h, linear=False):
    """g(h) = 1 where the output h >= 0, 0.1 where h < 0 (1 everywhere when linear)."""
    if linear:
        return 1.0
    xp = backend.array_module(h)
    return xp.where(h >= 0, h.dtype.type(1.0), h.dtype.type(SLOPE))


def scaled_inverse_difference(h, local_errors, scale, linear=False):
    """phi(h, delta) / scale with delta = scale * g(h) * local_errors, without cancellation.

    phi(h, delta) = f^-1(h) - f^-1(h - delta). Where h and h - delta lie on the same side of
    zero, phi = delta / g(h), so the result is `local_errors` itself; where the step crosses
    zero it is (s(h - delta) * delta + (s(h) - s(h - delta)) * h) / scale, with s = 1 / g the
    slope of f^-1. Linear layers: always `local_errors`.
    """
    if linear:
        return local_errors
    xp = backend.array_module(h)
    delta = scale * transfer_derivative(h) * local_errors
    stepped = h - delta
    slope_before = 1.0 / transfer_derivative(h)
    slope_after = 1.0 / transfer_derivative(stepped)
    crossing_value = (slope_after * delta + (slope_before - slope_after) * h) / scale
    crossing = (h >= 0) != (stepped >= 0)
    return xp.where(crossing, crossing_value, local_errors)


# ----------------------------------------------------------------------------- labels

def one_hot(labels, nb_classes=NB_CLASSES):
    """Rows of `nb_classes` with a 1 at each label: (n,) int -> (n, nb_classes) float64."""
    rows = numpy.zeros((len(labels), nb_classes))
    rows[numpy.arange(len(labels)), labels] = 1.0
    return rows


# ----------------------------------------------------------------------------- statistics

def peak_memory_mb():
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def angle_degrees(a, b):
    """The angle between two arrays as flat vectors: arccos(<a, b> / (|a| |b|)), in degrees."""
    xp = backend.array_module(a)
    a, b = a.ravel(), b.ravel()
    cosine = float(xp.dot(a, b) / (xp.linalg.norm(a) * xp.linalg.norm(b)))
    return float(numpy.degrees(numpy.arccos(numpy.clip(cosine, -1.0, 1.0))))


def evaluate(net, images, labels, chunk_size=None):
    """(accuracy, loss) of `net` on a whole data set, in chunks of `chunk_size` rows
    (`backend.evaluation_rows()` by default).

    accuracy = mean(argmax of the 10 class outputs == label);
    loss = mean over samples of sum over the 10 class outputs of (output - one_hot)**2.
    `images` and `labels` are backend arrays (float, int).
    """
    xp = backend.array_module(images)
    correct, squared_error = 0, 0.0
    chunk_size = chunk_size or backend.evaluation_rows()
    for start in range(0, len(images), chunk_size):
        scores = net.class_outputs(images[start:start + chunk_size])
        chunk_labels = labels[start:start + chunk_size]
        correct += int(xp.count_nonzero(xp.argmax(scores, axis=1) == chunk_labels))
        scores[xp.arange(len(scores)), chunk_labels] -= 1.0
        squared_error += float(xp.sum(scores * scores))
    return correct / len(images), squared_error / len(images)
