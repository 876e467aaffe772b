"""The report's pictures, drawn with matplotlib's Agg backend: the same data gives the same PNG bytes.

- accuracy against parameters and against latency: the product's claim, small and fast;
- a matrix of numbers as a heat map: the target task's confusion matrix, a sweep's temperature × α map;
- reliability diagrams, each titled with its model's ECE;
- training (dashed) against validation (solid) loss, beside validation accuracy.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from kdflow.report import read_curve

TASK_COLOURS = {"source": "#444444", "target": "#22aa77"}
DPI = 110


RELIABILITY_COLUMNS = ("low", "high", "confidence", "accuracy", "share")
PREDICTION_COLUMNS = ("actual", "predicted")


def csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as CSV for `dvc plots`, numbers to 6 significant digits (the precision of the learning curves)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, target: Path) -> None:
    """Atomically, without the matplotlib version in the file, so the bytes depend on the data alone."""
    from kdflow.artifacts import atomic_path

    figure.tight_layout()
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(figure)


def plot_accuracy_cost(summary: dict, target: Path) -> None:
    """Test accuracy against parameters and against single-sample latency, one labelled point per model."""
    plt = _pyplot()
    models = summary["models"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, key, label in ((axes[0], "parameters", "parameters"), (axes[1], "latency_ms", "latency (ms per sample)")):
        for name, metrics in models.items():
            x, y = metrics[key], metrics["test_accuracy"] * 100
            axis.scatter([x], [y], color=TASK_COLOURS[metrics["task"]], zorder=3)
            axis.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axis.set(xlabel=label, xscale="log")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set(ylabel="test accuracy (%)", title="Accuracy against size (grey: source task, green: target)")
    axes[1].set(title="Accuracy against latency")
    _save(figure, target)


def plot_matrix(values: np.ndarray, rows: list[str], columns: list[str], labels: tuple[str, str, str],
                target: Path, number_format: str = "{:g}") -> None:
    """A heat map with each cell's number written in it; `labels` are the row axis, column axis and title."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    figure, axis = plt.subplots(figsize=(1.0 + 0.7 * len(columns), 1.0 + 0.6 * len(rows)))
    image = axis.imshow(np.nan_to_num(values, nan=np.nanmin(values)), cmap="viridis", aspect="auto")
    middle = (np.nanmax(values) + np.nanmin(values)) / 2
    for (row, column), value in np.ndenumerate(values):
        text = "" if np.isnan(value) else number_format.format(value)
        axis.text(column, row, text, ha="center", va="center", fontsize=8,
                  color="black" if value > middle else "white")
    axis.set_xticks(range(len(columns)), columns)
    axis.set_yticks(range(len(rows)), rows)
    axis.set(ylabel=labels[0], xlabel=labels[1], title=labels[2])
    figure.colorbar(image, ax=axis)
    _save(figure, target)


def plot_reliability(diagrams: dict[str, tuple[list[dict], float]], target: Path) -> None:
    """One reliability diagram per model: accuracy per confidence bin against the diagonal of perfect calibration,
    the gap shaded, titled with the model's ECE (`diagrams`: model -> (its bins, its ECE))."""
    plt = _pyplot()
    columns = min(3, len(diagrams))
    rows = -(-len(diagrams) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    for axis, (name, (bins, ece)) in zip(axes.flat, diagrams.items()):
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        widths = [b["high"] - b["low"] for b in bins]
        axis.bar(centres, [b["accuracy"] for b in bins], width=widths, color="#4477aa", edgecolor="white",
                 label="accuracy")
        axis.bar(centres, [b["confidence"] - b["accuracy"] for b in bins], bottom=[b["accuracy"] for b in bins],
                 width=widths, color="#cc6677", alpha=0.4, label="gap to confidence")
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name}: ECE {ece:.3f}")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    for axis in list(axes.flat)[len(diagrams):]:
        axis.set_visible(False)
    _save(figure, target)


def plot_learning_curves(curves: dict[str, Path], target: Path) -> None:
    """Training (dashed) and validation (solid) loss per model, and validation accuracy."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, path) in enumerate(curves.items()):
        curve = read_curve(path)
        colour = f"C{index}"
        loss_axis.plot(curve["epoch"], curve["val_loss"], color=colour, label=name)
        if curve.get("train_loss"):
            loss_axis.plot(curve["epoch"][:len(curve["train_loss"])], curve["train_loss"], color=colour,
                           linestyle="--", linewidth=0.9)
        accuracy_axis.plot(curve["epoch"], curve["val_accuracy"], color=colour, label=name)
    loss_axis.set(xlabel="epoch", ylabel="loss", yscale="log", title="Training (dashed) and validation loss")
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    accuracy_axis.legend(fontsize=8)
    _save(figure, target)
