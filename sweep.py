#!/usr/bin/env python3
"""Expand a grid of settings into runs and execute them: locally, on SLURM, packed or printed
(./sweep.py --help). The command line is gaitprop.cli.sweep."""
import sys

from gaitprop.cli import entry

if __name__ == "__main__":
    sys.exit(entry.sweep())
