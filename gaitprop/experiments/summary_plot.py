"""Learning curves of summarize.py's groups, drawn with matplotlib's Agg backend (no display).

Panels: test accuracy and training accuracy against epochs, the validation accuracy when
some runs held out a validation set, when some runs logged it (`alignment.txt`), the
angle between each layer's weight directions and BP's, and when some runs learned inverses
(`inverse_quality.txt`), their reconstruction errors and distances to the exact inverses
(log scale). Per group:
the mean over seeds as a line and the min-max over seeds as a band; one colour per
algorithm, and line styles telling apart the groups of one algorithm.
"""
import numpy

from gaitprop.experiments import summary_data
from gaitprop.model import rules
from gaitprop.experiments.summary_data import SummaryError

# One colour per learning rule: matplotlib's palette in the order of the registry of rules
# (BP blue, GAIT orange, TP green, ...); an algorithm the registry does not know (a folder of
# another version) takes the spare grey.
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan")
COLOURS = {rule.name: PALETTE[index % len(PALETTE)]
           for index, rule in enumerate(rules.REGISTERED)}
SPARE_COLOUR = "tab:gray"
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
PLAIN = ("dataset", "algorithm", "nb_layers")  # shown in legends without their name


def stacked(rows):
    """Rows of different lengths as one (len(rows), longest) array, padded with nan."""
    table = numpy.full((len(rows), max(len(row) for row in rows)), numpy.nan)
    for index, row in enumerate(rows):
        table[index, :len(row)] = row
    return table


def accuracy_band(group, name):
    """(epochs, mean, min, max) in percent over the group's seeds, evaluation by evaluation.

    A run still in progress contributes to the evaluations it has reached.
    """
    table = 100 * stacked([run_.curves[name] for run_ in group.runs])
    epochs = group.runs[0].epochs(table.shape[1])
    return epochs, numpy.nanmean(table, 0), numpy.nanmin(table, 0), numpy.nanmax(table, 0)


def logged_means(group, log="alignment"):
    """(positions in epochs, mean of each logged column as columns), over the runs that
    logged `log` ("alignment" or "inverse_quality", the Run attributes)."""
    logged = [getattr(run_, log) for run_ in group.runs if getattr(run_, log) is not None]
    longest = max(logged, key=len)
    columns = max(table.shape[1] for table in logged) - 1
    values = numpy.full((len(logged), len(longest), columns), numpy.nan)
    for index, table in enumerate(logged):
        values[index, :len(table), :table.shape[1] - 1] = table[:, 1:]
    return longest[:, 0], numpy.nanmean(values, 0)


def per_layer_panel(axis, groups, styles, log, columns, title, ylabel, first_layer=0):
    """One line per group and layer of a log's mean columns (`columns(means)` picks them),
    the group's colour, a line style per layer (legend: the layers)."""
    nb_layers = 0
    for group in groups:
        colour, _, _ = styles[id(group)]
        positions, means = logged_means(group, log)
        chosen = columns(means)
        nb_layers = max(nb_layers, chosen.shape[1])
        for layer in range(chosen.shape[1]):
            axis.plot(positions, chosen[:, layer], color=colour,
                      linestyle=LINE_STYLES[layer % len(LINE_STYLES)])
    for layer in range(nb_layers):  # colours are the groups' (first panel's legend)
        axis.plot([], [], color="grey", linestyle=LINE_STYLES[layer % len(LINE_STYLES)],
                  label=f"layer {first_layer + layer}")
    axis.set(title=title, xlabel="epoch", ylabel=ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small")


def appearance(groups):
    """Per group (colour, line style, legend label)."""
    columns = summary_data.label_columns(groups)
    labels = [summary_data.label_values(group, columns) for group in groups]
    varying = [name for name in columns if len({label[name] for label in labels}) > 1]
    varying = varying or ["algorithm"]
    seen: dict[str, int] = {}  # {algorithm: groups of it styled so far}
    styles = []
    for group, label in zip(groups, labels):
        algorithm = group.key["algorithm"]
        colour = COLOURS.get(algorithm, SPARE_COLOUR)
        count = seen.get(algorithm, 0)
        seen[algorithm] = count + 1
        words = [label[name] if name in PLAIN else f"{summary_data.LABELS[name]} {label[name]}"
                 for name in varying]
        styles.append((colour, LINE_STYLES[count % len(LINE_STYLES)], " ".join(words)))
    return styles


def plot(groups, path):
    """Draw the panels for `groups` into the image file `path` (PNG, or any type matplotlib
    knows)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    aligned = [group for group in groups if any(run_.alignment is not None
                                                 for run_ in group.runs)]
    learned = [group for group in groups if any(run_.inverse_quality is not None
                                                for run_ in group.runs)]
    curves = [("test_acc", "Test accuracy"), ("training_acc", "Training accuracy")]
    if any(group.validated() for group in groups):
        curves.append(("validation_acc", "Validation accuracy"))
    panels = len(curves) + bool(aligned) + 2 * bool(learned)
    figure, axes = pyplot.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    styles = dict(zip(map(id, groups), appearance(groups)))
    for axis, (name, title) in zip(axes[0], curves):
        for group in groups:
            if name == "validation_acc" and not group.validated():
                continue
            colour, style, label = styles[id(group)]
            epochs, mean, low, high = accuracy_band(group, name)
            axis.plot(epochs, mean, color=colour, linestyle=style, label=label,
                      marker="o" if len(epochs) < 3 else None, markersize=3)
            axis.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        axis.set(title=title, xlabel="epoch", ylabel="accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small", title="mean, min-max over seeds",
                      title_fontsize="small")
    spare = iter(axes[0][len(curves):])
    if aligned:
        per_layer_panel(next(spare), aligned, styles, "alignment", lambda means: means,
                        "Angle to the BP directions (colour: group)", "degrees")
    if learned:
        for half, title in ((0, "Learned inverses: |backward(h) - x| / |x|"),
                            (1, "Learned inverses: |V - inv(W)| / |inv(W)|")):
            axis = next(spare)
            per_layer_panel(axis, learned, styles, "inverse_quality",
                            lambda means, half=half: numpy.split(means, 2, axis=1)[half],
                            title, "relative error", first_layer=1)
            axis.set_yscale("log")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except (OSError, ValueError) as error:
        raise SummaryError(f"cannot write the figure {path} ({error}); check the folder and "
                           f"use an extension such as .png") from None
    finally:
        pyplot.close(figure)
