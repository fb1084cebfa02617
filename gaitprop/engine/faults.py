"""Divergence: finding what stopped being finite in a step or a pack's parameters, naming
it and what to try (`Diverged`, `Fault`, `advice`), cheaply (`finiteness_sums`: one
reduction per array, read once)."""
import math

import numpy

from gaitprop.arrays import backend


class Diverged(RuntimeError):
    """Weights, directions or statistics stopped being finite; the message says where.

    In a pack, `runs` maps the position of each run at fault to its own message.
    """

    def __init__(self, message, runs=None):
        super().__init__(message)
        self.runs = runs


def runs_of(net, statistics):
    """[(run network, its Statistics, take)] for each run of a pack (`take(array)` is the
    run's part of a pack array)."""
    return [(net.run(position), statistics[position],
             lambda array, position=position: array[position])
            for position in range(net.runs)]


def finiteness_sums(arrays, out=None):
    """Row sums of every array (a 1-d array counts as one row), one after another in `out`
    (made if None; its size is the arrays' total number of rows).

    A sum is finite only if every element is (inf and NaN propagate; inf - inf is NaN), so
    finite sums prove everything finite; a non-finite one (or an overflow of finite values)
    calls for a closer look. One reduction per array, each over many rows at once (on a GPU
    one reduction of a whole array would run in one block), no wait for the GPU.
    """
    xp = backend.array_module(arrays[0])
    rows = [array.size // array.shape[-1] if array.ndim > 1 else 1 for array in arrays]
    if out is None:
        out = xp.empty(sum(rows), dtype=arrays[0].dtype)
    start = 0
    with numpy.errstate(over="ignore", invalid="ignore"):
        for array, count in zip(arrays, rows):
            xp.sum(array.reshape(count, -1), axis=1, out=out[start:start + count])
            start += count
    return out


def _first_not_finite(arrays):
    """The index of the first array holding a non-finite value, or None (waits for the GPU)."""
    xp = backend.array_module(arrays[0])
    return next((index for index, array in enumerate(arrays)
                 if not bool(xp.isfinite(array).all())), None)


def check_finite(net, forward, directions, statistics, where, inv_noise=0.0):
    """Raise Diverged unless, for every run of the pack `net`, the output, every layer's
    directions (a dict per layer, as the rules give them) and the statistics (a list, one
    Statistics per run) are finite; Diverged names the runs at fault (its `runs`), each
    message the first layer at fault, `where` and what to try (`advice`, which names the
    learned inverses' noise `inv_noise` where there is some)."""
    faults = {}
    for position, (run, run_statistics, take) in enumerate(runs_of(net, statistics)):
        problem = run_fault(run, list(map(take, forward)),
                            [{name: take(direction) for name, direction in layer.items()}
                             for layer in directions], run_statistics)
        if problem is not None:
            faults[position] = (f"Training diverged at {where}: {problem}. "
                                f"{advice(problem, inv_noise)}")
    if faults:
        raise Diverged("; ".join(faults.values()), runs=faults)


class Fault(str):
    """What `run_fault` found not finite (the text), and whether a learned inverse (V, c) is
    at fault (`inverse`)."""

    inverse: bool

    def __new__(cls, text, inverse=False):
        fault = super().__new__(cls, text)
        fault.inverse = inverse
        return fault


def advice(fault, inv_noise=0.0):
    """What a divergence message advises for `fault` (a Fault; None: W's): when a learned
    inverse's V or c is at fault, a smaller --inv_noise where the inverses learn on noise
    (`inv_noise`, its standard deviation), and a smaller --inv_learning_rate; else a smaller
    --learning_rate or a larger --orthogonal_reg."""
    if getattr(fault, "inverse", False) and inv_noise:
        return (f"The learned inverses learn on noise of standard deviation {inv_noise:g} "
                f"(--inv_noise), which can make them overflow: try a smaller --inv_noise, or a "
                f"smaller --inv_learning_rate, the learning rate of the learned inverses (V and "
                f"c).")
    if getattr(fault, "inverse", False):
        return ("Try a smaller --inv_learning_rate, the learning rate of the learned inverses "
                "(V and c).")
    return ("Try a smaller --learning_rate, or a larger --orthogonal_reg, which keeps the "
            "weights well conditioned.")


def run_fault(net, forward, directions, statistics):
    """What is not finite in one run (`net` a network of its own, the other arguments its
    arrays and Statistics): a Fault, or None.

    One wait for the GPU: the sums of `finiteness_sums`, read together; the arrays are
    looked at one by one only when a sum is not finite.
    """
    xp = backend.array_module(forward[-1])
    sums = finiteness_sums([forward[-1]] + list(net.named(directions).values()))
    latest = [values[-1] for values in statistics.values.values() if values]
    with numpy.errstate(over="ignore", invalid="ignore"):
        total = sums.sum()
    if bool(xp.isfinite(total)) and all(map(math.isfinite, latest)):
        return None
    if _first_not_finite([forward[-1]]) is not None:
        first = _first_not_finite(forward[1:])
        return Fault(f"the output of layer {first} is not finite (its weights, or those below "
                     f"it, overflowed)")
    layers = [[name for name, direction in layer.items()
               if _first_not_finite([direction]) is not None] for layer in directions]
    if any(layers):
        top = max(index for index, names in enumerate(layers) if names)
        layer = net.layers[top]
        if all(name in layer.LEARNED_INVERSE for name in layers[top]):
            # the output is finite, so W is: V or c grew until their own directions overflowed
            keys = ", ".join(layer.parameter_names[name][1] + str(top) for name in layers[top])
            return Fault(f"the update directions of layer {top}'s learned inverse ({keys}) are "
                         f"not finite (its backward weights V or biases c grew too large)",
                         inverse=True)
        if top + 1 == len(net.layers):
            return Fault(f"the update directions of layer {top} are not finite")
        if net.layers[top + 1].learns_inverse:
            return Fault(f"the update directions of layer {top} are not finite (the error "
                         f"passed down through layer {top + 1}'s learned inverse overflowed: "
                         f"its backward weights V or biases c grew too large)", inverse=True)
        return Fault(f"the update directions of layer {top} are not finite (the error passed "
                     f"down through layer {top + 1} overflowed, or its weights are singular "
                     f"and cannot be inverted)")
    if not all(map(math.isfinite, latest)):
        return Fault("the accuracy or loss is not finite")
    return None  # finite values whose sum overflowed: nothing is wrong


def parameter_faults(net, where, inv_noise=0.0):
    """{position: message} of the runs of the pack `net` with a parameter (W, b, and a learned
    inverse's V, c) that is not finite, each message naming the run's first such parameter,
    `where` and what to try (`advice`, with the learned inverses' noise `inv_noise`). A
    step's checks see its outputs and directions, so what its update made is seen by the
    next step; the last step of an epoch has none before the epoch's checkpoint: this check.
    Waits for the GPU (once per parameter array)."""
    faults: dict[int, str] = {}
    for index, layer in enumerate(net.layers):
        for name, (attribute, letter) in layer.parameter_names.items():
            array = getattr(layer, attribute)
            xp = backend.array_module(array)
            finite = backend.to_host(xp.isfinite(array).reshape(len(array), -1).all(axis=1))
            inverse = name in layer.LEARNED_INVERSE
            owner = f"layer {index}'s learned inverse" if inverse else f"layer {index}"
            kind = "weights" if name.endswith("weights") else "biases"
            problem = Fault(f"{letter}{index} (the {kind} of {owner}) is not finite after the "
                            f"step", inverse=inverse)
            for position in numpy.flatnonzero(~finite):
                faults.setdefault(int(position), f"Training diverged at {where}: {problem}. "
                                                 f"{advice(problem, inv_noise)}")
    return faults


def invertible(net):
    """Whether every weight matrix of a (single) network can be inverted."""
    try:
        net.update_inverse_model()
    except numpy.linalg.LinAlgError:
        return False
    return True
