"""Invertible multilayer networks and the per-layer update their learning rules share
(their parameters, packs and optimiser step: parameters.NetParameters; the rules:
gaitprop.model.rules).

A network is a stack of square `InvLayer`s; layer l reads the first `width_l` units of
the activity h_l below it (all of them in a square network; the rest are "auxiliary").
The learning rules differ only in how an error is passed from a layer's output down to its
input (rules.Rule.error_below); the per-layer update they share is `InvNet.directions`.

`InvNet.stack` makes a pack: several runs of one network shape trained as one, every array
with a leading run axis (activities (runs, rows, units)); the formulas are the same.
"""

from typing import Any

from gaitprop.arrays import backend
from gaitprop.model import rules
from gaitprop.model.layer import InvLayer, regularised
from gaitprop.model.parameters import NetParameters
from gaitprop.model.functions import NB_CLASSES
from gaitprop.model.published import PublishedNet
from gaitprop.model.rules import bp, gait, tp


def output_targets(output, one_hot_labels):
    """The full-width output target: one-hot labels in the first 10 units, the output elsewhere."""
    targets = output.copy()
    targets[..., :one_hot_labels.shape[-1]] = one_hot_labels
    return targets


class InvNet(NetParameters, PublishedNet):
    """Layers of widths `widths[1:]` on an input of width `widths[0]`, seeds given per layer.

    `learn_inverses`: the layers whose inverses the rules use (all but the first) learn them
    (InvLayer.learns_inverse), starting exact or, if not `exact_start`, as drawn.
    `layer_options`: the published keywords every layer takes (transfer_func,
    transfer_derivative_func, transfer_inverse_func, adaptive; see InvLayer).
    """

    layers: list[InvLayer]

    def __init__(self, widths, seeds, orthogonal_init=False, linear=False, learn_inverses=False,
                 exact_start=True, **layer_options):
        for below, width in zip(widths, widths[1:]):
            if width > below:
                raise ValueError(f"a layer of {width} units cannot read an activity of "
                                 f"{below} units: widths {widths} must not increase")
        self.widths = list(widths)
        self.linear = linear
        self.learn_inverses = learn_inverses
        self.layers = [InvLayer(width, seed=seed, orthogonal_init=orthogonal_init, linear=linear,
                                learns_inverse=learn_inverses and index > 0,
                                exact_start=exact_start, **layer_options)
                       for index, (width, seed) in enumerate(zip(widths[1:], seeds))]
        self.optimizer = None
        self.runs = None  # the number of runs of a pack (`stack`), None for a single run
        self.rule_arrays = {}  # arrays a rule keeps for this network (NetParameters)

    def _inputs(self, index, activity):
        """x_l: the first width_l units of h_l, the part that layer `index` reads."""
        return activity[..., :self.layers[index].nb_units]

    def forward_pass(self, x):
        """[h_0, h_1, ..., h_L] with h_0 = x and h_{l+1} = layer_l.forward(x_l)."""
        activities = [x]
        for index, layer in enumerate(self.layers):
            activities.append(layer.forward(self._inputs(index, activities[-1])))
        return activities

    def class_outputs(self, x, nb_classes=NB_CLASSES):
        """The first `nb_classes` units of h_L, computing only those columns of the top layer."""
        activity = x
        for index, layer in enumerate(self.layers):
            top = index == len(self.layers) - 1
            activity = layer.forward(self._inputs(index, activity), nb_classes if top else None)
        return activity

    @staticmethod
    def _widen(part, activity):
        """`part` on the units a layer reads, padded with zeros to the width of `activity`."""
        if part.shape[-1] == activity.shape[-1]:
            return part
        xp = backend.array_module(activity)
        full = xp.zeros_like(activity)
        full[..., :part.shape[-1]] = part
        return full

    def directions(self, rule, forward, targets, ortho_weighting=0.0, **options):
        """The update directions of learning rule `rule` (a name or a rules.Rule), from the
        top down: a list with a dict per layer, {parameter name: direction}
        (InvLayer.directions). The per-layer update the rules share:

        e_L = h_L - t, or the rule's `output_error` of it. For layer l: d = g(h_{l+1}) *
        e_{l+1}; grad_W = x_l.T @ d / n (+ lambda dR/dW); grad_b = mean(d);
        e_l = rule.error_below(net, passing, **options) (how the rule passes the error
        down: rules.Passing) on the units layer l reads, zero on the auxiliary units.
        `options`: the rule's own (GAIT's gamma), defaults where not given. The
        regulariser's gradients depend on the weights alone: on a GPU they are computed on
        a second stream while the errors are passed down, and added at the end. In a pack,
        `ortho_weighting` may hold one lambda per run (an array of shape (runs, 1, 1)).
        """
        rule = rules.rule(rule)
        options = rules.resolved_options(rule, options)
        nb_layers = len(self.layers)
        directions: list[Any] = [None] * nb_layers  # a dict per layer, made from the top down
        with backend.Branch(enabled=regularised(ortho_weighting)) as regularising:
            regularisers = [layer.orthogonality_gradient(-ortho_weighting)
                            for layer in self.layers] if regularised(ortho_weighting) else []
        errors = forward[-1] - targets
        if rule.output_error is not None:
            errors = rules.call(rule.output_error, errors, options=options)
        top_local_errors = None
        for index in reversed(range(nb_layers)):
            layer = self.layers[index]
            inputs, outputs = self._inputs(index, forward[index]), forward[index + 1]
            local_errors = layer.derivative_times(outputs, errors)
            if top_local_errors is None:
                top_local_errors = local_errors
            directions[index] = layer.directions(inputs, local_errors)
            if index:
                passing = rules.Passing(index, inputs, outputs, errors, local_errors,
                                        top_local_errors)
                errors = self._widen(rules.call(rule.error_below, self, passing,
                                                options=options), forward[index])
        regularising.join()
        for layer_directions, regulariser in zip(directions, regularisers):
            layer_directions["weights"] += regulariser
        return directions

    @staticmethod
    def weights_and_biases(directions):
        """(weight_directions, bias_directions), the published scripts' form, of a rule's
        directions by name (a dict per layer): two lists indexed like `layers`."""
        return ([layer["weights"] for layer in directions],
                [layer["biases"] for layer in directions])

    def get_backprop_updates(self, forward, targets, ortho_weighting=0.0):
        """The published API: BP's `directions` as (weight_directions, bias_directions)."""
        return self.weights_and_biases(self.directions(bp.RULE, forward, targets,
                                                       ortho_weighting))

    def get_gait_updates(self, forward, targets, ortho_weighting=0.0, gamma=gait.GAMMA):
        """The published API: GAIT's `directions` as (weight_directions, bias_directions)."""
        return self.weights_and_biases(self.directions(gait.RULE, forward, targets,
                                                       ortho_weighting, gamma=gamma))

    def get_tp_updates(self, forward, targets, ortho_weighting=0.0):
        """The published API: TP's `directions` as (weight_directions, bias_directions)."""
        return self.weights_and_biases(self.directions(tp.RULE, forward, targets,
                                                       ortho_weighting))

    def update_parameters(self, weight_directions, bias_directions, learning_rate):
        """The published API: one optimiser step (`step`) along weight and bias directions
        given as two lists indexed like `layers` (W and b only; learned inverses keep V and
        c); with layers made `adaptive=False`, the published plain step W += lr * direction."""
        if not all(layer.adaptive for layer in self.layers):
            for layer, weights, biases in zip(self.layers, weight_directions, bias_directions):
                layer.update_weights(weights, learning_rate)
                layer.update_biases(biases, learning_rate)
            return
        self.step([{"weights": weights, "biases": biases}
                   for weights, biases in zip(weight_directions, bias_directions)],
                  learning_rate)

    def learned_inverse_widths(self):
        """The widths of the units each learned inverse reconstructs (the layers that learn
        one, bottom to top): the shapes of their `noise` in `add_inverse_directions`."""
        return [layer.nb_units for layer in self.layers if layer.learns_inverse]

    def add_inverse_directions(self, forward, directions, noise=(), loss="reconstruction"):
        """Add to a rule's directions (a dict per layer) the directions of each learned
        inverse down its `loss` (rules.INVERSE_LOSSES), from the forward pass `forward` made
        before the update; in place. "reconstruction" (InvLayer.inverse_directions):
        L = mean_n 1/2 |backward(h_{l+1}) - x_l|^2, or with `noise` (one array per learned
        inverse, shaped as the units it reconstructs) on corrupted activities, as DTP's:
        x~ = x_l + noise, L = mean_n 1/2 |backward(forward(x~)) - x~|^2. "difference"
        (InvLayer.difference_inverse_directions) compares the inverse's difference at x_l +
        noise and x_l with the noise."""
        learned = [index for index, layer in enumerate(self.layers) if layer.learns_inverse]
        for position, index in enumerate(learned):
            layer, inputs = self.layers[index], self._inputs(index, forward[index])
            if loss == "difference":
                directions[index].update(layer.difference_inverse_directions(noise[position]))
                continue
            outputs = forward[index + 1]
            if len(noise):
                inputs = inputs + noise[position]
                outputs = layer.forward(inputs)
            directions[index].update(layer.inverse_directions(inputs, outputs))

    def inverse_quality(self, forward):
        """Per learned inverse, in layer order: (reconstruction error, distance to the exact
        inverse) on the batch of `forward` (InvLayer.inverse_quality); a single run's."""
        return [layer.inverse_quality(self._inputs(index, forward[index]), forward[index + 1])
                for index, layer in enumerate(self.layers) if layer.learns_inverse]

    def update_inverse_model(self):
        """Make every inverse exact for the current weights: check that each W can be
        inverted (numpy.linalg.LinAlgError if not) and reset the kept inverses."""
        for layer in self.layers:
            layer.update_inverse()

    def keep_inverses(self, keep=True):
        """Solve against kept inverses (`inv_layer.KeptInverse`) in the layers the rules invert
        (all but the first), or by LU solves again (keep=False)."""
        for layer in self.layers[1:]:
            layer.keep_inverse(keep)

