"""One invertible layer (InvLayer): the published import path (`from inv_layer import ...` works
from a checkout as with the authors' scripts). The code is gaitprop.model.layer."""
from gaitprop.model.layer import *  # noqa: F401,F403
