"""Transfer functions, one-hot labels and evaluation: the published import path (`from utils import
...` works from a checkout as with the authors' scripts). The code is gaitprop.model.functions."""
from gaitprop.model.functions import *  # noqa: F401,F403
