"""The guard of queued steps (guard.py), its update run on the host: steps counted, the first
failure and its kind kept."""
import numpy

from gaitprop.engine import guard


def test_guard_on_the_host_counts_steps_and_keeps_the_first_failure():
    state = numpy.array([0, -1, 0])
    bounds = numpy.array([0.5, 0.25])
    for sums, bound in (([1.0, 2.0], 0.5), ([1.0, 2.0], 0.5), ([1.0, numpy.nan], 0.5),
                        ([1.0, 2.0], 2.0), ([1.0, 2.0], 0.5)):
        bounds[1] = bound
        guard._UPDATE_GUARD(numpy.array(sums), 2, bounds, 2, 1.0, state)
    assert list(state) == [5, 2, guard.SUMS_NOT_FINITE]
    state[:] = [0, -1, 0]
    guard._UPDATE_GUARD(numpy.array([1.0]), 1, numpy.array([2.0]), 1, 1.0, state)
    assert list(state) == [1, 0, guard.SOLVE_NOT_EXACT]  # a bound above the tolerance
    state[:] = [0, -1, 0]
    guard._UPDATE_GUARD(numpy.array([1e308, 1e308]), 2, bounds, 2, 1.0, state)
    assert list(state) == [1, -1, 0]  # finite sums whose total overflows pass
    guard._UPDATE_GUARD(numpy.array([numpy.inf]), 1, numpy.array([numpy.nan]), 1, 1.0, state)
    assert list(state) == [2, 1, guard.SUMS_NOT_FINITE | guard.SOLVE_NOT_EXACT]
