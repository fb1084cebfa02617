"""Summarise results folders: one row per group of runs that differ only in their seed.

Example: ./summarize.py results/ --format markdown --plot curves.png
Arguments are results folders, or folders searched recursively for them (a folder with a
run.json or a training_acc.txt). Per group: the number of seeds, then over the seeds
(mean ± sample standard deviation) the final test accuracy, the peak test accuracy and
the final training accuracy, and the mean epoch of the peak. Accuracies are in percent
(CSV: fractions, full precision). Groups with learned inverses (--learn_inv, with
--log_alignment) add the last logged reconstruction error |backward(h) - x| / |x| and
distance |V - inv(W)|_F / |inv(W)|_F, each the mean over the learned inverses, then mean ±
sd over the seeds. A '*' marks a group with runs not finished (running,
interrupted or failed; their latest values are used), a '!' one with diverged runs.
Folders without run.json (from the published scripts) are read from their text files,
with the settings parsed from the folder name and the published evaluation cadence
(--eval_interval 10) assumed.
"""
import argparse
import csv
import sys

import numpy

from gaitprop.experiments import summary_data
from gaitprop.experiments.summary_data import SummaryError
from gaitprop.runs.invocation import typed


class Parser(argparse.ArgumentParser):
    def error(self, message):
        label, command = typed("summarize")
        self.exit(2, f"{label}: {message}. Run {command} --help for the options.\n")


def build_parser():
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("paths", nargs="*", default=["results"],
                        help="results folders or folders holding them (default: results)")
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the learning curves (and the alignment and the learned "
                             "inverses' quality, if logged)")
    return parser


def percent(values):
    """'86.83 ± 0.12' (mean ± sample sd, in percent), or '86.83' for a single run."""
    mean, sd = summary_data.mean_sd(values)
    return f"{100 * mean:.2f}" if numpy.isnan(sd) else f"{100 * mean:.2f} ± {100 * sd:.2f}"


def epochs_text(values):
    """'3' or '2-3': the epochs the runs of a group reached."""
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def marks(group):
    """'*' if some run is not finished, '!' if some run diverged."""
    statuses = [run_.status for run_ in group.runs]
    return ("*" if any(s in summary_data.IN_PROGRESS for s in statuses) else "") + \
        ("!" if "diverged" in statuses else "")


def mean_sd_text(values):
    """'0.0123 ± 0.0004' (mean ± sample sd, 3 significant digits), or the mean alone for
    a single run."""
    mean, sd = summary_data.mean_sd(values)
    return f"{mean:.3g}" if numpy.isnan(sd) else f"{mean:.3g} ± {sd:.2g}"


def display_rows(groups) -> tuple[list[str], list[list[str]], list[str], int]:
    """Header and rows of the table (strings), and the footnotes. With validation sets, two
    more columns: the test accuracy at each run's evaluation of best validation accuracy,
    and that evaluation's epoch ("-" for groups without one); with learned inverses, two
    more: their last logged reconstruction error and distance to the exact inverse."""
    columns = summary_data.label_columns(groups)
    validated = any(group.validated() for group in groups)
    learned = any(group.learned() for group in groups)
    header = [summary_data.LABELS[name] for name in columns] + [
        "seeds", "epochs", "final test %", "peak test %", "peak epoch", "final train %"] + (
        ["test % at best val", "best val epoch"] if validated else []) + (
        ["reconstruction error", "inverse distance"] if learned else [])
    rows, notes = [], []
    for group in groups:
        label = summary_data.label_values(group, columns)
        row = [label[name] for name in columns] + [
            f"{len(group.runs)}{marks(group)}", epochs_text(group.epochs()),
            percent(group.final("test_acc")), percent(group.peak("test_acc")),
            f"{numpy.mean(group.peak_epoch('test_acc')):.2f}",
            percent(group.final("training_acc"))]
        if validated and group.validated():
            accuracies, epochs = zip(*group.selected())
            row += [percent(accuracies), f"{numpy.mean(epochs):.2f}"]
        elif validated:
            row += ["-", "-"]
        if learned:
            row += (list(map(mean_sd_text, group.final_inverse_quality())) if group.learned()
                    else ["-", "-"])
        rows.append(row)
        if marks(group):
            counts = group.status_counts()
            notes.append(f"{marks(group)} {' '.join(label.values())}: "
                         + ", ".join(f"{count} {status}" for status, count in counts.items()))
    legend = [text for mark, text in (
        ("*", "* runs not finished (running, interrupted or failed): their latest values are "
              "used."), ("!", "! runs diverged: their last finite values are used."))
              if any(mark in marks(group) for group in groups)]
    notes = legend + notes
    return header, rows, notes, len(columns)


