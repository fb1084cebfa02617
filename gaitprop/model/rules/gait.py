"""GAIT, gradient-adjusted incremental target propagation (Ahmad, van Gerven, Ambrogioni
2020), computed exactly: the target of each layer is a step of gamma from its forward
activity towards the target above, inverted through the layer."""
from gaitprop.model.rules.rule import Option, Rule

GAMMA = 0.001  # as published (the authors' learned-inverse branch took 0.01)


def error_below(net, passing, gamma=GAMMA):
    """e_l = E_l = (phi(h_{l+1}, delta) / gamma**(k+1)) @ inv(W_l).

    E_{l+1} = (h_{l+1} - t_{l+1}) / gamma**k with k = L - 1 - l layers above layer l,
    delta = gamma**(k+1) * g(h_{l+1})**2 * E_{l+1}; without zero crossings this is
    E_l = (g * E_{l+1}) @ inv(W_l). The target is t_l = x_l - gamma**(k+1) * E_l.
    """
    layer = net.layers[passing.layer_index]
    step = layer.scaled_inverse_difference(passing.outputs, passing.local_errors,
                                           gamma ** (len(net.layers) - passing.layer_index))
    return layer.apply_inverse_weights(step)


RULE = Rule("GAIT", "GAIT-prop", "Ahmad, van Gerven, Ambrogioni 2020",
            "through each layer's inverse, as a small step (gamma) towards the target",
            error_below, uses_inverses=True,
            options=(Option("gamma", GAMMA, "GAIT's gamma: the size of each layer's step "
                            "towards the target above it", "Gamma_", absent=GAMMA),),
            paper={"learning_rate": 1e-4, "orthogonal_reg": 0.1, "orthogonal_init": False,
                   "nb_layers": 4})
