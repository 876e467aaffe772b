"""Test metrics, the same names for every model so MLflow's compare view lines them up."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def macro_f1(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean of per-class F1; a class never predicted nor present scores 0 and still counts."""
    predicted = logits.argmax(1)
    scores = []
    for cls in range(num_classes):
        true_pos = ((predicted == cls) & (labels == cls)).sum().item()
        false_pos = ((predicted == cls) & (labels != cls)).sum().item()
        false_neg = ((predicted != cls) & (labels == cls)).sum().item()
        denominator = 2 * true_pos + false_pos + false_neg
        scores.append(2 * true_pos / denominator if denominator else 0.0)
    return float(np.mean(scores))


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits, labels).item()


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> list[dict]:
    """The non-empty equal-width confidence bins: their edges, mean confidence, accuracy, |gap| between the two,
    and share of the samples, as a reliability diagram draws them."""
    confidence, predicted = F.softmax(logits, dim=1).max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            rows.append({"low": low.item(), "high": high.item(), "confidence": confidence[in_bin].mean().item(),
                         "accuracy": correct[in_bin].mean().item(),
                         "gap": (correct[in_bin].mean() - confidence[in_bin].mean()).abs().item(),
                         "share": in_bin.float().mean().item()})
    return rows


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Guo et al. (2017): |accuracy - confidence| per equal-width confidence bin, weighted by the bin's share."""
    error = 0.0
    for row in reliability_bins(logits, labels, bins):
        error += row["gap"] * row["share"]
    return error


def confusion_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """counts[actual, predicted]: how many test samples of each class went to each predicted class."""
    predicted = logits.argmax(1).numpy()
    flat = labels.numpy().astype(np.int64) * num_classes + predicted
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Share of samples where two models predict the same class (student vs teacher)."""
    return (logits.argmax(1) == reference_logits.argmax(1)).float().mean().item()


@torch.inference_mode()
def latency_ms_per_sample(model: nn.Module, example: torch.Tensor, repeats: int) -> float:
    """Median wall time of a single-sample forward pass on one CPU thread, after a warm-up.

    One thread, because thread start-up dominates tiny models and varies with the machine's load.
    """
    model.eval()
    single = example[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(10):
            model(single)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(single)
            timings.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(timings) * 1000)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ece_bins: int) -> dict:
    return {
        "test_accuracy": accuracy(logits, labels),
        "test_macro_f1": macro_f1(logits, labels, num_classes),
        "test_nll": negative_log_likelihood(logits, labels),
        "test_ece": expected_calibration_error(logits, labels, ece_bins),
    }
