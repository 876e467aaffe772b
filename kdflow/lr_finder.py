"""Learning-rate range test (Smith, "Cyclical learning rates", 2017; fastai's lr_find), on what a stage trains.

A throwaway copy of the model the stage would train takes `steps` mini-batch steps (the stage's batch size,
optimiser and loss) while the learning rate grows exponentially from `min_lr` to `max_lr`. The loss is smoothed
with a bias-corrected exponential moving average; the sweep stops once it diverges (above 4x its minimum).
The suggestion is the rate where the smoothed loss falls fastest per decade of learning rate, before its
minimum (falling back to a tenth of the minimum's rate when the curve is too short to have a slope).
Param groups keep their ratios (finetune's backbone runs at `backbone_lr_mult` of the head); the rates reported
are the head's, as they are applied, i.e. after `train.lr_scaling`: `train.lr` is the suggestion / lr_scale.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kdflow.layout import ProjectPaths
from kdflow.training import Training, lr_scale, make_optimizer, resolve_batch_size

SMOOTHING = 0.9  # a time constant of ~10 steps: 0.98 lags a 100-step sweep by half a decade
DIVERGENCE = 4.0


@dataclass
class Sweep:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    min_loss_lr: float

    def as_dict(self) -> dict:
        return asdict(self)


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in 0..steps-1."""
    if not 0 < min_lr < max_lr or steps < 2:
        raise ValueError(f"need 0 < min_lr < max_lr and steps >= 2 (got {min_lr}, {max_lr}, {steps})")
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average: a_i = beta a_(i-1) + (1 - beta) l_i, reported as a_i / (1 - beta^(i+1))."""
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (i + 1)))
    return smoothed


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> tuple[float, float]:
    """(steepest-descent rate before the minimum, rate at the minimum)."""
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return lrs[lowest] / 10, lrs[lowest]
    slope = np.gradient(np.asarray(smoothed[: lowest + 1]), np.log10(lrs[: lowest + 1]))
    return float(lrs[int(np.argmin(slope))]), float(lrs[lowest])


def range_test(training: Training, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100) -> Sweep:
    """The sweep on a fresh copy of what `training` declares, as its first epoch would set it up."""
    model, param_groups, before_epoch = training.setup()
    if before_epoch is not None:
        before_epoch(1)  # the first epoch's trainable blocks
    spec = training.train
    optimizer = make_optimizer(spec, param_groups if param_groups is not None else model.parameters())
    ratios = [group["lr"] / spec.lr for group in optimizer.param_groups]  # relative to the head's rate
    batch_size = resolve_batch_size(spec.batch_size, training.data.num_samples)
    shuffle = torch.Generator().manual_seed(training.seed)
    # Epoch after epoch of the training's own batches (in memory or streamed), as fit draws them.
    batches = itertools.chain.from_iterable(training.data.epoch(shuffle, batch_size) for _ in itertools.count())
    lrs, losses = [], []
    model.train()
    for lr, (x, targets) in zip(exponential_lrs(min_lr, max_lr, steps), batches):
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        loss = training.loss_fn(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lrs.append(lr)
        losses.append(loss.item())
        smoothed = smooth(losses)
        if not math.isfinite(losses[-1]) or (len(losses) > 1 and smoothed[-1] > DIVERGENCE * min(smoothed)):
            break
    smoothed = smooth(losses)
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    suggested, at_minimum = suggest([lrs[i] for i in finite], [smoothed[i] for i in finite])
    return Sweep(lrs, losses, smoothed, suggested, at_minimum)


def plot_sweep(sweep: Sweep, stage: str, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdflow.artifacts import atomic_path

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(sweep.lrs, sweep.losses, color="#bbb", linewidth=0.8, label="loss per batch")
    axis.plot(sweep.lrs, sweep.smoothed, color="#2a7", label="smoothed")
    axis.axvline(sweep.suggested_lr, color="#c33", linestyle="--", label=f"suggested {sweep.suggested_lr:.2e}")
    top = max(sweep.smoothed[0], min(sweep.smoothed)) * 1.5
    axis.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=f"Learning-rate range test: {stage}",
             ylim=(min(sweep.smoothed) * 0.9, top))
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def log_curve(tracked, sweep: Sweep) -> None:
    """The sweep as stepped metrics, in batches of MLflow's 1,000-metric limit rather than a call per step."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for step, values in enumerate(zip(sweep.lrs, sweep.losses, sweep.smoothed))
               for name, value in zip(("lr_find_lr", "lr_find_loss", "lr_find_smoothed_loss"), values)]
    for start in range(0, len(metrics), 1000):
        tracked.client.log_batch(tracked.run_id, metrics=metrics[start : start + 1000])


def lr_find(stage: str, training: Training, paths: ProjectPaths, min_lr: float = 1e-6, max_lr: float = 1.0,
            steps: int = 100) -> dict:
    """Run the range test on `training`, the first model `stage` trains (its `trainings` declares it); write
    plots/lr_find/<stage>.png and .json; log the run `lr_find:<stage>`."""
    from kdflow import tracking
    from kdflow.artifacts import write_json

    sweep = range_test(training, min_lr, max_lr, steps)
    scale = lr_scale(training.train, resolve_batch_size(training.train.batch_size, training.data.num_samples))
    summary = {"stage": stage, "suggested_lr": sweep.suggested_lr, "min_loss_lr": sweep.min_loss_lr,
               "suggested_train_lr": sweep.suggested_lr / scale, "steps_run": len(sweep.lrs)}
    plot, curve = paths.lr_find(stage, ".png"), paths.lr_find(stage, ".json")
    plot_sweep(sweep, stage, plot)
    write_json(curve, {**summary, **sweep.as_dict()})
    with tracking.start_run(paths.root, f"lr_find:{stage}", tags={"kdflow.stage": "lr_find"},
                             source="kdflow/lr_finder.py") as tracked:
        tracked.log_params({"stage": stage, "min_lr": min_lr, "max_lr": max_lr, "steps": steps, "seed": training.seed,
                            "model": training.name, "train": training.train.model_dump(mode="json")})
        log_curve(tracked, sweep)
        tracked.log_metrics({k: v for k, v in summary.items() if k != "stage"})
        tracked.log_artifact(plot, "lr_find")
        tracked.log_artifact(curve, "lr_find")
        summary["mlflow_run_id"] = tracked.run_id
    summary["plot"] = str(plot)
    return summary
