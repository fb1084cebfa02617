"""TP, target propagation by the layers' inverses (Bengio 2014; the exact inverses of
Ahmad, van Gerven, Ambrogioni 2020): every layer's target is the output target inverted
all the way down."""
from gaitprop.model.rules.rule import Rule


def error_below(net, passing):
    """t_l = inverse_l(t_{l+1}), so e_l = x_l - inverse_l(h_{l+1} - e_{l+1})."""
    layer = net.layers[passing.layer_index]
    return passing.inputs - layer.inverse_of_stepped(passing.outputs, passing.errors)


RULE = Rule("TP", "target propagation", "Bengio 2014; Ahmad, van Gerven, Ambrogioni 2020",
            "through each layer's inverse, the whole target", error_below,
            uses_inverses=True,
            paper={"learning_rate": 1e-5, "orthogonal_reg": 1000.0, "orthogonal_init": True,
                   "nb_layers": 4})
