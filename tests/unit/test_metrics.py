"""`kdflow.metrics` against numbers worked out by hand.

Logits are built as log-probabilities, so softmax gives back the probabilities written in the test.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdflow.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    confusion_counts,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    reliability_bins,
)


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


# Six samples, three classes. Confidence (max probability) and whether the argmax is right:
#   s1 0.8 right   s2 0.8 wrong   s3 0.9 right   (confidence above 0.5)
#   s4 0.4 right   s5 0.4 right   s6 0.4 wrong   (confidence at most 0.5)
PROBABILITIES = [
    [0.8, 0.1, 0.1],
    [0.8, 0.1, 0.1],
    [0.05, 0.9, 0.05],
    [0.4, 0.3, 0.3],
    [0.3, 0.4, 0.3],
    [0.3, 0.3, 0.4],
]
LABELS = torch.tensor([0, 1, 1, 0, 1, 0])
LOGITS = logits_of(PROBABILITIES)


def test_accuracy() -> None:
    # right: s1, s3, s4, s5 -> 4 of 6
    assert accuracy(LOGITS, LABELS) == pytest.approx(4 / 6)


def test_accuracy_all_wrong_and_all_right() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert accuracy(logits, torch.tensor([1, 0])) == 0.0
    assert accuracy(logits, torch.tensor([0, 1])) == 1.0


def test_macro_f1_with_a_class_never_predicted() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 1, 0, 1, 1])  # class 2 is never predicted
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    # class 0: TP 2, FP 1, FN 0 -> 2*2 / (4 + 1 + 0) = 0.8
    # class 1: TP 1, FP 2, FN 1 -> 2*1 / (2 + 2 + 1) = 0.4
    # class 2: TP 0, FP 0, FN 2 -> 0
    assert macro_f1(logits, labels, num_classes=3) == pytest.approx((0.8 + 0.4 + 0.0) / 3)
    # A fourth class, neither present nor predicted, scores 0 and still counts in the mean.
    assert macro_f1(torch.cat([logits, torch.zeros(6, 1)], 1), labels, num_classes=4) == pytest.approx(1.2 / 4)


def test_macro_f1_perfect() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    assert macro_f1(torch.nn.functional.one_hot(labels, 3).float(), labels, 3) == pytest.approx(1.0)


def test_negative_log_likelihood() -> None:
    # -log p[label]: s1 0.8, s2 0.1, s3 0.9, s4 0.4, s5 0.4, s6 0.3
    expected = -(math.log(0.8) + math.log(0.1) + math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.3)) / 6
    assert expected == pytest.approx(5.6677 / 6, abs=1e-4)  # 0.2231 + 2.3026 + 0.1054 + 0.9163 + 0.9163 + 1.2040
    assert negative_log_likelihood(LOGITS, LABELS) == pytest.approx(expected, rel=1e-6)


def test_ece_two_bins() -> None:
    # bin (0, 0.5]: s4 s5 s6, accuracy 2/3, confidence 0.4           -> |0.6667 - 0.4| * 3/6 = 0.13333
    # bin (0.5, 1]: s1 s2 s3, accuracy 2/3, confidence (0.8+0.8+0.9)/3 -> |0.6667 - 0.8333| * 3/6 = 0.08333
    assert expected_calibration_error(LOGITS, LABELS, bins=2) == pytest.approx(13 / 60, abs=1e-6)


def test_ece_one_bin_is_the_overall_gap() -> None:
    # accuracy 4/6, mean confidence 3.7/6: |0.6667 - 0.6167| = 0.05; the binning is what makes 13/60 above.
    assert expected_calibration_error(LOGITS, LABELS, bins=1) == pytest.approx(0.05, abs=1e-6)


def test_ece_three_bins() -> None:
    # edges 0, 1/3, 2/3, 1: bin 2 holds s4 s5 s6 and bin 3 s1 s2 s3, as with two bins.
    assert expected_calibration_error(LOGITS, LABELS, bins=3) == pytest.approx(13 / 60, abs=1e-6)
    # Move s4 to confidence 0.6 (still right): bin 2 = s4 s5 s6 at confidence (0.6+0.4+0.4)/3, accuracy 2/3.
    probabilities = [row[:] for row in PROBABILITIES]
    probabilities[3] = [0.6, 0.2, 0.2]
    expected = abs(2 / 3 - 1.4 / 3) * 0.5 + abs(2 / 3 - 2.5 / 3) * 0.5  # 0.1 + 0.08333
    assert expected_calibration_error(logits_of(probabilities), LABELS, bins=3) == pytest.approx(expected, abs=1e-6)
    # With four bins (edges 0.25, 0.5, 0.75) s4 moves to (0.5, 0.75] alone: |1 - 0.6| * 1/6.
    expected = abs(1 / 2 - 0.4) * 2 / 6 + abs(1 - 0.6) * 1 / 6 + abs(2 / 3 - 2.5 / 3) * 3 / 6
    assert expected_calibration_error(logits_of(probabilities), LABELS, bins=4) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_are_the_two_bins_worked_out_for_ece() -> None:
    low, high = reliability_bins(LOGITS, LABELS, bins=2)
    assert (low["low"], low["high"], high["low"], high["high"]) == (0.0, 0.5, 0.5, 1.0)
    assert low["accuracy"] == pytest.approx(2 / 3) and low["confidence"] == pytest.approx(0.4, abs=1e-6)
    assert high["accuracy"] == pytest.approx(2 / 3) and high["confidence"] == pytest.approx(2.5 / 3, abs=1e-6)
    assert low["share"] == high["share"] == 0.5
    assert low["gap"] == pytest.approx(2 / 3 - 0.4, abs=1e-6) and high["gap"] == pytest.approx(2.5 / 3 - 2 / 3, abs=1e-6)
    assert len(reliability_bins(LOGITS, LABELS, bins=10)) == 3  # empty bins are left out: 0.4, 0.8, 0.9


def test_confusion_counts_by_hand() -> None:
    # predicted (argmax): s1 0, s2 0, s3 1, s4 0, s5 1, s6 2; actual 0 1 1 0 1 0
    assert confusion_counts(LOGITS, LABELS, 3).tolist() == [[2, 0, 1],   # actual 0: s1 s4 right, s6 -> 2
                                                             [1, 2, 0],   # actual 1: s2 -> 0, s3 s5 right
                                                             [0, 0, 0]]   # no sample of class 2


def test_ece_perfectly_calibrated() -> None:
    # Four samples at confidence 0.75, three of them right.
    logits = logits_of([[0.75, 0.25]] * 4)
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1]), bins=10) == pytest.approx(0.0, abs=1e-6)


def test_agreement() -> None:
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 1.0], [0.0, 9.0, 0.0]])
    # argmax 0,1,2,1 vs 0,2,2,1 -> 3 of 4 agree
    assert agreement(student, teacher) == pytest.approx(0.75)
    assert agreement(student, student) == 1.0


def test_classification_metrics_names_and_values() -> None:
    metrics = classification_metrics(LOGITS, LABELS, num_classes=3, ece_bins=2)
    assert set(metrics) == {"test_accuracy", "test_macro_f1", "test_nll", "test_ece"}
    assert metrics["test_accuracy"] == pytest.approx(4 / 6)
    assert metrics["test_ece"] == pytest.approx(13 / 60, abs=1e-6)
    # predicted 0,0,1,0,1,2 vs labels 0,1,1,0,1,0
    # class 0: TP 2, FP 1 (s2), FN 1 (s6) -> 4/6; class 1: TP 2, FP 0, FN 1 (s2) -> 4/5; class 2: TP 0, FP 1 -> 0
    assert metrics["test_macro_f1"] == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
