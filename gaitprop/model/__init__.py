"""The model: invertible layers and networks, the three learning rules, parameters by name and the
optimiser. Imports only `gaitprop.arrays`."""
