"""DTP, difference target propagation (Lee, Zhang, Fischer, Bengio 2015): only the difference
the error makes passes through each layer's (learned) inverse.

Its defaults, chosen on the validation split (docs/rules.md): the output target a small step
(beta 0.01) from the output towards the labels, and learned inverses trained as its authors
train them: on noise (sigma 0.1), down the difference reconstruction loss (Meulemans et al.
2020), at ten times the forward learning rate."""
import dataclasses

from gaitprop.model.rules.rule import InverseTraining, Rule
from gaitprop.model.rules.tp import TARGET_STEP, output_error

TARGET = 0.01  # beta: t_L = h_L - 0.01 (h_L - y)
INVERSE_TRAINING = InverseTraining(inv_noise=0.1, rate_factor=10.0, inv_steps=1,
                                   inv_loss="difference")


def error_below(net, passing):
    """t_l = x_l + backward_l(t_{l+1}) - backward_l(h_{l+1}), so
    e_l = x_l - t_l = backward_l(h_{l+1}) - backward_l(h_{l+1} - e_{l+1}). With an exact
    inverse backward_l(h_{l+1}) = x_l, and this is TP, computed by TP's formula; a learned
    inverse is used in both terms."""
    layer = net.layers[passing.layer_index]
    stepped = layer.inverse_of_stepped(passing.outputs, passing.errors)
    return (layer.inverse(passing.outputs) if layer.learns_inverse else passing.inputs) - stepped


RULE = Rule("DTP", "difference target propagation", "Lee, Zhang, Fischer, Bengio 2015",
            "through each layer's inverse, the difference the error makes", error_below,
            uses_inverses=True, options=(dataclasses.replace(TARGET_STEP, default=TARGET),),
            output_error=output_error, inverse_training=INVERSE_TRAINING)
