"""The one training loop under every stage: mini-batch gradient descent over batches from kdflow.batches.

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
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdflow import distributed
from kdflow.augment import augment, augments
from kdflow.batches import InMemory, TrainingData
from kdflow.config import TrainSpec
from kdflow.progress import progress
from kdflow.resume import ResumeFile

LossFn = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    resumed_from_epoch: int = 0  # the last epoch a saved training state held; 0 for a fresh start
    untrained: dict[str, float] = field(default_factory=dict)  # `epochs: 0`: the validation scores as given

    @property
    def best(self) -> dict[str, float]:
        """The record of the epoch whose weights the model was left with."""
        return self.history[self.best_epoch - 1] if self.best_epoch else self.untrained


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
    """`auto` is CUDA when a GPU is visible, else the CPU (MPS only when asked for); a device that
    is not there is an error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is '{setting}' but no CUDA device is available; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"train.device is '{setting}' but only {torch.cuda.device_count()} CUDA device(s) are "
                         f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device is 'mps' but MPS (Apple silicon) is not available; use 'auto' or 'cpu'")
    return device


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Every global random state training draws from: the CPU's (dropout on the CPU) and the device's."""
    states = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        states["mps_rng"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    if device.type == "mps" and "mps_rng" in saved:
        torch.mps.set_rng_state(saved["mps_rng"])


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


@dataclass
class Training:
    """What one model trains, declared once as data by its stage (each stage's `trainings`): the stage trains it,
    lr-find sweeps its learning rate, a sweep trial trains it with other params.

    `build` makes the fresh model and seeds it itself, so every call gives the same initial weights and leaves
    the global RNG (dropout's) where the training expects it. `param_groups` and `before_epoch` take that model.
    """

    name: str  # its checkpoint, curve and MLflow run
    build: Callable[[], nn.Module]
    arch: Any  # the architecture spec its checkpoint records
    train: TrainSpec
    data: TrainingData  # in memory or streamed (kdflow.batches)
    val: tuple[torch.Tensor, torch.Tensor]
    seed: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    loss_fn: LossFn = cross_entropy_loss
    param_groups: Callable[[nn.Module], list[dict]] | None = None
    before_epoch: Callable[[nn.Module], Callable[[int], None] | None] | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)  # what else its MLflow run records

    def setup(self) -> tuple[nn.Module, list[dict] | None, Callable[[int], None] | None]:
        """A fresh model, its param groups (None: all its parameters at train.lr) and its per-epoch hook."""
        model = self.build()
        groups = self.param_groups(model) if self.param_groups is not None else None
        hook = self.before_epoch(model) if self.before_epoch is not None else None
        return model, groups, hook


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


class Replicas:
    """The model as the loop calls it: itself alone, or wrapped in DDP, rewrapped whenever the set of trainable
    parameters changes (DDP syncs the gradients of the parameters that were trainable when it wrapped)."""

    def __init__(self, model: nn.Module, device: torch.device, world: int):
        self.model, self.device, self.world = model, device, world
        self.trainable: tuple[bool, ...] | None = None
        self.wrapped: nn.Module = model

    def current(self) -> nn.Module:
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self.world > 1 and trainable != self.trainable:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.trainable = trainable
        return self.wrapped


def fit(model: nn.Module, x: torch.Tensor, targets: Sequence[torch.Tensor], spec: TrainSpec, **options) -> FitResult:
    """`fit_batches` over in-memory tensors."""
    return fit_batches(model, InMemory(x, targets), spec, **options)


def fit_batches(
    model: nn.Module,
    data: TrainingData,
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
    """Train `model` in place on `data` (kdflow.batches) and leave it at its best validation epoch.

    Model and in-memory tensors move once to `spec.device`; the model goes back to the device it came from
    afterwards (checkpoints stay loadable anywhere).

    In a torchrun process group (kdflow.distributed) the model is wrapped in DDP and each rank takes its slice of
    every global batch of `spec.batch_size` rows, weighted so the gradient is the global batch's mean; the loss
    curve is the one-process curve up to floating-point order. Validation values come from rank 0, so the ranks
    agree on the best epoch and on stopping early; only rank 0 saves the resume state.

    With `val`, early stopping watches `spec.monitor` with `spec.patience` and the best epoch's weights are kept;
    without it, the last epoch is kept.
    `on_epoch(epoch, record)` receives each epoch's `train_loss`, `val_loss`, `val_accuracy` and `lr`.
    Every learning rate is scaled by `lr_scale` (train.lr_scaling) at the resolved batch size.
    With `resume`, the training state is saved every `resume.every` epochs, and a saved state with the same
    fingerprint is continued from (its epochs' records are replayed through `on_epoch`); the caller removes it.
    """
    if spec.epochs == 0:  # a pretrained teacher that only labels: scored as it is
        model.eval()
        result = FitResult()
        if val is not None:
            result.best_val_loss, accuracy = evaluate_loss(model, *val)
            result.untrained = {"val_loss": result.best_val_loss, "val_accuracy": accuracy}
        return result
    device = distributed.local_device(resolve_device(spec.device))
    rank, world = distributed.rank_and_size()
    home = next(model.parameters(), torch.empty(0)).device
    model.to(device)
    data = data.to(device)
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    # A disabled torch.autocast still costs its enter and exit every step; a small model notices.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec.bf16 else contextlib.nullcontext()
    num_samples = data.num_samples
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
        restore_rng_states(saved, device)
        best_state, best_score, epochs_without_gain = saved["best_state"], saved["best_score"], saved["epochs_without_gain"]
        result.history, result.best_epoch, result.best_val_loss = saved["history"], saved["best_epoch"], saved["best_val_loss"]
        result.stopped_early = saved["stopped_early"]
        result.resumed_from_epoch = saved["epoch"]
        first_epoch = spec.epochs + 1 if result.stopped_early else saved["epoch"] + 1
        if rank == 0:
            print(f"{description}: resuming after epoch {saved['epoch']} from {resume.path}")
        if on_epoch is not None:
            for epoch, record in enumerate(result.history, start=1):
                on_epoch(epoch, record)

    epochs = progress(range(first_epoch, spec.epochs + 1), description, unit="epoch", shown=rank == 0)
    replicas = Replicas(model, device, world)
    # Augmentation draws from the shuffle generator, on each epoch's (or streamed window's) shuffled inputs.
    transform = (lambda x: augment(x, spec, shuffle)) if augments(spec) else None
    for epoch in epochs:
        if before_epoch is not None:
            before_epoch(epoch)
        started = time.perf_counter()
        model.train()
        net = replicas.current()  # rewrapped when gradual unfreezing changed what trains
        loss_sum = torch.zeros((), device=device)
        for x_batch, targets_batch in data.epoch(shuffle, batch_size, transform):
            global_rows = len(x_batch)
            if world > 1:
                x_batch = x_batch.tensor_split(world)[rank]
                targets_batch = [t.tensor_split(world)[rank] for t in targets_batch]
            with autocast:
                out = net(x_batch)
                loss = loss_fn(out, targets_batch) if len(x_batch) else out.sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each by its share of rows makes that the batch mean.
            (loss * (len(x_batch) * world / global_rows) if world > 1 else loss).backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(x_batch))
        record = {"train_loss": distributed.summed(loss_sum).item() / num_samples,
                  "lr": optimizer.param_groups[-1]["lr"]}
        if scheduler is not None:
            scheduler.step()
        if val is not None:
            record["val_loss"], record["val_accuracy"] = distributed.from_main(list(evaluate_loss(model, *val)),
                                                                               device)
        record["epoch_seconds"] = time.perf_counter() - started
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        epochs.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "val_accuracy")})

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
        if resume is not None and rank == 0 and (result.stopped_early or epoch % resume.every == 0):
            resume.save({
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "shuffle_rng": shuffle.get_state(), **rng_states(device),
                "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
                "history": result.history, "best_state": best_state, "best_score": best_score,
                "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                "epochs_without_gain": epochs_without_gain, "stopped_early": result.stopped_early,
            })
        if result.stopped_early:
            break
    epochs.close()
    if best_state is None:
        result.best_epoch = len(result.history)
    else:
        model.load_state_dict(best_state)
    model.to(home)
    model.eval()
    return result
