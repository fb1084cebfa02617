"""Transfer functions, one-hot labels and the statistics of a network on a data set.

The data sets themselves are read by data.py.
"""
import resource

import numpy

from gaitprop.arrays import backend

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


def _add_biases_and_transfer_on_host(biases, activity, linear):
    """activity = f(activity + biases) in place, in cache-sized row blocks shared among threads;
    a pack's runs (3-d activity, biases of shape (runs, 1, units)) one after another."""
    if activity.ndim > 2:
        for run_biases, run_activity in zip(biases, activity):
            _add_biases_and_transfer_on_host(run_biases, run_activity, linear)
        return

    def blocks_done(blocks):
        for block in blocks:
            block += biases
            transfer(block, linear, out=block)
    backend.in_shares(backend.row_blocks(activity, fewest=8), blocks_done)


# Each computation below is one CUDA kernel on a GPU; the NumPy lines beside it say (and do)
# the same, operation for operation. In CUDA, s >= 0 ? s : 0.1 s is numpy.maximum(s, 0.1 s)
# bit for bit (NaN and -0 included), and s >= 0 ? s : 10 s is numpy.minimum(s, 10 s).
_ADD_BIASES_AND_TRANSFER = {
    False: backend.Fused(lambda b, a: _add_biases_and_transfer_on_host(b, a, False),
                         "T b", "T a", "T s = a + b; a = s >= 0 ? s : (T)0.1 * s",
                         "add_biases_and_leaky_relu"),
    True: backend.Fused(lambda b, a: _add_biases_and_transfer_on_host(b, a, True),
                        "T b", "T a", "a = a + b", "add_biases")}


def add_biases_and_transfer(activity, biases, linear=False):
    """activity = f(activity + biases), in place (biases broadcast over the rows: of shape
    (units,) for a (rows, units) activity, (runs, 1, units) for a pack's (runs, rows, units))."""
    _ADD_BIASES_AND_TRANSFER[linear](biases, activity)
    return activity


_DERIVATIVE_TIMES = backend.Fused(
    lambda h, e: transfer_derivative(h) * e,
    "T h, T e", "T d", "d = (h >= 0 ? (T)1 : (T)0.1) * e", "leaky_relu_derivative_times")


def derivative_times(h, errors, linear=False):
    """d = g(h) * errors, the local errors of a layer whose output is h."""
    if linear:
        return 1.0 * errors
    return _DERIVATIVE_TIMES(h, errors)


_PRE_INVERSE = backend.Fused(
    lambda h, e, b: inverse_transfer(h - e) - b,
    "T h, T e, T b", "T x", "T s = h - e; x = (s >= 0 ? s : (T)10 * s) - b",
    "inverse_leaky_relu_minus_biases")


def pre_inverse(h, errors, biases, linear=False):
    """f^-1(h - errors) - biases: what inv(W) maps back to the layer's input (TP's target)."""
    if linear:
        return (h - errors) - biases
    return _PRE_INVERSE(h, errors, biases)


def _scaled_inverse_difference_on_host(h, local_errors, scale):
    """The formula of `scaled_inverse_difference` in NumPy (or CuPy) operations."""
    xp = backend.array_module(h)
    delta = scale * transfer_derivative(h) * local_errors
    stepped = h - delta
    slope_before = 1.0 / transfer_derivative(h)
    slope_after = 1.0 / transfer_derivative(stepped)
    crossing_value = (slope_after * delta + (slope_before - slope_after) * h) / scale
    crossing = (h >= 0) != (stepped >= 0)
    return xp.where(crossing, crossing_value, local_errors)


_SCALED_INVERSE_DIFFERENCE = backend.Fused(
    _scaled_inverse_difference_on_host, "T h, T e, T scale", "T out",
    """T g = h >= 0 ? (T)1 : (T)0.1;
    T delta = scale * g * e;
    T stepped = h - delta;
    T g_after = stepped >= 0 ? (T)1 : (T)0.1;
    T slope_before = (T)1 / g;
    T slope_after = (T)1 / g_after;
    T crossing_value = (slope_after * delta + (slope_before - slope_after) * h) / scale;
    out = (h >= 0) != (stepped >= 0) ? crossing_value : e""",
    "gait_scaled_inverse_difference")


def scaled_inverse_difference(h, local_errors, scale, linear=False):
    """phi(h, delta) / scale with delta = scale * g(h) * local_errors, without cancellation.

    phi(h, delta) = f^-1(h) - f^-1(h - delta). Where h and h - delta lie on the same side of
    zero, phi = delta / g(h), so the result is `local_errors` itself; where the step crosses
    zero it is (s(h - delta) * delta + (s(h) - s(h - delta)) * h) / scale, with s = 1 / g the
    slope of f^-1. Linear layers: always `local_errors`.
    """
    if linear:
        return local_errors
    return _SCALED_INVERSE_DIFFERENCE(h, local_errors, h.dtype.type(scale))


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
    `images` and `labels` are backend arrays (float, int). The counts are summed on the
    backend and read once at the end (one wait for the GPU).
    """
    xp = backend.array_module(images)
    chunk_size = chunk_size or backend.evaluation_rows()
    correct, squared_error = xp.zeros((), dtype=numpy.int64), xp.zeros((), dtype=numpy.float64)
    for start in range(0, len(images), chunk_size):
        scores = net.class_outputs(images[start:start + chunk_size])
        chunk_labels = labels[start:start + chunk_size]
        correct += xp.count_nonzero(xp.argmax(scores, axis=1) == chunk_labels)
        scores[xp.arange(len(scores)), chunk_labels] -= 1.0
        squared_error += xp.sum(scores * scores)
    return int(correct) / len(images), float(squared_error) / len(images)
