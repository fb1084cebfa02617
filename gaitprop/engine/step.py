"""One training step: its settings (`StepSettings`), the rule's directions on a batch
(`rule_directions`, with the learned inverses' noise: `inverse_noise`), the checked step
itself (`train_step`) and the angle of a rule's directions to BP's (`alignment_with_bp`)."""
import dataclasses
import typing

import numpy

from gaitprop.arrays import backend
from gaitprop.engine.cadence import batch_name
from gaitprop.engine.faults import Diverged, advice, check_finite, invertible, runs_of
from gaitprop.model import rules
from gaitprop.model.functions import angle_degrees
from gaitprop.model.net import output_targets


# A learning rate or lambda of StepSettings: a number (or None) for one run; for a pack
# (`of_pack`) a tuple of one per run, which `on_backend` makes a backend array (NumPy or CuPy,
# of shape (runs, 1, 1)). Any: what it is depends on the settings, not on the type.
PerRun = typing.Any


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a training step needs: the rule (its name in the registry, gaitprop.model.rules),
    the learning rate, lambda of the orthogonal regulariser, every how many batches the
    alignment with BP is logged (0 = never), the learning rate of learned inverses (None:
    the learning rate), the standard deviation of the noise they learn on (0: none), the
    rule's own options ((name, value) pairs; those not given take the rule's defaults), the
    learned inverses' steps a batch and their loss (rules.INVERSE_LOSSES)."""

    algorithm: str
    learning_rate: PerRun
    orthogonal_reg: PerRun = 0.0
    log_alignment: int = 0
    inv_learning_rate: PerRun = None
    inv_noise: float = 0.0
    options: tuple[tuple[str, float], ...] = ()
    inv_steps: int = 1
    inv_loss: str = "reconstruction"

    def __post_init__(self):
        """`options` as every option of the rule, each as given or its default, sorted by
        name (`rule_options_key`): settings that compute the same compare equal."""
        object.__setattr__(self, "options", self.rule_options_key())

    @classmethod
    def of(cls, args):
        """The step settings of run.py's parsed arguments (its settings of these names; where
        one is None, the rule's default, rules.defaults: its options, its learned inverses'
        training, an --inv_learning_rate of its factor times --learning_rate, None for 1)."""
        rule = rules.rule(args.algorithm)
        # the rule's way of training learned inverses, where it learns them
        training = rule.inverse_training if args.learn_inv else rules.InverseTraining()
        given = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)
                 if field.name != "options"}
        for name in rules.INVERSE_TRAINING:
            if given[name] is None:
                given[name] = getattr(training, name)
        factor = training.rate_factor
        if given["inv_learning_rate"] is None and factor != 1:
            given["inv_learning_rate"] = factor * args.learning_rate
        options = rules.resolved_options(rule, vars(args))
        return cls(**given, options=tuple(options.items()))

    @property
    def inverse_learning_rate(self):
        """The learning rate of the learned inverses: inv_learning_rate, else learning_rate."""
        return self.learning_rate if self.inv_learning_rate is None else self.inv_learning_rate

    @classmethod
    def of_pack(cls, settings):
        """The settings of a pack from its runs' settings (one rule, alignment cadence, rule
        options and inverses' noise; lambda zero for all runs or for none): a learning rate
        (of the weights and of the inverses) and lambda per run, tuples."""
        algorithms = {(each.algorithm, each.log_alignment, each.rule_options_key(),
                       each.inv_noise, each.inv_steps, each.inv_loss, each.orthogonal_reg == 0)
                      for each in settings}
        if len(algorithms) > 1:
            raise ValueError(f"the runs of a pack must share the rule, the alignment cadence, "
                             f"the rule's options, the inverses' noise, steps and loss and "
                             f"whether lambda is zero, not {sorted(algorithms)}")
        first = settings[0]
        return cls(first.algorithm, tuple(each.learning_rate for each in settings),
                   tuple(each.orthogonal_reg for each in settings), first.log_alignment,
                   tuple(each.inverse_learning_rate for each in settings),
                   first.inv_noise, first.rule_options_key(), first.inv_steps, first.inv_loss)

    def select(self, positions):
        """A pack's settings for the runs at `positions`."""
        return dataclasses.replace(
            self, learning_rate=tuple(self.learning_rate[p] for p in positions),
            orthogonal_reg=tuple(self.orthogonal_reg[p] for p in positions),
            inv_learning_rate=tuple(self.inv_learning_rate[p] for p in positions))

    def on_backend(self):
        """A pack's settings (`of_pack`) as a step uses them: the per-run learning rates and
        lambdas as backend arrays of shape (runs, 1, 1) (lambda 0.0 when it is zero for every
        run)."""
        def per_run(values):
            return backend.to_device(numpy.asarray(values, dtype=float).reshape(-1, 1, 1))
        return dataclasses.replace(
            self, learning_rate=per_run(self.learning_rate),
            inv_learning_rate=per_run(self.inv_learning_rate),
            orthogonal_reg=per_run(self.orthogonal_reg) if any(self.orthogonal_reg) else 0.0)

    def rule_options(self):
        """The keyword arguments of the rule beyond lambda: its own options (GAIT's gamma),
        each as given, else the rule's default."""
        return rules.resolved_options(rules.rule(self.algorithm), dict(self.options))

    def rule_options_key(self):
        """`rule_options` as sorted (name, value) pairs: equal for runs of equal options."""
        return tuple(sorted(self.rule_options().items()))


