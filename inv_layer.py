"""One invertible layer (InvLayer): the published import path (`from inv_layer import ...` works
from a checkout as with the authors' scripts). The code is gaitprop.model.layer. Importing it
chooses the backend as the published modules did (CuPy when it imports and sees a GPU)."""
from gaitprop.model import published as _published

_published.select_published_backend()

from gaitprop.model.layer import *  # noqa: F401,F403,E402
