"""Invertible networks and their learning rules (SquareInvNet, TowerInvNet): the published import
path (`from inv_net import ...` works from a checkout as with the authors' scripts). The code is
gaitprop.model.net."""
from gaitprop.model.net import *  # noqa: F401,F403
