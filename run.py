#!/usr/bin/env python3
"""Train an invertible multilayer perceptron with BP, GAIT-prop or TP (the published script's
flags; ./run.py --help). The command line is gaitprop.cli.run."""
import sys

from gaitprop.cli import entry

if __name__ == "__main__":
    sys.exit(entry.run())
