"""The evaluate stage's comparisons and the lines `kdflow run` prints from them, on numbers worked by hand."""

from __future__ import annotations

import pytest

from kdflow.report import comparison_lines
from tasks.evaluate import comparisons


def models(teacher: float) -> dict:
    accuracy = {"teacher": teacher, "student_distilled": 0.80, "student_hard_labels": 0.75, "student_scratch": 0.60,
                "target_finetuned": 0.70, "target_scratch": 0.50}
    parameters = {"teacher": 10_000, "student_distilled": 2_000}
    return {name: {"test_accuracy": value, "parameters": parameters.get(name, 0)} for name, value in accuracy.items()}


def test_the_gap_closed_is_the_students_gain_over_the_teachers() -> None:
    found = comparisons(models(teacher=0.90))
    assert found["teacher_vs_scratch_points"] == pytest.approx(30.0)
    assert found["teacher_scratch_gap_closed"] == pytest.approx(20.0 / 30.0)  # (80 - 60) / (90 - 60)
    assert found["distilled_vs_scratch_points"] == pytest.approx(20.0)
    assert found["distilled_vs_hard_labels_points"] == pytest.approx(5.0)
    assert found["student_teacher_param_ratio"] == pytest.approx(0.2)
    assert found["finetuned_vs_scratch_points"] == pytest.approx(20.0)
    assert comparison_lines({"comparisons": found}) == [
        "distillation: student +20.0 points vs scratch, +5.0 vs hard labels; closes 67% of the teacher-scratch gap "
        "with 20% of the teacher's parameters",
        "transfer: fine-tuned +20.0 points vs target model from scratch",
    ]


def test_a_teacher_no_better_than_scratch_leaves_no_gap_to_close() -> None:
    found = comparisons(models(teacher=0.50))
    assert found["teacher_scratch_gap_closed"] == 0.0
    assert comparison_lines({"comparisons": found})[0] == (
        "distillation: student +20.0 points vs scratch, +5.0 vs hard labels; no teacher-scratch gap to close "
        "(teacher -10.0 points vs scratch) with 20% of the teacher's parameters")
