"""DFA, direct feedback alignment (Nokland 2016): every hidden layer receives the output
layer's local error directly, through a fixed random matrix of its own."""
from gaitprop.arrays import products
from gaitprop.model.rules.fa import fixed_matrix
from gaitprop.model.rules.rule import Rule

STREAM = 0xDFA  # DFA's matrices are drawn from [layer seed, STREAM]: a stream of their own


def feedback_matrix(net, layer_index):
    """D_l of layer `layer_index`: a fixed random matrix (fa.fixed_matrix) from the output
    layer's width to the units layer l reads."""
    return fixed_matrix(net, layer_index, net.layers[-1].nb_units, STREAM)


def error_below(net, passing):
    """e_l = d_L @ D_l: the output layer's local error d_L = g(h_L) * (h_L - t) through the
    layer's own fixed matrix D_l (zero outside the class units, as d_L is)."""
    return products.matmul(passing.top_local_errors, feedback_matrix(net, passing.layer_index))


RULE = Rule("DFA", "direct feedback alignment", "Nokland 2016",
            "from the output layer straight to each layer, through a fixed random matrix",
            error_below)
