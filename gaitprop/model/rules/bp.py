"""BP, backpropagation of the squared error (Rumelhart, Hinton, Williams 1986): the
reference every other rule is measured against (the angle to BP's directions)."""
from gaitprop.arrays import products
from gaitprop.model.rules.rule import Rule


def error_below(net, passing):
    """e_l = d @ W_l.T: the gradient of 0.5 * sum((h_L - t)**2) / n at h_l."""
    weights = net.layers[passing.layer_index].weight_matrix
    return products.matmul(passing.local_errors, weights.swapaxes(-1, -2))


RULE = Rule("BP", "backpropagation", "Rumelhart, Hinton, Williams 1986",
            "through W.T", error_below,
            paper={"learning_rate": 1e-4, "orthogonal_reg": 0.0, "orthogonal_init": False,
                   "nb_layers": 4})
