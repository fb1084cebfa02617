"""Transfer functions, one-hot labels and evaluation: the published import path (`from utils import
...` works from a checkout as with the authors' scripts). The code is gaitprop.model.functions and,
for the published names (leaky_relu, leaky_relu_derivative, leaky_relu_inverse,
indices_to_onehot, performance, progress, xp, is_cupy), gaitprop.model.published. Importing it
chooses the backend as the published modules did (CuPy when it imports and sees a GPU)."""
from gaitprop.model import published as _published

_published.select_published_backend()

from gaitprop.model.functions import *  # noqa: F401,F403,E402
from gaitprop.model.published import *  # noqa: F401,F403,E402
