"""The report's pictures (kdflow.figures): the same data gives the same PNG bytes, other data other bytes, and the
CSV `dvc plots` reads holds the numbers given."""

from __future__ import annotations

import struct

import numpy as np

from kdflow.figures import (DPI, RELIABILITY_COLUMNS, csv_text, plot_accuracy_cost, plot_learning_curves, plot_matrix,
                            plot_reliability)

SUMMARY = {"models": {
    "teacher": {"task": "source", "test_accuracy": 0.98, "parameters": 35237, "latency_ms": 0.157},
    "student_distilled": {"task": "source", "test_accuracy": 0.95, "parameters": 7109, "latency_ms": 0.029},
    "target_finetuned": {"task": "target", "test_accuracy": 0.74, "parameters": 7109, "latency_ms": 0.027},
}}
BINS = [{"low": 0.4, "high": 0.6, "confidence": 0.5, "accuracy": 0.25, "gap": 0.25, "share": 0.5},
        {"low": 0.8, "high": 1.0, "confidence": 0.9, "accuracy": 1.0, "gap": 0.1, "share": 0.5}]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def drawn_twice(tmp_path, draw) -> bytes:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    draw(first)
    draw(second)
    assert first.read_bytes() == second.read_bytes()
    return first.read_bytes()


def test_accuracy_cost_is_the_same_bytes_for_the_same_summary_and_other_bytes_for_another(tmp_path):
    picture = drawn_twice(tmp_path, lambda target: plot_accuracy_cost(SUMMARY, target))
    assert png_size(tmp_path / "first.png") == (11 * DPI, 4 * DPI)
    faster = {"models": {**SUMMARY["models"], "teacher": {**SUMMARY["models"]["teacher"], "latency_ms": 0.5}}}
    plot_accuracy_cost(faster, tmp_path / "other.png")
    assert (tmp_path / "other.png").read_bytes() != picture
    assert b"matplotlib" not in picture  # no version stamp: bytes follow the data alone


def test_matrix_and_reliability_and_curves_are_reproducible(tmp_path):
    counts = np.array([[40, 2], [5, 33]])
    drawn_twice(tmp_path, lambda t: plot_matrix(counts, ["5", "6"], ["5", "6"], ("actual", "predicted", "t"), t))
    sweep = [[0.9, float("nan")], [0.85, 0.93]]  # a cell the grid did not reach stays empty
    drawn_twice(tmp_path, lambda t: plot_matrix(sweep, ["T=1", "T=4"], ["α=0.5", "α=1"], ("T", "α", "acc"), t,
                                                number_format="{:.3f}"))
    drawn_twice(tmp_path, lambda t: plot_reliability({"teacher": (BINS, 0.175), "student": (BINS[:1], 0.125)}, t))
    curve = tmp_path / "teacher.csv"
    curve.write_text("epoch,train_loss,val_loss,val_accuracy,lr\n1,1.5,1.2,0.6,0.01\n2,0.9,0.8,0.75,0.01\n")
    drawn_twice(tmp_path, lambda t: plot_learning_curves({"teacher": curve}, t))


def test_reliability_csv_holds_each_bin_to_six_digits():
    assert csv_text(BINS + [{"low": 0.0, "high": 0.2, "confidence": 1 / 3, "accuracy": 0.0, "share": 0.0}],
                    RELIABILITY_COLUMNS).splitlines() == [
        "low,high,confidence,accuracy,share", "0.4,0.6,0.5,0.25,0.5", "0.8,1,0.9,1,0.5", "0,0.2,0.333333,0,0"]
