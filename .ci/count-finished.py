#!/usr/bin/env python3
"""How many runs of a sweep are finished: `.ci/count-finished.py SWEEP.PY FLAGS...` expands the
grid as sweep.py does (sweep.expand) and reads each run's record (run.json in its results
folder, run_folder.results_folder): status "finished" counts. Prints one line,
"N of M runs finished (...)", naming the other runs' statuses; exit 0 only if every run of
the grid is finished. Needs no GPU."""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gaitprop.runs import run_folder  # noqa: E402
from gaitprop.cli import sweep  # noqa: E402


def statuses(argv):
    """{results folder: status of its run.json ("not started" without one)} of the grid."""
    args = sweep.build_parser().parse_args(argv)
    found = {}
    for settings in sweep.expand(args):
        folder = run_folder.results_folder(settings)
        path = os.path.join(folder, run_folder.RUN_RECORD)
        try:
            with open(path, encoding="utf-8") as file:
                found[folder] = json.load(file).get("status", "unknown")
        except FileNotFoundError:
            found[folder] = "not started"
        except (OSError, ValueError) as error:
            found[folder] = f"unreadable ({error.__class__.__name__})"
    return found


def main(argv):
    try:
        found = statuses(argv)
    except sweep.SweepError as error:
        print(f"count-finished: {error}")
        return 2
    counts = collections.Counter(found.values())
    finished = counts.pop("finished", 0)
    others = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    print(f"{finished} of {len(found)} runs finished" + (f" ({others})" if others else ""))
    return 0 if finished == len(found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
