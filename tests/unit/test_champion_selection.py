"""Promotion by evidence: each role's candidate is the best of the run's models on validation, a tie going to the
technique; the words say when distillation or transfer lost to a baseline. Numbers chosen by hand."""

from __future__ import annotations

from kdflow.registry import ROLES, Selection
from kdflow.report import champion_lines, comparison_lines

TEACHER, STUDENT, TARGET = ROLES


def test_a_baseline_that_beats_the_fine_tuned_model_on_validation_is_put_forward() -> None:
    # the digits case: fine-tuned 72.9 %, from scratch 90.6 %
    selection = Selection(TARGET, {"target_finetuned": 0.729, "target_scratch": 0.906})
    assert selection.winner == "target_scratch"
    assert selection.reason() == ("best validation accuracy of the run's candidates "
                                  "(target_scratch 90.60%, target_finetuned 72.90%)")
    assert selection.verdict() == ("transfer lost to its baseline: target_scratch 90.60% on validation vs 72.90% for "
                                   "target_finetuned, so target_scratch is the kdflow-target candidate")


def test_distillation_is_judged_against_its_best_baseline() -> None:
    selection = Selection(STUDENT, {"student_distilled": 0.90, "student_hard_labels": 0.93, "student_scratch": 0.95})
    assert selection.winner == "student_scratch"
    assert selection.verdict().startswith("distillation lost to its baseline: student_scratch 95.00% on validation "
                                          "vs 90.00% for student_distilled")
    won = Selection(STUDENT, {"student_distilled": 0.96, "student_hard_labels": 0.93, "student_scratch": 0.95})
    assert won.winner == "student_distilled"
    assert won.verdict() == ("distillation held up: student_distilled 96.00% on validation vs 95.00% for its best "
                             "baseline student_scratch")


def test_a_tie_goes_to_the_technique_not_the_baseline() -> None:
    selection = Selection(STUDENT, {"student_distilled": 0.9, "student_hard_labels": 0.9, "student_scratch": 0.5})
    assert selection.winner == "student_distilled"
    assert selection.verdict().startswith("distillation held up")


def test_the_teacher_has_no_baseline_and_no_verdict() -> None:
    selection = Selection(TEACHER, {"teacher": 0.4})
    assert (selection.winner, selection.reason(), selection.verdict()) == ("teacher", "the run's only candidate", None)


def test_the_report_says_what_lost_and_why_each_champion_is_what_it_is() -> None:
    selections = [Selection(TEACHER, {"teacher": 0.98}),
                  Selection(STUDENT, {"student_distilled": 0.96, "student_hard_labels": 0.93, "student_scratch": 0.6}),
                  Selection(TARGET, {"target_finetuned": 0.5, "target_scratch": 0.75})]
    comparisons = {"distilled_vs_scratch_points": 1.0, "distilled_vs_hard_labels_points": 1.0,
                   "teacher_vs_scratch_points": 2.0, "teacher_scratch_gap_closed": 0.5,
                   "student_teacher_param_ratio": 0.2, "finetuned_vs_scratch_points": -25.0}
    summary = {"comparisons": comparisons,
               "selection": {s.role.registered_name: {"chosen": s.winner, "why": s.reason(), "verdict": s.verdict()}
                             for s in selections}}
    assert comparison_lines(summary)[2:] == [
        "distillation held up: student_distilled 96.00% on validation vs 93.00% for its best baseline "
        "student_hard_labels",
        "transfer lost to its baseline: target_scratch 75.00% on validation vs 50.00% for target_finetuned, so "
        "target_scratch is the kdflow-target candidate",
    ]
    assert champion_lines(summary) == [
        "kdflow-teacher: teacher, the run's only candidate",
        "kdflow-student: student_distilled, best validation accuracy of the run's candidates (student_distilled "
        "96.00%, student_hard_labels 93.00%, student_scratch 60.00%)",
        "kdflow-target: target_scratch, best validation accuracy of the run's candidates (target_scratch 75.00%, "
        "target_finetuned 50.00%)",
    ]
