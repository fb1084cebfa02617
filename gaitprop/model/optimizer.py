"""The optimiser of the published scripts: Adam-like steps without bias correction, one pair
of moments per parameter array, kept by the parameter's name."""
import copy

import numpy

from gaitprop.arrays import backend


def _moment_step_on_host(u, learning_rate, p, m, v, scratch):
    """The update of one block of rows, in place, with two scratch arrays of its shape."""
    first, second = scratch[0], scratch[1]
    m *= 0.9
    numpy.multiply(u, 0.1, out=first)
    m += first
    v *= 0.99
    numpy.multiply(u, u, out=first)
    first *= 0.01
    v += first
    numpy.sqrt(v, out=first)
    first += 1e-8
    numpy.multiply(m, learning_rate, out=second)
    second /= first
    p += second


_MOMENT_UPDATE = ("m = m * (T)0.9 + u * (T)0.1; v = v * (T)0.99 + u * u * (T)0.01; "
                  "p = p + m * lr / (sqrt(v) + (T)1e-8)")
# On a GPU: one kernel per parameter array. The guarded kernel updates nothing once a step
# of the guard's window has failed its checks (guard[1] >= 0): see step_runner.StepRunner.
_MOMENT_STEP = backend.Fused(None, "T u, T lr", "T p, T m, T v", _MOMENT_UPDATE, "moment_step")
_GUARDED_MOMENT_STEP = backend.Fused(None, "T u, T lr, raw int64 guard", "T p, T m, T v",
                                     f"if (guard[1] < 0) {{ {_MOMENT_UPDATE}; }}",
                                     "guarded_moment_step")


class MomentOptimizer:
    """Adam-like steps without bias correction, one pair of moments per parameter array,
    both keyed by the parameter's name in the network (W0, b0, W1, ...).

    m = 0.9 m + 0.1 u;  v = 0.99 v + 0.01 u**2;  p = p + lr * m / (1e-8 + sqrt(v)).
    In place: on the host block by block of rows (`backend.block_rows`), so that the
    several passes of each block run in cache; on a GPU one kernel per array. Both are
    bit-identical to the formula written as one line.
    """

    def __init__(self, parameters):
        self.first_moments = {name: backend.array_module(p).zeros_like(p)
                              for name, p in parameters.items()}
        self.second_moments = {name: backend.array_module(p).zeros_like(p)
                               for name, p in parameters.items()}

    def step(self, parameters, directions, learning_rates, guard=None):
        """Apply one step to every parameter array ({name: array}) that has a direction of the
        same name (those without one, and their moments, stay as they are), with the learning
        rate of that name (`learning_rates`), in place.

        Host: blocks shared among threads (`backend.in_shares`), each block's passes in that
        thread's own scratch. `guard` (see step_runner.StepRunner): skip the step if the
        guard's window has failed. A learning rate is a number, or for a pack's arrays (a
        leading run axis) one rate per run (an array of shape (runs, 1, 1)): each run's arrays
        then take a step of their own with their rate, as a single run's.
        """
        first = next(iter(parameters.values()))
        xp = backend.array_module(first)
        arrays = [(parameters[name], directions[name], self.first_moments[name],
                   self.second_moments[name], learning_rates[name]) for name in parameters
                  if name in directions]
        if xp is not numpy:
            for p, u, m, v, rate in arrays:
                rates = (rate.reshape((-1,) + (1,) * (p.ndim - 1)) if numpy.ndim(rate) > 0
                         else p.dtype.type(rate))
                if guard is None:
                    _MOMENT_STEP(u, rates, p, m, v)
                else:
                    _GUARDED_MOMENT_STEP(u, rates, guard, p, m, v)
            return
        if guard is not None and guard[1] >= 0:
            return
        arrays = [(p[run], u[run], m[run], v[run], run_rate)
                  if numpy.ndim(rate) > 0 else (p, u, m, v, rate)
                  for p, u, m, v, rate in arrays
                  for run, run_rate in enumerate(numpy.ravel(rate))]
        blocks = [block + (rate,) for p, u, m, v, rate in arrays
                  for block in zip(*map(backend.row_blocks, (p, u, m, v)))]

        def step_blocks(share):
            largest = max(block[0].size for block in share)
            scratch = numpy.empty((2, largest), dtype=first.dtype)
            for p, u, m, v, rate in share:
                _moment_step_on_host(u, rate, p, m, v,
                                     scratch[:, :p.size].reshape((2,) + p.shape))

        backend.in_shares(blocks, step_blocks)

    @classmethod
    def stack(cls, optimizers, parameters):
        """The optimiser of a pack from its runs' optimisers (None: a run before its first
        step, whose moments are zero), for the pack's stacked `parameters`."""
        pack = cls(parameters)
        for run, optimizer in enumerate(optimizers):
            if optimizer is not None:
                for stacked, moments in ((pack.first_moments, optimizer.first_moments),
                                         (pack.second_moments, optimizer.second_moments)):
                    for name, moment in moments.items():
                        stacked[name][run] = moment
        return pack

    def run(self, index):
        """The optimiser of run `index` of a pack: views of the pack's moments."""
        single = copy.copy(self)
        single.first_moments = {name: m[index] for name, m in self.first_moments.items()}
        single.second_moments = {name: v[index] for name, v in self.second_moments.items()}
        return single

    def state(self):
        """{"mW0": ..., "vW0": ..., "mb0": ...}: the moments of each parameter, m or v before
        its name (the arrays themselves)."""
        state = {}
        for name in self.first_moments:
            state["m" + name], state["v" + name] = (self.first_moments[name],
                                                    self.second_moments[name])
        return state

    @staticmethod
    def stored_moments(state, parameters):
        """{(letter, name): array} of the moments m and v of every parameter ({name: array},
        in order) found in `state` (by name, mW0, or by position, m0), each checked against
        its parameter's shape: ValueError naming the first that is missing or of another."""
        moments = {}
        for position, (name, parameter) in enumerate(parameters.items()):
            for letter in ("m", "v"):
                stored = state.get(letter + name, state.get(f"{letter}{position}"))
                if stored is None or stored.shape != parameter.shape:
                    found = "missing" if stored is None else f"of shape {stored.shape}"
                    raise ValueError(f"the moment {letter}{name} is {found}, not of the "
                                     f"shape {parameter.shape} of {name}")
                moments[letter, name] = stored
        return moments

    def set_state(self, state):
        """Copy moments named as in `state()` (host or device arrays) into this optimiser's
        arrays, in place (`backend.copied_into`), each checked against its parameter's shape
        (ValueError naming it otherwise, with nothing changed). Checkpoints
        of earlier versions named the moments by position (m0, v0, m1, ... in the order of
        the parameters W0, b0, W1, ...): those names are read too."""
        moments = self.stored_moments(state, self.first_moments)
        for (letter, name), stored in moments.items():
            own = self.first_moments if letter == "m" else self.second_moments
            own[name] = backend.copied_into(own[name], stored)
