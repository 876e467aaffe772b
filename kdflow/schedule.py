"""Scheduling the stage graph: which stages may start, where each runs, and what the best schedule costs.

Pure functions of the graph (kdflow.graph.needs) and of measured seconds, which the flow (flows/pipeline.py) and
the benchmark (benchmarks/pipeline_overhead.py) both use; and use_slot, which puts a worker process in its slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


def ready(pending: Sequence[str], done: set[str], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """The pending stages whose every upstream stage is done, in the order given."""
    return [stage for stage in pending if all(up in done for up in needs[stage])]


def critical_path(seconds: Mapping[str, float], needs: Mapping[str, Sequence[str]]) -> tuple[float, list[str]]:
    """The longest chain of dependent stages by `seconds`, and its stages in order. `seconds` is in an order
    where every stage comes after those it needs (the pipeline's), as is `needs`."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for stage, cost in seconds.items():
        before = max(needs[stage], key=lambda up: finish[up], default=None)
        finish[stage] = cost + (finish[before] if before is not None else 0.0)
        via[stage] = before
    last = max(finish, key=finish.get)
    chain = [last]
    while via[chain[-1]] is not None:
        chain.append(via[chain[-1]])
    return finish[last], chain[::-1]


def bound(seconds: Mapping[str, float], needs: Mapping[str, Sequence[str]], cores: int) -> float:
    """No schedule on `cores` cores finishes sooner than its critical path, or than its work spread evenly."""
    return max(critical_path(seconds, needs)[0], sum(seconds.values()) / cores)


@dataclass(frozen=True)
class Slot:
    """Where one running stage trains: `threads` intra-op threads, and a GPU index when GPUs are used."""

    index: int
    threads: int
    gpu: int | None = None


def slots(workers: int, cores: int, gpus: int) -> list[Slot]:
    """`workers` places for stages to run at once, each with its share of the cores (at least one thread), and,
    with GPUs, one GPU each in turn, so that two trainings do not fight over the same cores or device."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    threads = max(1, cores // workers)
    return [Slot(i, threads, i % gpus if gpus else None) for i in range(workers)]


def default_workers(cores: int, gpus: int, width: int) -> int:
    """One stage per GPU when several are visible, else one per core; never more than can run at once (`width`)."""
    return max(1, min(gpus if gpus > 1 else cores, width))


def width(needs: Mapping[str, Sequence[str]]) -> int:
    """The most stages that can run at once: the largest set of stages none of which depends on another. By
    trying every set, which is instant for a pipeline's handful of stages."""
    above: dict[str, set[str]] = {}
    for stage in needs:  # pipeline order: a stage's upstream stages have their sets already
        above[stage] = set(needs[stage]).union(*(above[up] for up in needs[stage]))
    stages = list(needs)
    widest = 0
    for mask in range(1, 2 ** len(stages)):
        chosen = [stage for i, stage in enumerate(stages) if mask >> i & 1]
        if len(chosen) > widest and not any(up in chosen for stage in chosen for up in above[stage]):
            widest = len(chosen)
    return widest


def use_slot(slot: Slot) -> None:
    """Make this process train in `slot`: its intra-op threads, and its GPU as torch's current CUDA device (what
    `train.device: auto` resolves to)."""
    import torch

    torch.set_num_threads(slot.threads)
    if slot.gpu is not None:
        torch.cuda.set_device(slot.gpu)
