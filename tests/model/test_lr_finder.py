"""`kdflow.lr_finder`: the exponential sweep, the smoothing and the suggestion by hand, and a sweep on a quadratic
whose divergence point is known: gradient descent on least squares diverges above lr = 2 / λmax(Hessian)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdflow.batches import InMemory
from kdflow.config import TrainSpec
from kdflow.lr_finder import exponential_lrs, range_test, smooth, suggest
from kdflow.training import Training


def test_exponential_lrs_by_hand() -> None:
    assert exponential_lrs(1e-4, 1e-1, 4) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1], rel=1e-12)
    with pytest.raises(ValueError, match="need 0 < min_lr < max_lr"):
        exponential_lrs(1.0, 0.1, 10)


def test_smooth_is_a_bias_corrected_moving_average() -> None:
    # beta 0.5: a = 0.5, 1.25, 2.125; divided by 1 - 0.5^i = 0.5, 0.75, 0.875
    assert smooth([1.0, 2.0, 3.0], beta=0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])


def test_suggest_picks_the_steepest_descent_before_the_minimum() -> None:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    # slopes per decade (np.gradient over 1e-4..1e-1): -0.1, -0.5, -0.55, -0.2; the rise at 1.0 is ignored
    assert suggest(lrs, [2.0, 1.9, 1.0, 0.8, 3.0]) == pytest.approx((1e-2, 1e-1))
    assert suggest(lrs[:3], [1.0, 2.0, 3.0]) == pytest.approx((1e-5, 1e-4))  # no slope: a tenth of the minimum's


def test_sweep_on_least_squares_stops_past_the_divergence_point() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    y = x @ torch.tensor([1.0, -1.0, 2.0]) + 0.05 * torch.randn(128, generator=g)
    design = torch.cat([x, torch.ones(128, 1)], 1)
    critical = 2 / torch.linalg.eigvalsh(2 * design.T @ design / 128).max().item()  # Hessian of the mean squared error
    spec = TrainSpec(batch_size="full", optimizer="sgd", lr=0.1)

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(3, 1)

    training = Training("least_squares", model, None, spec, InMemory(x, [y]), (x, y), seed=0, input_shape=(3,), class_names=[],
                        loss_fn=lambda out, t: F.mse_loss(out.squeeze(1), t[0]))
    sweep = range_test(training, min_lr=1e-3, max_lr=10.0, steps=100)
    below = [loss for lr, loss in zip(sweep.lrs, sweep.losses) if lr < critical]
    assert all(later < earlier for earlier, later in zip(below, below[1:]))  # every component shrinks below 2/λmax
    assert sweep.lrs[-1] > critical and len(sweep.lrs) < 100  # stopped on divergence, past the critical rate
    assert 1e-3 < sweep.suggested_lr < critical
