#!/usr/bin/env python3
"""Train several runs as one pack, in one process (./pack.py --help). The command line is
gaitprop.cli.pack."""
import sys

from gaitprop.cli import entry

if __name__ == "__main__":
    sys.exit(entry.pack())
