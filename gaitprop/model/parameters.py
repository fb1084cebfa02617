"""Parameters by name: what a layer (`LayerParameters`) and a network (`NetParameters`) do
with their arrays apart from what they compute. A layer names its arrays in
`parameter_names` ({name: (attribute, checkpoint letter)}); everything here goes by those
names: stacking the runs of a pack along a leading axis and viewing one run of it, the
state a checkpoint holds, the parameter files, and the optimiser's step."""
import copy
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy

from gaitprop.arrays import backend
from gaitprop.model.optimizer import MomentOptimizer
from gaitprop.model.parameter_files import parameter_file, parameter_prefix


class LayerParameters:
    """A layer's parameter arrays by name (`parameter_names`, set by the layer), and the
    attributes a pack or a run's view does not share (`TRANSIENT`, made None)."""

    TRANSIENT: ClassVar[tuple[str, ...]] = ()
    # Set by the layer: the parameters of a learned inverse among its parameter_names, its
    # width, its seed (an int or None; a pack's list of its runs' seeds) and the number of
    # runs of a pack (None for a single run).
    LEARNED_INVERSE: ClassVar[dict[str, tuple[str, str]]]
    parameter_names: dict[str, tuple[str, str]]
    nb_units: int
    seed: Any
    runs: int | None

    @classmethod
    def stack(cls, layers):
        """The layer of a pack: the same layer of several runs (all of one width and transfer),
        each parameter stacked along a leading run axis (copies; no `TRANSIENT` state)."""
        pack = copy.copy(layers[0])
        pack.seed = [layer.seed for layer in layers]
        for attribute, _ in pack.parameter_names.values():
            arrays = [getattr(layer, attribute) for layer in layers]
            setattr(pack, attribute, backend.array_module(arrays[0]).stack(arrays))
        for attribute in pack.TRANSIENT:
            setattr(pack, attribute, None)
        pack.runs = len(layers)
        return pack

    def run(self, index):
        """The layer of run `index` of a pack, whose parameters are views of the pack's arrays
        (what it computes and saves is that run's; no `TRANSIENT` state)."""
        single = copy.copy(self)
        single.seed = self.seed[index]
        for attribute, _ in self.parameter_names.values():
            setattr(single, attribute, getattr(self, attribute)[index])
        for attribute in self.TRANSIENT:
            setattr(single, attribute, None)
        single.runs = None
        return single

    def state(self):
        """{name: array} of this layer's parameters (the arrays themselves), in the order of
        `parameter_names`: {"weights": W, "biases": b} (then V and c)."""
        return {name: getattr(self, attribute)
                for name, (attribute, _) in self.parameter_names.items()}

    def check_state(self, state):
        """ValueError naming the parameters of `state` ({name: array}, every name of this
        layer's) whose shapes are not those of this layer's arrays; nothing changed."""
        wrong = [f"{name} of shape {state[name].shape}, not {getattr(self, attribute).shape}"
                 for name, (attribute, _) in self.parameter_names.items()
                 if state[name].shape != getattr(self, attribute).shape]
        if wrong:
            raise ValueError(f"{'; '.join(wrong)}: not those of this {self.nb_units}-unit "
                             f"layer")

    def set_state(self, state):
        """Set every parameter from host or device arrays of the shapes they have, copied into
        the parameter's own array (`backend.copied_into`: a captured CUDA graph stays valid;
        a run's view of a pack writes into the pack); ValueError naming the parameters
        otherwise, with nothing changed (`check_state`); then `parameters_set()`."""
        self.check_state(state)
        for name, (attribute, _) in self.parameter_names.items():
            setattr(self, attribute, backend.copied_into(getattr(self, attribute), state[name]))
        self.parameters_set()

    def parameters_set(self):
        """What follows new parameter arrays from outside (`set_state`): nothing here."""

    def save_params(self, prefix):
        """Write `prefix + name + ".npy"` of each parameter (host NumPy arrays)."""
        for name, array in self.state().items():
            numpy.save(prefix + name + ".npy", backend.to_host(array))

    def load_params(self, prefix):
        """Read the files of `save_params` (no pickles)."""
        try:
            self.set_state({name: numpy.load(prefix + name + ".npy", allow_pickle=False)
                            for name in self.parameter_names})
        except ValueError as error:
            files = " / ".join(f"{prefix}{name}.npy" for name in self.parameter_names)
            raise ValueError(f"{files}: {error}") from None


