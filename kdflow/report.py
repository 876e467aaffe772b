"""The results table a person reads after a run: Markdown for the report, plain text for the terminal; the pictures
are kdflow.figures."""

from __future__ import annotations

import csv
from pathlib import Path

from kdflow.layout import MODELS

COLUMNS = [
    ("model", "model", "{}"),
    ("task", "task", "{}"),
    ("test_accuracy", "accuracy", "{:.2%}"),
    ("test_macro_f1", "macro-F1", "{:.3f}"),
    ("test_nll", "NLL", "{:.3f}"),
    ("test_ece", "ECE", "{:.3f}"),
    ("test_agreement", "agrees w/ teacher", "{:.2%}"),
    ("parameters", "params", "{:,}"),
    ("latency_ms", "latency ms", "{:.3f}"),
]


def table_rows(summary: dict) -> list[list[str]]:
    """One row per model, in the pipeline's order (the JSON file's keys are sorted)."""
    rows = []
    for name in sorted(summary["models"], key=lambda n: MODELS.index(n) if n in MODELS else len(MODELS)):
        metrics = summary["models"][name]
        row = []
        for key, _, fmt in COLUMNS:
            value = name if key == "model" else metrics.get(key)
            row.append("" if value is None else fmt.format(value))
        rows.append(row)
    return rows


def markdown_table(summary: dict) -> str:
    header = [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


def text_table(summary: dict) -> str:
    header = [title for _, title, _ in COLUMNS]
    rows = [header, *table_rows(summary)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def comparison_lines(summary: dict) -> list[str]:
    c = summary["comparisons"]
    gap = (f"closes {c['teacher_scratch_gap_closed']:.0%} of the teacher-scratch gap"
           if c["teacher_vs_scratch_points"] > 0 else
           f"no teacher-scratch gap to close (teacher {c['teacher_vs_scratch_points']:+.1f} points vs scratch)")
    # Whether each technique beat its baselines on validation, the evidence the registry chooses by (kdflow.registry);
    # a summary written before that choice existed has none.
    verdicts = [selection["verdict"] for selection in summary.get("selection", {}).values() if selection["verdict"]]
    return [
        f"distillation: student {c['distilled_vs_scratch_points']:+.1f} points vs scratch, "
        f"{c['distilled_vs_hard_labels_points']:+.1f} vs hard labels; "
        f"{gap} with {c['student_teacher_param_ratio']:.0%} of the teacher's parameters",
        f"transfer: fine-tuned {c['finetuned_vs_scratch_points']:+.1f} points vs target model from scratch",
        *verdicts,
    ]


def champion_lines(summary: dict) -> list[str]:
    """Which model each registered role put forward, and why."""
    return [f"{name}: {selection['chosen']}, {selection['why']}" for name, selection in summary["selection"].items()]


CURVE_COLUMNS = ("epoch", "val_loss", "val_accuracy")


def read_curve(path: Path) -> dict[str, list[float]]:
    """A model's per-epoch history (kdflow.stage.write_curve); a damaged one is an ArtifactError naming it."""
    from kdflow.artifacts import ArtifactError

    try:
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        curve = {key: [float(row[key]) for row in rows if row.get(key)] for key in rows[0]} if rows else {}
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise ArtifactError(path, f"not a learning curve ({exc})") from None
    if not all(curve.get(column) for column in CURVE_COLUMNS):
        raise ArtifactError(path, f"not a learning curve (no rows of {', '.join(CURVE_COLUMNS)})")
    return curve
