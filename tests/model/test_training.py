"""`kdflow.training.fit`: mini-batch gradient descent, from stochastic (batch 1) to full batch, with early stopping
on a validation set and the best epoch's weights kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdflow.config import TrainSpec
from kdflow.training import evaluate_loss, fit, resolve_batch_size


def blobs(n: int, seed: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated Gaussian blobs in 2-D; `flip` swaps the labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 2.0
    return x, (1 - y) if flip else y


def noisy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10-D inputs, label = sign of the first feature with 30 % of labels flipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] > 0).long()
    return x, torch.where(torch.rand(n, generator=g) < 0.3, 1 - y, y)


def linear(inputs: int = 2, outputs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(inputs, outputs)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def mse(output: torch.Tensor, targets) -> torch.Tensor:
    return F.mse_loss(output.squeeze(1), targets[0])


def test_resolve_batch_size() -> None:
    assert resolve_batch_size("full", 37) == 37
    assert resolve_batch_size(1, 37) == 1
    assert resolve_batch_size(100, 37) == 37


def test_training_loss_goes_down() -> None:
    x, y = blobs(64, seed=0)
    model = linear()
    before = F.cross_entropy(model(x), y).item()
    result = fit(model, x, [y], TrainSpec(epochs=5, batch_size=16, lr=0.05), seed=0)
    losses = [record["train_loss"] for record in result.history]
    assert len(losses) == 5
    assert losses[-1] < 0.5 * losses[0]
    after = F.cross_entropy(model(x), y).item()
    assert after < 0.5 * before
    assert (model(x).argmax(1) == y).float().mean().item() == 1.0
    assert result.best_epoch == 5 and not result.stopped_early  # without val the last epoch is kept


def test_full_batch_gradient_descent_reaches_least_squares() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.5, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(64, generator=g)
    design = torch.cat([x, torch.ones(64, 1)], 1).double()
    solution = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.squeeze(1).float()
    model = linear(3, 1)
    spec = TrainSpec(batch_size="full", optimizer="sgd", lr=0.2, epochs=400, patience=0)
    result = fit(model, x, [y], spec, seed=0, loss_fn=mse)
    torch.testing.assert_close(model.weight.detach().squeeze(0), solution[:3], rtol=0, atol=1e-4)
    torch.testing.assert_close(model.bias.detach(), solution[3:], rtol=0, atol=1e-4)
    # The last recorded loss is the mean squared residual of the least-squares fit (one step before the end).
    residual = ((design.float() @ solution - y) ** 2).mean().item()
    assert result.history[-1]["train_loss"] == pytest.approx(residual, rel=1e-3)


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [(1, 10), (4, 3), ("full", 1), (64, 1)])
def test_batches_per_epoch_and_weighted_train_loss(batch_size, steps_per_epoch: int) -> None:
    x, y = blobs(10, seed=1)
    calls: list[tuple[float, int]] = []

    def recording_loss(output, targets):
        loss = F.cross_entropy(output, targets[0])
        calls.append((loss.item(), len(output)))
        return loss

    epochs = 3
    result = fit(linear(), x, [y], TrainSpec(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=0.01),
                 seed=0, loss_fn=recording_loss)
    assert len(result.history) == epochs
    assert len(calls) == epochs * steps_per_epoch
    for epoch, record in enumerate(result.history):
        batch = calls[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        assert sum(size for _, size in batch) == 10
        assert record["train_loss"] == pytest.approx(sum(loss * size for loss, size in batch) / 10, rel=1e-6)


def test_stochastic_gradient_descent_one_history_entry_per_epoch() -> None:
    x, y = blobs(20, seed=2)
    seen: list[int] = []
    result = fit(linear(), x, [y], TrainSpec(epochs=4, batch_size=1, optimizer="sgd", lr=0.05), seed=3,
                 val=(x, y), on_epoch=lambda epoch, record: seen.append(epoch))
    assert len(result.history) == 4
    assert seen == [1, 2, 3, 4]
    assert result.history[-1]["val_accuracy"] == 1.0


def weights_after(train_seed: int, init_seed: int = 0) -> list[torch.Tensor]:
    x, y = blobs(32, seed=4)
    model = linear(seed=init_seed)
    fit(model, x, [y], TrainSpec(epochs=3, batch_size=4, optimizer="sgd", lr=0.1), seed=train_seed)
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    first, again, other = weights_after(7), weights_after(7), weights_after(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert max((a - b).abs().max().item() for a, b in zip(first, other)) > 1e-4


def test_fit_does_not_touch_the_global_random_state() -> None:
    # fit shuffles with its own generator, so the global stream is where it was (no dropout in this model).
    x, y = blobs(8, seed=0)
    model = linear(seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(model, x, [y], TrainSpec(epochs=2, batch_size=2), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = blobs(40, seed=5)
    val = blobs(40, seed=6, flip=True)  # the more the model learns, the worse it does here
    model = linear()
    initial_val_loss, _ = evaluate_loss(model, *val)
    spec = TrainSpec(epochs=30, batch_size=8, optimizer="sgd", lr=0.05, patience=2)
    result = fit(model, x, [y], spec, seed=0, val=val)
    val_losses = [record["val_loss"] for record in result.history]
    assert val_losses == sorted(val_losses) and val_losses[0] > initial_val_loss  # rises every epoch
    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 3  # epoch 1 best, epochs 2 and 3 without gain: patience 2 reached
    assert result.best_val_loss == val_losses[0]
    assert result.best == result.history[0]
    assert evaluate_loss(model, *val)[0] == pytest.approx(result.best_val_loss, rel=1e-6)
    assert not model.training


def test_patience_zero_never_stops() -> None:
    x, y = blobs(40, seed=5)
    val = blobs(40, seed=6, flip=True)
    result = fit(linear(), x, [y], TrainSpec(epochs=6, batch_size=8, optimizer="sgd", lr=0.05, patience=0),
                 seed=0, val=val)
    assert len(result.history) == 6
    assert not result.stopped_early
    assert result.best_epoch == 1


def test_min_delta_needs_a_real_improvement() -> None:
    x, y = blobs(40, seed=5)
    plain = fit(linear(), x, [y], TrainSpec(epochs=5, batch_size=8, optimizer="sgd", lr=0.05, patience=0),
                seed=0, val=(x, y))
    losses = [record["val_loss"] for record in plain.history]
    assert losses == sorted(losses, reverse=True) and plain.best_epoch == 5  # improves every epoch
    spec = TrainSpec(epochs=5, batch_size=8, optimizer="sgd", lr=0.05, patience=0, min_delta=10.0)
    result = fit(linear(), x, [y], spec, seed=0, val=(x, y))
    # No later epoch improves the first one's val loss by 10, so epoch 1 stays the best.
    assert result.best_epoch == 1


def test_monitor_val_accuracy_picks_the_most_accurate_epoch() -> None:
    x, y = noisy(60, seed=1)
    val = noisy(200, seed=101)
    by_loss = fit(mlp(1), x, [y], TrainSpec(epochs=25, batch_size=20, lr=0.02, patience=0), seed=1, val=val)
    model = mlp(1)
    by_accuracy = fit(model, x, [y], TrainSpec(epochs=25, batch_size=20, lr=0.02, patience=0,
                                               monitor="val_accuracy"), seed=1, val=val)
    accuracies = [record["val_accuracy"] for record in by_accuracy.history]
    losses = [record["val_loss"] for record in by_accuracy.history]
    # The monitor changes which weights are kept, not how training goes.
    assert [r["val_loss"] for r in by_loss.history] == losses
    assert by_accuracy.best_epoch == accuracies.index(max(accuracies)) + 1  # first epoch reaching the maximum
    assert by_loss.best_epoch == losses.index(min(losses)) + 1
    assert by_accuracy.best_epoch != by_loss.best_epoch  # on this noisy task they differ
    assert by_accuracy.best_val_loss == losses[by_accuracy.best_epoch - 1]
    assert evaluate_loss(model, *val)[1] == pytest.approx(max(accuracies))


def test_on_epoch_receives_the_record() -> None:
    x, y = blobs(16, seed=7)
    received: list[tuple[int, dict]] = []
    result = fit(linear(), x, [y], TrainSpec(epochs=3, batch_size=4, lr=0.01, patience=0), seed=0, val=(x, y),
                 on_epoch=lambda epoch, record: received.append((epoch, dict(record))))
    assert [epoch for epoch, _ in received] == [1, 2, 3]
    for (_, record), stored in zip(received, result.history):
        assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(record)
        assert record == stored
        assert record["lr"] == 0.01
        assert math.isfinite(record["train_loss"]) and 0.0 <= record["val_accuracy"] <= 1.0


def test_before_epoch_is_called_first() -> None:
    x, y = blobs(8, seed=0)
    events: list[str] = []
    fit(linear(), x, [y], TrainSpec(epochs=2, batch_size=8), seed=0,
        before_epoch=lambda epoch: events.append(f"before {epoch}"),
        on_epoch=lambda epoch, record: events.append(f"after {epoch}"))
    assert events == ["before 1", "after 1", "before 2", "after 2"]


def test_cosine_schedule_lowers_the_learning_rate() -> None:
    x, y = blobs(8, seed=0)
    epochs, lr = 5, 0.1
    result = fit(linear(), x, [y], TrainSpec(epochs=epochs, batch_size=8, optimizer="sgd", lr=lr, schedule="cosine"),
                 seed=0)
    rates = [record["lr"] for record in result.history]
    # The rate used in epoch e is lr/2 (1 + cos(pi (e-1) / epochs)): 0.1, 0.0905, 0.0655, 0.0345, 0.0095.
    expected = [lr / 2 * (1 + math.cos(math.pi * (e - 1) / epochs)) for e in range(1, epochs + 1)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_step_schedule() -> None:
    x, y = blobs(8, seed=0)
    result = fit(linear(), x, [y], TrainSpec(epochs=5, batch_size=8, lr=1.0, schedule="step", step_size=2, gamma=0.5),
                 seed=0)
    assert [record["lr"] for record in result.history] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])


def test_param_groups_keep_their_own_learning_rate() -> None:
    x, y = blobs(8, seed=0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model[0].parameters()]
    groups = [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[1].parameters()}]
    fit(model, x, [y], TrainSpec(epochs=2, batch_size=4, optimizer="sgd", lr=0.1), seed=0, param_groups=groups)
    assert all(torch.equal(a, b) for a, b in zip(before, model[0].parameters()))