class NetParameters:
    """A network's parameters (its `layers`' LayerParameters, W0, b0, W1, ... by checkpoint
    name), its optimiser (`optimizer`, a MomentOptimizer made at the first step), packs of
    networks and views of their runs.

    `rule_arrays`: arrays a learning rule keeps for the network by a key of its own (fixed
    random feedback matrices drawn from the layers' seeds): not parameters (never trained,
    saved or checkpointed: the rule makes them again from the seeds), with the network's run
    axis in a pack; a pack starts without them, a run's view of a pack sees its run's part.
    """

    # Set by the network: its layers, its optimiser (None before the first step), the
    # number of runs of a pack (None for a single run) and the rules' arrays.
    layers: Sequence[LayerParameters]
    optimizer: MomentOptimizer | None
    runs: int | None
    rule_arrays: dict[Any, Any]

    @classmethod
    def stack(cls, nets):
        """A pack: the runs `nets` (of one network shape and transfer) as one network whose
        arrays (weights, biases, moments) are theirs stacked along a leading run axis. Each
        product of a step is then one batched product; run k's results are what net k alone
        would compute (bit for bit on NumPy). The arrays are copies."""
        shapes = {(tuple(net.widths), net.linear, net.learn_inverses) for net in nets}
        if len(shapes) > 1:
            raise ValueError(f"the runs of a pack must share widths, transfer and whether they "
                             f"learn inverses, not {shapes}")
        pack = copy.copy(nets[0])
        pack.layers = [type(layers[0]).stack(layers)
                       for layers in zip(*(net.layers for net in nets))]
        pack.runs = len(nets)
        pack.rule_arrays = {}
        pack.optimizer = None
        if any(net.optimizer is not None for net in nets):
            pack.optimizer = MomentOptimizer.stack([net.optimizer for net in nets],
                                                   pack.parameters())
        return pack

    def run(self, index):
        """Run `index` of a pack as a network of its own whose arrays are views of the pack's
        (evaluating, saving or checkpointing it reads that run's state)."""
        single = copy.copy(self)
        single.layers = [layer.run(index) for layer in self.layers]
        single.optimizer = None if self.optimizer is None else self.optimizer.run(index)
        single.runs = None
        single.rule_arrays = {key: array[index] for key, array in self.rule_arrays.items()}
        return single

    def select(self, indices):
        """A pack of the runs `indices` of this pack (copies), e.g. without a diverged run."""
        return self.stack([self.run(index) for index in indices])

    def _keyed(self):
        """(checkpoint key, layer index, parameter name, attribute) of every parameter, in
        order: W0, b0, W1, b1, V1, c1, ... (the letter of the layer's parameter_names, then
        the layer's index)."""
        return [(letter + str(index), index, name, attribute)
                for index, layer in enumerate(self.layers)
                for name, (attribute, letter) in layer.parameter_names.items()]

    def parameters(self):
        """{key: array} of every layer's parameters by checkpoint key (`_keyed`): the arrays
        the optimiser updates in place."""
        return {key: getattr(self.layers[index], attribute)
                for key, index, _, attribute in self._keyed()}

    def named(self, directions):
        """A rule's directions (a dict per layer, keyed like LayerParameters.parameter_names)
        keyed as `parameters()`: {"W0": ..., "b0": ..., "W1": ...}."""
        return {key: directions[index][name] for key, index, name, _ in self._keyed()
                if name in directions[index]}

    def step(self, directions, learning_rate, guard=None, inverse_learning_rate=None):
        """One optimiser step (MomentOptimizer) along a rule's directions (a dict per layer),
        W and b with `learning_rate`, V and c with `inverse_learning_rate` (None: the same);
        `guard`: skip it if the guard's window has failed (step_runner.StepRunner). In a pack,
        a learning rate may hold one rate per run (an array of shape (runs, 1, 1)). A
        parameter without a direction (V and c in the published update_parameters, which
        gives W and b only) keeps its values and moments."""
        if self.optimizer is None:
            self.optimizer = MomentOptimizer(self.parameters())
        inverse_rate = learning_rate if inverse_learning_rate is None else inverse_learning_rate
        rates = {key: inverse_rate if name in self.layers[index].LEARNED_INVERSE
                 else learning_rate for key, index, name, _ in self._keyed()}
        named = self.named(directions)
        self.optimizer.step({key: array for key, array in self.parameters().items()
                             if key in named}, named, rates, guard)

    def state(self):
        """The arrays that define the network and its optimiser, by checkpoint name: the
        `parameters()` (W0, b0, W1, ...) and, after the first step, their moments (mW0, vW0,
        ...); the arrays themselves, on the backend."""
        state = dict(self.parameters())
        if self.optimizer is not None:
            state.update(self.optimizer.state())
        return state

    def set_state(self, state):
        """Copy arrays named as in `state()` (host or device) into the network's own arrays,
        each checked against the shape it replaces (ValueError). Moments present go into the
        optimiser (made if there is none; MomentOptimizer.set_state also reads an earlier
        version's names); absent ones leave it unmade, or zero its moments in place (the
        same steps as a new optimiser's). Every array is checked before any is copied, so a
        refused state changes nothing. Every array stays where it was, so a CUDA graph
        captured over them stays valid."""
        keyed = self._keyed()
        layer_states = [{name: state[key] for key, at, name, _ in keyed if at == index}
                        for index in range(len(self.layers))]
        for layer, layer_state in zip(self.layers, layer_states):
            layer.check_state(layer_state)
        first = next(iter(self.parameters()))
        has_moments = "m" + first in state or "m0" in state
        if has_moments:
            MomentOptimizer.stored_moments(state, self.parameters())
        for layer, layer_state in zip(self.layers, layer_states):
            layer.set_state(layer_state)
        if has_moments:
            if self.optimizer is None:
                self.optimizer = MomentOptimizer(self.parameters())
            self.optimizer.set_state(state)
        elif self.optimizer is not None:
            for moments in (self.optimizer.first_moments, self.optimizer.second_moments):
                for moment in moments.values():
                    moment[...] = 0

    def parameter_files(self):
        """{file name: array} of every layer's parameters (the arrays themselves):
        0Lweights.npy, 0Lbiases.npy, 1Lweights.npy, ... as published, and a learned inverse's
        1Lbackward_weights.npy, 1Lbackward_biases.npy, ..."""
        return {parameter_file(index, name): array
                for index, layer in enumerate(self.layers)
                for name, array in layer.state().items()}

    def save_params(self, folder):
        """Write the `parameter_files()` into `folder`."""
        for index, layer in enumerate(self.layers):
            layer.save_params(os.path.join(folder, parameter_prefix(index)))

    def load_params(self, folder):
        """Read the files of `save_params` from `folder`."""
        for index, layer in enumerate(self.layers):
            layer.load_params(os.path.join(folder, parameter_prefix(index)))
