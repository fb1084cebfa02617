"""Invertible networks and their learning rules (SquareInvNet, TowerInvNet): the published import
path (`from inv_net import ...` works from a checkout as with the authors' scripts). The code is
gaitprop.model.net. Importing it chooses the backend as the published modules did (CuPy when it
imports and sees a GPU)."""
from gaitprop.model import published as _published

_published.select_published_backend()

from gaitprop.model.net import *  # noqa: F401,F403,E402
