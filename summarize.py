#!/usr/bin/env python3
"""Group results folders into the paper's table and learning curves (./summarize.py --help). The
command line is gaitprop.cli.summarize."""
import sys

from gaitprop.cli import entry

if __name__ == "__main__":
    sys.exit(entry.summarize())
