"""`train.lr_scaling`: lr_effective = lr * (batch / reference_batch_size), or its square root, at the resolved batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdflow.config import ConfigError, TrainSpec, validate
from kdflow.training import effective_lr, fit, lr_scale


@pytest.mark.parametrize(
    ("scaling", "batch_size", "reference", "num_samples", "expected"),
    [
        ("none", 512, 32, 1000, 0.1),
        ("linear", 128, 32, 1000, 0.4),          # 0.1 * 128/32
        ("linear", 8, 32, 1000, 0.025),          # 0.1 * 8/32
        ("sqrt", 128, 32, 1000, 0.2),            # 0.1 * sqrt(4)
        ("sqrt", "full", 200, 50, 0.05),         # full batch = 50 samples: 0.1 * sqrt(50/200)
        ("linear", 500, 100, 200, 0.2),          # a batch larger than the set is the set: 0.1 * 200/100
    ],
)
def test_effective_lr_by_hand(scaling, batch_size, reference, num_samples, expected) -> None:
    spec = TrainSpec(lr=0.1, batch_size=batch_size, lr_scaling=scaling, reference_batch_size=reference)
    assert effective_lr(spec, num_samples) == pytest.approx(expected, rel=1e-12)


def test_fit_trains_every_param_group_at_the_scaled_rate() -> None:
    """SGD without momentum: one full-batch step moves each weight by lr_effective * its gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.arange(16) % 2
    groups = [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[1].parameters()}]
    spec = TrainSpec(epochs=1, batch_size="full", optimizer="sgd", lr=0.1, lr_scaling="sqrt", reference_batch_size=4)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    result = fit(model, x, [y], spec, seed=0, param_groups=groups)
    assert lr_scale(spec, 16) == 2.0
    assert result.history[0]["lr"] == pytest.approx(0.2)  # the head's group, the last one
    rates = [0.02, 0.02, 0.2, 0.2]  # backbone 0.01 * 2, head 0.1 * 2
    for start, grad, rate, after in zip(before, grads, rates, model.parameters()):
        torch.testing.assert_close(after.detach(), start - rate * grad)


def test_unknown_scaling_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'distill.train.lr_scaling' is 'square'; allowed values: 'none', 'linear' or 'sqrt'"):
        validate({"distill": {"train": {"lr_scaling": "square"}}})
