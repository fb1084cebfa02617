"""Measure how fast the package trains and evaluates, against the machine's own limit.

Runs on synthetic inputs of the real shapes (60,000 + 10,000 samples of 784 values,
batches of 60), so it needs no data set and no GPU. For each dtype it prints the
matrix-product rate at the package's sizes, the milliseconds per training step of BP,
GAIT and TP (square network of 4 hidden layers, and the tower), the seconds per
evaluation of both sets, the implied seconds per epoch, and each phase's efficiency:
its floating-point operations (matrix products and LU factorisations) divided by its
time, as a fraction of the matrix-product rate at the sizes that phase uses (a training
step: products of a batch of 60 with a 784 x 784 matrix; an evaluation: a chunk of rows
times a 784 x 784 matrix). Then the peak resident memory of the process.

Steps run as a run trains (`step_runner.StepRunner`): on the host one checked step at a time;
on a GPU queued without waiting, checked every 50 steps, replayed from a CUDA graph. Each
rule runs with the paper's learning rate, and with lambda = 0 and the paper's lambda; GAIT
and TP also with learned inverses (--learn_inv, lambda 0; target: at most 2 BP steps). On a
GPU the step times are set against the targets (1.0 ms float64, 0.8 ms float32; an
evaluation at 80% of the large-product rate), and --profile adds where a step's time goes:
the GPU time of each phase (each captured and replayed as a CUDA graph alone) and the
host's time to queue a step without a graph.

Packs (pack.py): for each of the paper's settings (BP; GAIT, lambda 0.1; TP, lambda 1000)
and each pack size of --packs, the milliseconds per step of the whole pack, the steps per
second of each run in it, the pack step's time over one single run's step (target on a
GPU: at most 2 for a pack of 8 GAIT runs), and the memory each run of the pack holds
(weights, biases, moments, kept inverses; on a GPU also the step's temporaries, from the
memory pool of its CUDA graph).

    ./benchmark.py [--backend auto|numpy|cupy] [--dtype float64 float32] [--profile]
                   [--packs 1 2 4 8 16] [--json FILE]
"""
import argparse
import json
import statistics as stats
import sys
import time
from typing import Any

# backend first: it sets OpenBLAS's thread timeout before NumPy loads OpenBLAS
from gaitprop.arrays import backend
from gaitprop.arrays import products
import numpy
from gaitprop.runs import settings as settings_table
from gaitprop.runs.invocation import typed
from gaitprop.engine import step_runner
from gaitprop.engine import cadence
from gaitprop.engine import faults
from gaitprop.engine import step as training_step
from gaitprop.engine.statistics import Statistics
from gaitprop.model import rules
from gaitprop.model.layer import regularised
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from gaitprop.model.functions import evaluate, one_hot, peak_memory_mb

BATCH, TRAIN, TEST, UNITS = 60, 60000, 10000, 784
EVALS_PER_EPOCH = sum(cadence.evaluates_after(b, 10, 1000) for b in range(1000))
# (name, rule, lambda, learning rate, learned inverses), from the registry of rules: each
# rule with lambda 0 at its paper learning rate (the default one where the paper has none),
# with the paper's lambda where it is not 0, and with learned inverses (--learn_inv, lambda
# 0) where the rule uses inverses (with exact inverses DTP computes TP's step).
DEFAULT_LEARNING_RATE = settings_table.SETTINGS["learning_rate"].default


def learning_rate_of(rule):
    """A rule's learning rate in the paper, else the default one."""
    return (rule.paper or {}).get("learning_rate", DEFAULT_LEARNING_RATE)


def paper_row(rule):
    """The name of a rule's row at the paper's settings: NAME, or NAME lambda=L."""
    reg = rule.paper["orthogonal_reg"]
    return f"{rule.name} lambda={reg:g}" if reg else rule.name


ROWS = tuple([(rule.name, rule.name, 0.0, learning_rate_of(rule), False)
              for rule in rules.REGISTERED]
             + [(paper_row(rule), rule.name, rule.paper["orthogonal_reg"],
                 rule.paper["learning_rate"], False)
                for rule in rules.REGISTERED if rule.paper and rule.paper["orthogonal_reg"]]
             + [(f"{rule.name} learned inv", rule.name, 0.0, learning_rate_of(rule), True)
                for rule in rules.REGISTERED if rule.uses_inverses])
LEARNED_TARGET = 2.0  # a learned-inverse step (lambda 0) costs at most this many BP steps
# {"ms_per_step": {dtype: ms}, "evaluation_efficiency": a fraction of the limit}
GPU_TARGETS: dict[str, Any] = {"ms_per_step": {"float64": 1.0, "float32": 0.8},
                               "evaluation_efficiency": 0.8}
