"""Runs: the settings table, results folders and their names, checkpoints, stop signals, the data
sets, and training runs as packs."""
