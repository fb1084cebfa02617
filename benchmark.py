#!/usr/bin/env python3
"""Time training steps and evaluations on this machine (./benchmark.py --help). The command line is
gaitprop.cli.benchmark."""
import sys

from gaitprop.cli import entry

if __name__ == "__main__":
    sys.exit(entry.benchmark())
