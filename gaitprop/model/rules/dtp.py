"""DTP, difference target propagation (Lee, Zhang, Fischer, Bengio 2015): only the difference
the error makes passes through each layer's (learned) inverse."""
import dataclasses

from gaitprop.model.rules.rule import Rule
from gaitprop.model.rules.tp import TARGET_STEP, output_error


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
            uses_inverses=True, options=(dataclasses.replace(TARGET_STEP, default=1.0),),
            output_error=output_error)