STEPS_PER_ROUND = {"numpy": 10, "cupy": 50}
PACK_ROWS = tuple(paper_row(rule) for rule in rules.REGISTERED if rule.paper)  # the paper's
# The pack target: the paper's setting of the first rule that uses inverses (GAIT, lambda 0.1).
PACK_TARGET = {"row": next(paper_row(rule) for rule in rules.REGISTERED
                           if rule.paper and rule.uses_inverses),
               "size": 8, "times_single_step": 2.0}
REFERENCE = rules.REFERENCE.name  # "x BP": each step over the reference rule's step


def median_seconds(work, repeats, inner=1):
    """Median wall time of `work()` over `repeats` rounds of `inner` calls, per call."""
    work()
    backend.synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            work()
        backend.synchronize()
        times.append((time.perf_counter() - started) / inner)
    return stats.median(times)


def matmul_rates(repeats):
    """GFLOP/s of the products the package runs, by name, in the selected backend and dtype.

    A training step's three shapes on a batch of 60 (forward x @ W, BP's pass-down
    d @ W.T, the gradient x.T @ d) and an evaluation chunk's (rows, 784) @ (784, 784).
    """
    generator = numpy.random.RandomState(0)
    rows = backend.evaluation_rows()
    batch = backend.to_device(generator.rand(BATCH, UNITS))
    errors = backend.to_device(generator.rand(BATCH, UNITS))  # not batch: a.T @ a is half the work
    chunk = backend.to_device(generator.rand(rows, UNITS))
    weights = backend.to_device(generator.rand(UNITS, UNITS))
    products = {"60x784 @ 784x784": (lambda: batch @ weights, BATCH),
                "60x784 @ (784x784).T": (lambda: batch @ weights.T, BATCH),
                "(60x784).T @ 60x784": (lambda: batch.T @ errors, BATCH),
                f"{rows}x784 @ 784x784": (lambda: chunk @ weights, rows)}
    return {name: 2 * size * UNITS * UNITS / 1e9
            / median_seconds(product, repeats, max(1, 20000 // size))
            for name, (product, size) in products.items()}


def step_flops(widths, rule, ortho_weighting=0.0, learned=False):
    """Matrix-product and LU flops of one training step on a batch of 60.

    forward 2 n w^2 and grad_W 2 n w^2 per layer; BP's pass-down d @ W.T and GAIT/TP's
    solves (or products with V) 2 n w^2 per layer above the first; GAIT/TP's LU 2/3 w^3 per
    layer above the first, or with learned inverses the reconstruction u @ V and V's
    direction u.T @ e, 4 n w^2 per layer above the first; the regulariser W W.T
    (symmetric: w^3) and O @ W (2 w^3) when lambda > 0.
    """
    layers = widths[1:]
    flops = sum(4 * BATCH * w * w for w in layers) + sum(2 * BATCH * w * w for w in layers[1:])
    if learned:
        flops += sum(4 * BATCH * w * w for w in layers[1:])
    elif rules.rule(rule).uses_inverses:
        flops += sum(2 * w ** 3 / 3 for w in layers[1:])
    if ortho_weighting:
        flops += sum(3 * w ** 3 for w in layers)
    return flops


def evaluation_flops(widths, nb_samples):
    """Flops of the class outputs of `nb_samples`: 2 n w^2 a layer, 2 n w 10 on top."""
    layers = widths[1:]
    return 2 * nb_samples * (sum(w * w for w in layers[:-1]) + layers[-1] * 10)


def training_batches(count, runs):
    """`count` synthetic batches (images in [0, 1], one-hot labels) as device arrays for a
    pack of `runs` runs, each batch stacked (runs, batch, units), a different one per run."""
    generator = numpy.random.RandomState(1)
    shape = (runs, count * BATCH)
    images = backend.to_device(generator.rand(*shape, UNITS))
    labels = backend.to_device(one_hot(generator.randint(0, 10, numpy.prod(shape))).reshape(
        shape + (10,)))
    return [(images[..., k * BATCH:(k + 1) * BATCH, :], labels[..., k * BATCH:(k + 1) * BATCH, :])
            for k in range(count)]


def time_step(net, settings, repeats):
    """(seconds per training step, runner): rounds of queued steps (on a GPU) or checked
    steps (on the host) on rotating batches, each round ending in a settle; the median.
    `net` is a pack (a single run: a pack of one), `settings` its StepSettings.of_pack."""
    steps = STEPS_PER_ROUND[backend.name()]
    batches = training_batches(steps, net.runs)
    runner = step_runner.StepRunner(net, settings)
    record = [Statistics() for _ in range(net.runs)]
    state = {"batch": 0}

    def round_of_steps():
        for images, labels in batches:
            runner.step(images, labels, record, 0, state["batch"])
            state["batch"] += 1
        runner.settle(record)
    return median_seconds(round_of_steps, repeats) / steps, runner


def time_evaluation(net, repeats):
    """Seconds to evaluate 60,000 + 10,000 samples (both sets, as a run does)."""
    generator = numpy.random.RandomState(2)
    images = backend.to_device(generator.rand(TRAIN + TEST, UNITS))
    labels = backend.xp().asarray(generator.randint(0, 10, TRAIN + TEST))

    def both_sets():
        evaluate(net, images[:TRAIN], labels[:TRAIN])
        evaluate(net, images[TRAIN:], labels[TRAIN:])
    return median_seconds(both_sets, repeats)


def measure(dtype, repeats, profile=False, pack_sizes=()):
    """Every figure for one dtype, as a dict.

    Two limits: `batch_gflops`, the median rate of the three batch-of-60 product shapes,
    bounds a training step; `chunk_gflops`, the rate of an evaluation chunk's product
    (the large-product rate), bounds an evaluation.
    """
    backend.select(backend.name(), backend.device() or 0, dtype)
    rates = matmul_rates(repeats)
    batch_rate = stats.median(list(rates.values())[:3])
    chunk_rate = list(rates.values())[3]
    result = {"dtype": dtype, "matmul_gflops": rates, "batch_gflops": batch_rate,
              "chunk_gflops": chunk_rate, "networks": {}}
    for label, make_net, widths in (
            ("square, 4 hidden",
             lambda learned=False: SquareInvNet(UNITS, 4, 1, True, learn_inverses=learned),
             [UNITS] * 6),
            ("tower", lambda learned=False: TowerInvNet([UNITS, 784, 500, 200, 10], 1, True,
                                                        learn_inverses=learned),
             [UNITS, 784, 500, 200, 10])):
        rows, profiles = {}, {}
        for name, rule, ortho_weighting, learning_rate, learned in ROWS:
            net = InvNet.stack([make_net(learned)])  # a single run: a pack of one
            settings = training_step.StepSettings.of_pack(
                [training_step.StepSettings(rule, learning_rate, ortho_weighting)])
            seconds, runner = time_step(net, settings, repeats)
            flops = step_flops(widths, rule, ortho_weighting, learned)
            rows[name] = {"ms_per_step": seconds * 1e3, "gflop": flops / 1e9,
                          "efficiency": flops / seconds / 1e9 / batch_rate,
                          "redone_steps": runner.redone,
                          "graph_replay_difference": runner.replay.difference}
            if profile and backend.name() == "cupy":
                profiles[name] = profile_step(runner)
        evaluation = time_evaluation(make_net(), max(3, repeats // 2))
        eval_flops = evaluation_flops(widths, TRAIN + TEST)
        for row in rows.values():
            step_s = row["ms_per_step"] / 1e3
            row["s_per_epoch_published"] = 1000 * step_s + EVALS_PER_EPOCH * evaluation
            row["s_per_epoch_interval0"] = 1000 * step_s + evaluation
        bp_seconds, bp_gflop = rows[REFERENCE]["ms_per_step"] / 1e3, rows[REFERENCE]["gflop"]
        result["networks"][label] = {
            "steps": rows, "s_per_evaluation": evaluation,
            "evaluation_efficiency": eval_flops / evaluation / 1e9 / chunk_rate,
            "bp_step_vs_flop_limit": bp_seconds / (bp_gflop / batch_rate),
            "bp_step_vs_chunk_rate": bp_seconds / (bp_gflop / chunk_rate)}
        if profiles:
            result["networks"][label]["profile_ms"] = profiles
    if pack_sizes:
        square = result["networks"]["square, 4 hidden"]["steps"]
        result["packs"] = time_packs(pack_sizes, {name: row["ms_per_step"]
                                                  for name, row in square.items()}, repeats)
    return result


def time_packs(sizes, single_ms, repeats):
    """Per paper setting and pack size: ms per pack step, steps/s per run, the pack step over
    one single run's step (`single_ms`, from the rows above) and MB held per run."""
    figures: dict[str, dict[int, dict[str, Any]]] = {}  # {row name: {pack size: its figures}}
    # Gaussian initialisation (an orthogonal one takes seconds per matrix to draw): the cost
    # of a step does not depend on it
    runs = [SquareInvNet(UNITS, 4, 1 + 10 * run) for run in range(max(sizes))]
    for name, rule, ortho_weighting, learning_rate, _ in ROWS:
        if name not in PACK_ROWS:
            continue
        figures[name] = {}
        for size in sizes:
            net = InvNet.stack(runs[:size])  # copies: each pack starts from the same weights
            settings = training_step.StepSettings.of_pack(
                [training_step.StepSettings(rule, learning_rate, ortho_weighting)] * size)
            seconds, runner = time_step(net, settings, repeats)
            held = sum(array.nbytes for array in runner.net.state().values()) + sum(
                kept.inverse.nbytes for kept in runner.inverses.kept)
            graph = runner.replay.graph
            temporaries = None if graph is None else graph.pool.total_bytes()
            figures[name][size] = {
                "ms_per_pack_step": seconds * 1e3, "steps_per_s_per_run": size / seconds,
                "times_single_step": seconds * 1e3 / single_ms[name],
                "mb_per_run_state": held / size / 2**20,
                "mb_per_run_step_temporaries": (None if temporaries is None
                                                else temporaries / size / 2**20),
                "redone_steps": runner.redone}
    return figures


def profile_step(runner, replays=200):
    """Milliseconds of GPU time of each phase of a queued step of `runner` (each phase
    captured alone as a CUDA graph and replayed), the whole step's graph, and the host's time
    to queue one step without a graph (Python and kernel launches)."""
    net, settings = runner.net, runner.step_settings
    images, labels = training_batches(1, net.runs)[0]
    forward, targets, directions = training_step.rule_directions(net, settings, images, labels)
    solved = [(layer, forward[index + 1][..., :layer.nb_units])
              for index, layer in enumerate(net.layers) if layer.kept_inverse is not None]
    phases = {
        "forward pass": lambda: net.forward_pass(images),
        "directions (all)": lambda: net.directions(settings.algorithm, forward, targets,
                                                   settings.orthogonal_reg,
                                                   **settings.rule_options()),
        "  solves (kept inverses)": lambda: [layer.kept_inverse.solve(layer.weight_matrix, y)
                                             for layer, y in solved],
        "  regulariser": lambda: [layer.orthogonality_gradient(-settings.orthogonal_reg)
                                  for layer in net.layers],
        "checks": lambda: faults.finiteness_sums(
            [forward[-1]] + list(net.named(directions).values()), runner.guard.sums),
        "optimiser": lambda: net.step(directions, settings.learning_rate,
                                      runner.guard.array,
                                      settings.inv_learning_rate),
        "batch tally": lambda: runner.tally.add(forward[-1], labels),
    }
    if not solved:
        del phases["  solves (kept inverses)"]
    if not regularised(settings.orthogonal_reg):
        del phases["  regulariser"]
    milliseconds = {}
    for name, work in phases.items():
        try:
            milliseconds[name] = products.replay_milliseconds(products.Graph.capture(work), replays)
        except Exception as error:  # report and go on: the other phases still tell
            print(f"profile of {name!r} failed: {error!r}", file=sys.stderr)
            milliseconds[name] = None
    if runner.replay.graph is not None:
        milliseconds["whole step (its graph)"] = products.replay_milliseconds(runner.replay.graph,
                                                                            replays)

    def queue_without_graph():
        runner._queued_step(images, labels)
    started = time.perf_counter()
    for _ in range(20):
        queue_without_graph()
    milliseconds["host: queue a step without a graph"] = (time.perf_counter() - started) * 50
    backend.synchronize()
    runner.guard.reset()
    return milliseconds


def print_table(results, on_gpu):
    """The figures as a plain-text table (with the GPU targets and profiles on a GPU)."""
    for result in results:
        dtype = result["dtype"]
        print(f"\n{dtype}: matrix products, GFLOP/s: "
              + ", ".join(f"{name} {rate:.1f}" for name, rate in result["matmul_gflops"].items()))
        print(f"  limits: a training step's products {result['batch_gflops']:.1f} GFLOP/s (median "
              f"of the three batch shapes), an evaluation's {result['chunk_gflops']:.1f} GFLOP/s")
        for label, network in result["networks"].items():
            target = (f" (target: at least {GPU_TARGETS['evaluation_efficiency']:.0%})"
                      if on_gpu else "")
            print(f"  {label}: evaluation of 60,000 + 10,000 samples "
                  f"{network['s_per_evaluation']:.4f} s "
                  f"({network['evaluation_efficiency']:.0%} of its limit{target}); BP step "
                  f"{network['bp_step_vs_flop_limit']:.2f} x its flop limit "
                  f"({network['bp_step_vs_chunk_rate']:.2f} x at the evaluation's rate)")
            step_target = GPU_TARGETS["ms_per_step"][dtype]
            print(f"    {'rule':<17}{'ms/step':>9}{'x BP':>7}{'GFLOP':>8}{'eff.':>7}"
                  f"{'s/epoch (published cadence)':>30}{'s/epoch (interval 0)':>23}"
                  + (f"{'target':>9}{'redone':>8}" if on_gpu else ""))
            bp = network["steps"][REFERENCE]["ms_per_step"]
            for rule, row in network["steps"].items():
                verdict = ("" if not on_gpu else
                           f"{'met' if row['ms_per_step'] <= step_target else 'MISSED':>9}"
                           f"{row['redone_steps']:>8}")
                if rule.endswith("learned inv"):
                    verdict += (f"  target <= {LEARNED_TARGET:g} x BP: "
                                + ("met" if row["ms_per_step"] <= LEARNED_TARGET * bp
                                   else "MISSED"))
                print(f"    {rule:<17}{row['ms_per_step']:>9.3f}{row['ms_per_step'] / bp:>7.2f}"
                      f"{row['gflop']:>8.3f}{row['efficiency']:>7.0%}"
                      f"{row['s_per_epoch_published']:>30.2f}"
                      f"{row['s_per_epoch_interval0']:>23.2f}{verdict}")
            for rule, phases in network.get("profile_ms", {}).items():
                print(f"    profile of {rule} (ms): " + ", ".join(
                    f"{name.strip()} {'failed' if value is None else f'{value:.3f}'}"
                    for name, value in phases.items()))
        if "packs" in result:
            print(f"  packs (square, 4 hidden; a different seed and batch per run): {'size':>5}"
                  f"{'ms/pack step':>14}{'steps/s/run':>13}{'x single step':>15}"
                  f"{'MB/run held':>13}{'MB/run step':>13}{'redone':>8}")
        for name, sizes in result.get("packs", {}).items():
            for size, row in sizes.items():
                temporaries = row["mb_per_run_step_temporaries"]
                verdict = ""
                if on_gpu and (name, size) == (PACK_TARGET["row"], PACK_TARGET["size"]):
                    verdict = (f"  target <= {PACK_TARGET['times_single_step']}: "
                               + ("met" if row["times_single_step"]
                                  <= PACK_TARGET["times_single_step"] else "MISSED"))
                print(f"    {name:<52}{size:>5}{row['ms_per_pack_step']:>14.3f}"
                      f"{row['steps_per_s_per_run']:>13.1f}{row['times_single_step']:>15.2f}"
                      f"{row['mb_per_run_state']:>13.1f}"
                      f"{'-' if temporaries is None else f'{temporaries:.1f}':>13}"
                      f"{row['redone_steps']:>8}{verdict}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=backend.CHOICES, default="auto")
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--dtype", nargs="+", choices=backend.DTYPES,
                        default=list(backend.DTYPES))
    parser.add_argument("--repeats", type=int, default=7, help="rounds per median")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="on a GPU: the time of each phase of each step")
    parser.add_argument("--packs", type=int, nargs="*", metavar="SIZE",
                        help="pack sizes to time (default 1 2 4 8 16 on a GPU, none on the "
                             "host; --packs alone: none)")
    args = parser.parse_args(argv)
    try:
        print(backend.select(args.backend, args.device, args.dtype[0]))
    except backend.BackendError as error:
        sys.exit(f"{typed('benchmark')[0]}: {error}")
    on_gpu = backend.name() == "cupy"
    pack_sizes = args.packs if args.packs is not None else ([1, 2, 4, 8, 16] if on_gpu else [])
    results = [measure(dtype, args.repeats, args.profile, pack_sizes) for dtype in args.dtype]
    print_table(results, on_gpu)
    memory = peak_memory_mb()
    print(f"\npeak resident memory of this process: {memory:.0f} MB (synthetic data of both "
          f"sets, networks, optimiser, chunked evaluation)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"backend": backend.name(), "device": backend.gpu_name(),
                       "dtypes": args.dtype, "targets": GPU_TARGETS if on_gpu else None,
                       "pack_target": PACK_TARGET if on_gpu else None,
                       "results": results, "peak_memory_mb": memory}, file, indent=2)


if __name__ == "__main__":
    main()
