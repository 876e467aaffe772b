"""The one training loop under every stage: mini-batch gradient descent over in-memory tensors.

Each epoch draws one permutation, gathers the shuffled tensors once and then takes contiguous slices, so a
batch costs a view rather than a per-sample `Dataset.__getitem__` and a collate. `batch_size` 1 is stochastic
gradient descent, "full" (or any size >= the set) is full-batch gradient descent.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdflow.config import TrainSpec
from kdflow.resume import ResumeFile

LossFn = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    resumed_from_epoch: int = 0  # the last epoch a saved training state held; 0 for a fresh start

    @property
    def best(self) -> dict[str, float]:
        """The record of the epoch whose weights the model was left with."""
        return self.history[self.best_epoch - 1]


def resolve_batch_size(batch_size: int | str, num_samples: int) -> int:
    return num_samples if batch_size == "full" else min(int(batch_size), num_samples)


def lr_scale(spec: TrainSpec, batch_size: int) -> float:
    """The factor `train.lr_scaling` applies to every learning rate at this (resolved) batch size."""
    ratio = batch_size / spec.reference_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[spec.lr_scaling]


def effective_lr(spec: TrainSpec, num_samples: int) -> float:
    return spec.lr * lr_scale(spec, resolve_batch_size(spec.batch_size, num_samples))


@contextlib.contextmanager
def intra_op_threads(count: int):
    """Run with `count` torch intra-op threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(setting: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def make_optimizer(spec: TrainSpec, param_groups) -> torch.optim.Optimizer:
    """`param_groups` are parameters or torch param-group dicts; a group's own "lr" overrides `spec.lr`."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return torch.optim.Adam(param_groups, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(spec: TrainSpec, optimizer: torch.optim.Optimizer):
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    return None


def cross_entropy_loss(logits: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits, targets[0])


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[start : start + chunk_size]) for start in range(0, len(x), chunk_size)])
    model.train(was_training)
    return logits


def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy of `model` on a labelled set."""
    logits = predict_logits(model, x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def fit(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[torch.Tensor],
    spec: TrainSpec,
    *,
    seed: int,
    loss_fn: LossFn = cross_entropy_loss,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    param_groups=None,
    before_epoch: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    description: str = "train",
    resume: ResumeFile | None = None,
) -> FitResult:
    """Train `model` in place on (x, targets) and leave it at its best validation epoch.

    Model and tensors move once to `spec.device`; no batch is copied between devices, and the model goes back
    to the device it came from afterwards (checkpoints stay loadable anywhere).

    With `val`, early stopping watches `spec.monitor` with `spec.patience` and the best epoch's weights are kept;
    without it, the last epoch is kept.
    `on_epoch(epoch, record)` receives each epoch's `train_loss`, `val_loss`, `val_accuracy` and `lr`.
    Every learning rate is scaled by `lr_scale` (train.lr_scaling) at the resolved batch size.
    With `resume`, the training state is saved every `resume.every` epochs, and a saved state with the same
    fingerprint is continued from (its epochs' records are replayed through `on_epoch`); the caller removes it.
    """
    device = resolve_device(spec.device)
    home = next(model.parameters(), torch.empty(0)).device
    model.to(device)
    x, targets = x.to(device), [t.to(device) for t in targets]
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    # A disabled torch.autocast still costs its enter and exit every step; a small model notices.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec.bf16 else contextlib.nullcontext()
    num_samples = len(x)
    batch_size = resolve_batch_size(spec.batch_size, num_samples)
    optimizer = make_optimizer(spec, param_groups if param_groups is not None else model.parameters())
    for group in optimizer.param_groups:  # before the scheduler, which records these as its base rates
        group["lr"] *= lr_scale(spec, batch_size)
    scheduler = make_scheduler(spec, optimizer)
    shuffle = torch.Generator(device="cpu").manual_seed(seed)
    result = FitResult()
    best_state = None
    best_score = math.inf
    epochs_without_gain = 0
    first_epoch = 1

    saved = resume.load() if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(saved["requires_grad"][name])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        shuffle.set_state(saved["shuffle_rng"])
        torch.set_rng_state(saved["torch_rng"])
        best_state, best_score, epochs_without_gain = saved["best_state"], saved["best_score"], saved["epochs_without_gain"]
        result.history, result.best_epoch, result.best_val_loss = saved["history"], saved["best_epoch"], saved["best_val_loss"]
        result.stopped_early = saved["stopped_early"]
        result.resumed_from_epoch = saved["epoch"]
        first_epoch = spec.epochs + 1 if result.stopped_early else saved["epoch"] + 1
        print(f"{description}: resuming after epoch {saved['epoch']} from {resume.path}")
        if on_epoch is not None:
            for epoch, record in enumerate(result.history, start=1):
                on_epoch(epoch, record)

    progress = tqdm(range(first_epoch, spec.epochs + 1), desc=description, leave=False, dynamic_ncols=True,
                    disable=None)
    for epoch in progress:
        if before_epoch is not None:
            before_epoch(epoch)
        started = time.perf_counter()
        model.train()
        order = torch.randperm(num_samples, generator=shuffle).to(device)
        x_epoch = x[order]
        targets_epoch = [t[order] for t in targets]
        loss_sum = torch.zeros((), device=device)
        for start in range(0, num_samples, batch_size):
            stop = start + batch_size
            with autocast:
                loss = loss_fn(model(x_epoch[start:stop]), [t[start:stop] for t in targets_epoch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=min(stop, num_samples) - start)
        record = {"train_loss": loss_sum.item() / num_samples, "lr": optimizer.param_groups[-1]["lr"]}
        if scheduler is not None:
            scheduler.step()
        if val is not None:
            record["val_loss"], record["val_accuracy"] = evaluate_loss(model, *val)
        record["epoch_seconds"] = time.perf_counter() - started
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        progress.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "val_accuracy")})

        if val is not None:
            # Track the monitored value as "lower is better" so one comparison serves loss and accuracy.
            score = record["val_loss"] if spec.monitor == "val_loss" else -record["val_accuracy"]
            if score < best_score - spec.min_delta:
                best_score, result.best_epoch = score, epoch
                result.best_val_loss = record["val_loss"]
                best_state = copy.deepcopy(model.state_dict())
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
                result.stopped_early = bool(spec.patience and epochs_without_gain >= spec.patience)
        if resume is not None and (result.stopped_early or epoch % resume.every == 0):
            resume.save({
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state(),
                "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
                "history": result.history, "best_state": best_state, "best_score": best_score,
                "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                "epochs_without_gain": epochs_without_gain, "stopped_early": result.stopped_early,
            })
        if result.stopped_early:
            break
    progress.close()
    if best_state is None:
        result.best_epoch = len(result.history)
    else:
        model.load_state_dict(best_state)
    model.to(home)
    model.eval()
    return result