def print_table(header, rows, notes, nb_labels, markdown=False):
    """An aligned plain-text table, or a Markdown one (the columns after the first
    `nb_labels`, the settings, are numbers: aligned right)."""
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    numeric = [i >= nb_labels for i in range(len(header))]

    def line(cells):
        text = [cell.rjust(width) if right else cell.ljust(width)
                for cell, width, right in zip(cells, widths, numeric)]
        return "| " + " | ".join(text) + " |" if markdown else "  ".join(text).rstrip()
    print(line(header))
    if markdown:
        print("|" + "|".join(("-" * (w + 1)) + (":" if right else "-")
                             for w, right in zip(widths, numeric)) + "|")
    else:
        print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))
    if notes:
        print()
        for note in notes:
            print(note)


def write_csv(groups, stream):
    """All settings, the statistics as fractions (mean and sd columns) and the statuses."""
    keys = summary_data.GROUP_KEYS
    validated = any(group.validated() for group in groups)
    learned = any(group.learned() for group in groups)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(list(keys) + [
        "seeds", "epochs_min", "epochs_max", "final_test_acc_mean", "final_test_acc_sd",
        "peak_test_acc_mean", "peak_test_acc_sd", "peak_epoch_mean", "final_training_acc_mean",
        "final_training_acc_sd"] + (
        ["selected_test_acc_mean", "selected_test_acc_sd", "selected_epoch_mean"]
        if validated else []) + (
        ["reconstruction_error_mean", "reconstruction_error_sd", "inverse_distance_mean",
         "inverse_distance_sd"] if learned else []) + [
        "not_finished", "diverged", "statuses", "folders"])
    for group in groups:
        statistics = []
        for values in (group.final("test_acc"), group.peak("test_acc")):
            statistics += list(summary_data.mean_sd(values))
        statistics.append(numpy.mean(group.peak_epoch("test_acc")))
        statistics += list(summary_data.mean_sd(group.final("training_acc")))
        if validated and group.validated():
            accuracies, epochs = zip(*group.selected())
            statistics += list(summary_data.mean_sd(accuracies)) + [numpy.mean(epochs)]
        elif validated:
            statistics += [numpy.nan] * 3
        if learned and group.learned():
            for values in group.final_inverse_quality():
                statistics += list(summary_data.mean_sd(values))
        elif learned:
            statistics += [numpy.nan] * 4
        mark = marks(group)
        writer.writerow(
            [group.key[name] for name in keys]
            + [len(group.runs), min(group.epochs()), max(group.epochs())]
            + ["" if numpy.isnan(value) else repr(float(value)) for value in statistics]
            + [int("*" in mark), int("!" in mark),
               ";".join(f"{status}:{count}" for status, count in group.status_counts().items()),
               ";".join(run_.folder for run_ in group.runs)])


def main(argv=None):
    args = build_parser().parse_args(argv)
    label = typed("summarize")[0]
    try:
        runs, warnings = summary_data.read_runs(args.paths)
        for warning in warnings:  # each skipped folder, and why
            print(f"{label}: {warning}", file=sys.stderr)
        found = len(runs) + len(warnings)
        folders = f"results folder{'s' if found != 1 else ''}"
        print(f"{label}: read {len(runs)} of {found} {folders} ({len(warnings)} skipped)"
              if warnings else f"{label}: read {found} {folders}", file=sys.stderr)
        if not runs:
            raise SummaryError(f"none of the {found} results folders under "
                               f"{', '.join(args.paths)} could be read (each is named above, "
                               f"with why)")
        groups = summary_data.group_runs(runs)
        if args.format == "csv":
            write_csv(groups, sys.stdout)
        else:
            print_table(*display_rows(groups), markdown=args.format == "markdown")
        if args.plot:
            from gaitprop.experiments import summary_plot
            summary_plot.plot(groups, args.plot)
            print(f"Learning curves written to {args.plot}", file=sys.stderr)
    except SummaryError as error:
        print(f"{label}: {error}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