def inverse_noise(net, settings, epoch, batch_index, rows):
    """The noise the learned inverses of the pack `net` learn on at one step (`inv_noise`
    > 0): for each of the inverses' `inv_steps` steps on the batch, per learned inverse, an
    array (runs, rows, its width) of N(0, inv_noise**2) values (a flat tuple, step by
    step), run k's drawn on the host from numpy.random.default_rng([seed_k, epoch,
    batch_index]) (seed_k: its first layer's seed), step by step, inverse by inverse, bottom
    to top; so a resumed run draws what it would have drawn, and a pack's run what it would
    draw alone. () without noise."""
    widths = net.learned_inverse_widths()
    if not settings.inv_noise or not widths:
        return ()
    draws = []
    for seed in net.layers[0].seed:
        generator = numpy.random.default_rng([seed or 0, epoch, batch_index])
        draws.append([generator.standard_normal((rows, width)) * settings.inv_noise
                      for _ in range(settings.inv_steps) for width in widths])
    return tuple(backend.to_device(numpy.stack(layer)) for layer in zip(*draws))


def rule_directions(net, settings, images, one_hot_labels, noise=(), check=None):
    """(forward, targets, directions: a dict per layer) of the settings' rule on one
    batch: the forward pass, the full-width output target, and the rule's directions with
    those of the learned inverses (InvNet.add_inverse_directions, down `inv_loss`, on
    `noise`: `inverse_noise`).

    With `inv_steps` = K > 1 the learned inverses first take K - 1 steps of their own on the
    batch (each on its own noise; `check(forward, their directions)` before each, where
    given), so that the rule's directions pass through the improved inverses; their K-th
    step is in the directions returned, taken with the forward weights' step.
    """
    forward = net.forward_pass(images)
    targets = output_targets(forward[-1], one_hot_labels)
    count = len(noise) // settings.inv_steps
    steps_noise = [noise[step * count:(step + 1) * count] for step in range(settings.inv_steps)]
    for step_noise in steps_noise[:-1]:
        own: list[dict] = [{} for _ in net.layers]
        net.add_inverse_directions(forward, own, step_noise, settings.inv_loss)
        if check is not None:
            check(forward, own)
        net.step(own, settings.learning_rate, inverse_learning_rate=settings.inv_learning_rate)
    directions = net.directions(settings.algorithm, forward, targets, settings.orthogonal_reg,
                                **settings.rule_options())
    net.add_inverse_directions(forward, directions, steps_noise[-1], settings.inv_loss)
    return forward, targets, directions


def train_step(net, settings, images, one_hot_labels, statistics, epoch, batch_index):
    """One training step on one batch: forward pass, the rule's directions, the update.

    Raises Diverged, before anything reaches the weights or the logs, if the output or a
    direction is not finite or a weight matrix is singular; then logs the alignment with BP
    and the learned inverses' quality when due (one row per run and batch, only for a step
    that passed its checks).
    `net` is a pack (of one run or more; `settings` of StepSettings.of_pack, on_backend();
    `statistics` a list, one Statistics per run), checked run by run. Waits for the GPU
    once per run (the checks); `StepRunner` queues steps without waiting.
    """
    where = batch_name(epoch, batch_index)
    # the inverses' own steps (inv_steps > 1) change V and c before the checks of the step:
    # a step that fails them leaves the network as it found it (a pack redoes it without
    # the runs at fault)
    before = ({key: array.copy() for key, array in net.state().items()}
              if settings.inv_steps > 1 else None)
    try:
        forward, targets, directions = rule_directions(
            net, settings, images, one_hot_labels,
            inverse_noise(net, settings, epoch, batch_index, images.shape[-2]),
            lambda forward, own: check_finite(net, forward, own, statistics, where,
                                              settings.inv_noise))
        check_finite(net, forward, directions, statistics, where, settings.inv_noise)
    except numpy.linalg.LinAlgError as error:
        restore(net, before)
        message = (f"Training diverged at {where}: a layer's weights are singular and cannot "
                   f"be inverted ({error}). {advice(None)}")
        runs = runs_of(net, statistics)
        # the runs whose weights are singular; all of them if none alone is (never a retry
        # without a run taken out)
        faults = {position: message for position, (run, _, _) in enumerate(runs)
                  if not invertible(run)}
        raise Diverged(message, faults or dict.fromkeys(range(len(runs)), message)) from None
    except Diverged:
        restore(net, before)
        raise
    if settings.log_alignment and batch_index % settings.log_alignment == 0:
        for run, run_statistics, take in runs_of(net, statistics):
            run_forward = list(map(take, forward))
            run_statistics.alignment.append([epoch, batch_index] + alignment_with_bp(
                run, settings, run_forward, take(targets)))
            if run.learn_inverses:
                reconstruction, distance = zip(*run.inverse_quality(run_forward))
                run_statistics.inverse_quality.append([epoch, batch_index, *reconstruction,
                                                       *distance])
    net.step(directions, settings.learning_rate,
             inverse_learning_rate=settings.inv_learning_rate)
    return forward


def restore(net, state):
    """Put back a network's state saved before a step (`net.state()` copies), if saved."""
    if state is not None:
        net.set_state(state)


def alignment_with_bp(net, settings, forward, targets):
    """Angle (degrees) per layer between the rule's weight directions and BP's on one batch.

    Both without the regulariser (lambda = 0), so that the angle compares the error signals.
    """
    directions = net.directions(settings.algorithm, forward, targets, **settings.rule_options())
    reference = net.directions(rules.REFERENCE, forward, targets)
    return [angle_degrees(layer["weights"], bp["weights"])
            for layer, bp in zip(directions, reference)]
