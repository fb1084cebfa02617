"""FA, feedback alignment (Lillicrap, Cownden, Tweed, Akerman 2016): the error passes down
through a fixed random matrix B_l of W_l.T's shape instead of W_l.T. The forward weights come
to align with B, so that the directions turn towards BP's as the network learns."""
import numpy

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.model.rules.rule import Rule

STREAM = 0xFA  # FA's matrices are drawn from [layer seed, STREAM]: a stream of their own


def fixed_matrix(net, layer_index, rows, stream):
    """A fixed random (rows, units) matrix of layer `layer_index` (units: the width that layer
    reads), made once per network and kept in `net.rule_arrays`: drawn on the host with
    NumPy from numpy.random.default_rng([seed, stream]) (seed: the layer's), Gaussian with
    standard deviation sqrt(2 / (rows + units)) like W's Gaussian initialisation (the same
    scale as an orthogonal W's entries), then moved to the array backend. So it is the same
    on CPU and GPU, after a resume (made again from the seed) and in a pack (one per run,
    each drawn from its run's seed, stacked); W's own stream is not touched. A layer
    without a seed (an API network made with start_seed=None) draws from fresh entropy."""
    key = (stream, layer_index, rows)
    if key not in net.rule_arrays:
        layer = net.layers[layer_index]
        seeds = layer.seed if net.runs is not None else [layer.seed]
        units = layer.nb_units
        drawn = [numpy.random.default_rng(None if seed is None else [seed, stream])
                 .standard_normal((rows, units)) * numpy.sqrt(2.0 / (rows + units))
                 for seed in seeds]
        net.rule_arrays[key] = backend.to_device(numpy.stack(drawn) if net.runs is not None
                                                 else drawn[0])
    return net.rule_arrays[key]


def feedback_matrix(net, layer_index):
    """B_l of layer `layer_index`: `fixed_matrix` of W_l.T's shape (units, units)."""
    units = net.layers[layer_index].nb_units
    return fixed_matrix(net, layer_index, units, STREAM)


def error_below(net, passing):
    """e_l = d @ B_l, with B_l fixed (`feedback_matrix`) where BP has W_l.T."""
    return products.matmul(passing.local_errors, feedback_matrix(net, passing.layer_index))


RULE = Rule("FA", "feedback alignment", "Lillicrap, Cownden, Tweed, Akerman 2016",
            "through a fixed random matrix B of W.T's shape", error_below)
