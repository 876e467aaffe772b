"""`kdflow.losses.kd_loss` against values worked out by hand with `math`, never with `F.kl_div`.

L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s), KL summed over classes and
averaged over all samples of the batch (batchmean); CE averaged over the labelled samples only.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdflow.losses import UNLABELLED, kd_loss

# Two samples, three classes, small logits.
STUDENT = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]
TEACHER = [[2.0, 0.5, 0.0], [0.0, 1.5, -0.5]]
LABELS = [0, 1]


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(z / temperature) for z in logits]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i (log p_i - log q_i)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def soft_term(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T^2 times the per-sample mean of KL(p_teacher^T || p_student^T)."""
    total = sum(kl(softmax(t, temperature), softmax(s, temperature)) for s, t in zip(student, teacher))
    return temperature**2 * total / len(student)


def cross_entropy(student: list[list[float]], labels: list[int]) -> float:
    """Mean of -log softmax(z_s)[y] over the labelled samples."""
    losses = [-math.log(softmax(s)[y]) for s, y in zip(student, labels) if y != UNLABELLED]
    return sum(losses) / len(losses)


def loss(student, teacher, labels, temperature, alpha) -> float:
    return kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature, alpha).item()


def test_closed_form_kl_and_the_t_squared_factor() -> None:
    # Teacher logits (ln 3, 0) at T=1 and (4 ln 3, 0) at T=4 both give p_t = (3/4, 1/4); a student at (0, 0) gives
    # p_s = (1/2, 1/2). KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120..., identical at both temperatures,
    # so the T=4 loss must be exactly 16 times the T=1 loss.
    expected_kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert expected_kl == pytest.approx(0.1308120, abs=1e-7)
    at_t1 = loss([[0.0, 0.0]], [[math.log(3), 0.0]], [0], temperature=1.0, alpha=1.0)
    at_t4 = loss([[0.0, 0.0]], [[4 * math.log(3), 0.0]], [0], temperature=4.0, alpha=1.0)
    assert at_t1 == pytest.approx(expected_kl, rel=1e-5)
    assert at_t4 == pytest.approx(16 * expected_kl, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_alpha_one_is_t_squared_kl_batchmean(temperature: float) -> None:
    expected = soft_term(STUDENT, TEACHER, temperature)
    assert loss(STUDENT, TEACHER, LABELS, temperature, alpha=1.0) == pytest.approx(expected, rel=1e-5)


def test_soft_term_values_written_out() -> None:
    # The numbers the helper gives for STUDENT/TEACHER, pinned so a wrong helper cannot hide a wrong loss.
    assert soft_term(STUDENT, TEACHER, 1.0) == pytest.approx(0.203965, abs=1e-6)
    assert soft_term(STUDENT, TEACHER, 4.0) == pytest.approx(0.217639, abs=1e-6)


def test_batchmean_divides_by_samples_not_by_elements() -> None:
    one = loss(STUDENT[:1], TEACHER[:1], LABELS[:1], 2.0, alpha=1.0)
    two = loss(STUDENT[1:], TEACHER[1:], LABELS[1:], 2.0, alpha=1.0)
    both = loss(STUDENT, TEACHER, LABELS, 2.0, alpha=1.0)
    assert both == pytest.approx((one + two) / 2, rel=1e-6)


def test_alpha_zero_is_plain_cross_entropy_on_labels() -> None:
    expected = cross_entropy(STUDENT, LABELS)
    # -log softmax([1, 0, -1])[0] = 0.407606; -log softmax([0.5, 0.2, 0.1])[1] = 1.180099
    assert expected == pytest.approx((0.4076060 + 1.1800989) / 2, abs=1e-6)
    # The temperature plays no part when alpha = 0.
    for temperature in (1.0, 7.0):
        assert loss(STUDENT, TEACHER, LABELS, temperature, alpha=0.0) == pytest.approx(expected, rel=1e-5)


def test_alpha_weighs_the_soft_term() -> None:
    temperature = 2.0
    soft = soft_term(STUDENT, TEACHER, temperature)
    hard = cross_entropy(STUDENT, LABELS)
    expected = 0.3 * soft + 0.7 * hard
    assert loss(STUDENT, TEACHER, LABELS, temperature, alpha=0.3) == pytest.approx(expected, rel=1e-5)
    # The other convention (alpha on the hard term) gives a different number for these inputs.
    assert expected != pytest.approx(0.7 * soft + 0.3 * hard, rel=1e-3)


def test_unlabelled_samples_count_in_the_soft_term_only() -> None:
    student = STUDENT + [[0.0, 2.0, 1.0]]
    teacher = TEACHER + [[1.0, 1.0, -2.0]]
    labels = LABELS + [UNLABELLED]
    temperature, alpha = 3.0, 0.4
    soft = soft_term(student, teacher, temperature)  # all three samples, divided by 3
    hard = cross_entropy(STUDENT, LABELS)  # the two labelled samples, divided by 2
    expected = alpha * soft + (1 - alpha) * hard
    assert loss(student, teacher, labels, temperature, alpha) == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_labels_gives_the_weighted_soft_term() -> None:
    labels = [UNLABELLED, UNLABELLED]
    expected = 0.4 * soft_term(STUDENT, TEACHER, 2.0)
    assert loss(STUDENT, TEACHER, labels, 2.0, alpha=0.4) == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_on_an_unlabelled_batch_can_be_backpropagated() -> None:
    student = torch.tensor(STUDENT, requires_grad=True)
    value = kd_loss(student, torch.tensor(TEACHER), torch.tensor([UNLABELLED, UNLABELLED]), 2.0, alpha=0.0)
    value.backward()
    assert student.grad is not None and torch.count_nonzero(student.grad) == 0


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_identical_logits_give_zero_soft_loss(temperature: float) -> None:
    assert loss(STUDENT, STUDENT, LABELS, temperature, alpha=1.0) == pytest.approx(0.0, abs=1e-7)


def student_gradient(temperature: float) -> torch.Tensor:
    student = torch.tensor(STUDENT, requires_grad=True)
    kd_loss(student, torch.tensor(TEACHER), torch.tensor(LABELS), temperature, alpha=1.0).backward()
    return student.grad


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_gradient_is_t_times_probability_gap(temperature: float) -> None:
    # d/dz_s [T^2 KL(p_t^T || p_s^T)] / N = T^2 * (p_s^T - p_t^T) / (T N) = T (p_s^T - p_t^T) / N
    n = len(STUDENT)
    expected = [
        [temperature * (ps - pt) / n for ps, pt in zip(softmax(s, temperature), softmax(t, temperature))]
        for s, t in zip(STUDENT, TEACHER)
    ]
    torch.testing.assert_close(student_gradient(temperature), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_t_squared_keeps_the_gradient_size_as_t_grows() -> None:
    # For large T, p^T = 1/K + (z - mean z)/(K T) + O(1/T^2), so the gradient T (p_s^T - p_t^T) / N tends to
    # (d - mean d) / (K N) with d = z_s - z_t: independent of T. Without T^2 it would shrink as 1/T^2 (1/400 at T=20).
    n, k = len(STUDENT), len(STUDENT[0])
    limit = []
    for s, t in zip(STUDENT, TEACHER):
        d = [zs - zt for zs, zt in zip(s, t)]
        mean = sum(d) / k
        limit.append([(di - mean) / (k * n) for di in d])
    limit = torch.tensor(limit)
    high = student_gradient(100.0)
    torch.testing.assert_close(high, limit, rtol=0.02, atol=1e-4)
    ratio = (student_gradient(20.0).norm() / student_gradient(1.0).norm()).item()
    # |grad at T=1| = 0.2693, |grad at T=20| = 0.2641, |limit| = 0.2611: the ratio stays of order one
    # (about 0.98), far from the 1/400 it would be without the T^2 factor.
    assert 0.5 < ratio < 2.0
    assert student_gradient(1.0).norm().item() == pytest.approx(0.2693, abs=1e-4)
    assert limit.norm().item() == pytest.approx(0.26105, abs=1e-5)