class TowerInvNet(InvNet):
    """Layers of widths net_structure[1:] on inputs of width net_structure[0]; layer k has
    seed start_seed + k."""

    def __init__(self, net_structure, start_seed=None, orthogonal_init=False, linear=False,
                 learn_inverses=False, exact_start=True, **layer_options):
        nb_layers = len(net_structure) - 1
        seeds = [None if start_seed is None else start_seed + k for k in range(nb_layers)]
        super().__init__(net_structure, seeds, orthogonal_init, linear, learn_inverses,
                         exact_start, **layer_options)


class SquareInvNet(InvNet):
    """`nb_hidden_layers` hidden layers and an output layer, all `nb_units` wide.

    Hidden layer k has seed start_seed + k; the output layer reuses the seed of the last
    hidden layer (start_seed when there is none), as published.
    """

    def __init__(self, nb_units, nb_hidden_layers, start_seed=None, orthogonal_init=False,
                 linear=False, learn_inverses=False, exact_start=True, **layer_options):
        offsets = list(range(nb_hidden_layers)) + [max(nb_hidden_layers - 1, 0)]
        seeds = [None if start_seed is None else start_seed + k for k in offsets]
        super().__init__([nb_units] * (nb_hidden_layers + 2), seeds, orthogonal_init, linear,
                         learn_inverses, exact_start, **layer_options)
