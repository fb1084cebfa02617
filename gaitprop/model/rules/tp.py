"""TP, target propagation by the layers' inverses (Bengio 2014; the exact inverses of
Ahmad, van Gerven, Ambrogioni 2020): every layer's target is the output target inverted
all the way down."""
from gaitprop.model.rules.rule import Option, Rule

# The output target's step (shared with DTP, each rule with its own default): beta = 1 is the
# published TP target, the labels themselves.
TARGET_STEP = Option("target_step", 1.0, "the output target's step from the output towards "
                     "the labels: t_L = h_L - BETA * (h_L - y) on the class units (1: the "
                     "labels)", "TargetStep_", maximum=1.0, absent=1.0, metavar="BETA")


def output_error(errors, target_step=1.0):
    """e_L = h_L - t_L for t_L = h_L - beta * (h_L - t): beta * (h_L - t) (the class units'
    errors; the others' are 0). beta = 1: h_L - t itself."""
    return errors if target_step == 1 else target_step * errors


def error_below(net, passing):
    """t_l = inverse_l(t_{l+1}), so e_l = x_l - inverse_l(h_{l+1} - e_{l+1})."""
    layer = net.layers[passing.layer_index]
    return passing.inputs - layer.inverse_of_stepped(passing.outputs, passing.errors)


RULE = Rule("TP", "target propagation", "Bengio 2014; Ahmad, van Gerven, Ambrogioni 2020",
            "through each layer's inverse, the whole target", error_below,
            uses_inverses=True, options=(TARGET_STEP,), output_error=output_error,
            paper={"learning_rate": 1e-5, "orthogonal_reg": 1000.0, "orthogonal_init": False,
                   "nb_layers": 4})
