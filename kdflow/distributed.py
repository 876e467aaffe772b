"""Data-parallel training under torchrun: which process this is, and what the ranks agree on.

A stage launched by `torchrun --nproc_per_node N` (or by a stage whose `train.nproc_per_node` is N, which
relaunches itself so) joins one process group: gloo on the CPU, NCCL on GPUs, one GPU per rank
(`LOCAL_RANK`). Every rank trains on its slice of each global batch; rank 0 alone tracks, writes checkpoints,
curves and metrics, and saves the resume state, which every rank reads back.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device_setting: str) -> None:
    """Join the process group torchrun set up (once); NCCL when the ranks train on GPUs, else gloo."""
    if not launched() or dist.is_initialized():
        return
    gpus = device_setting.startswith("cuda") or (device_setting == "auto" and torch.cuda.is_available())
    if gpus:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpus else "gloo")


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_size()[0] == 0


def local_device(device: torch.device) -> torch.device:
    """A rank's own GPU (`cuda:LOCAL_RANK`) when the setting names CUDA without an index."""
    if device.type == "cuda" and device.index is None and rank_and_size()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def summed(value: torch.Tensor) -> torch.Tensor:
    """`value` added up over the ranks (itself when training alone)."""
    if rank_and_size()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's `values` on every rank, so decisions taken from them (early stopping, the best epoch) agree."""
    if rank_and_size()[1] == 1:
        return values
    carried = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(carried, 0)
    return carried.tolist()


def relaunch(nproc_per_node: int, module: str, args: list[str]) -> int:
    """Run `python -m module args` as `nproc_per_node` ranks under torchrun on this machine; its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", module, *args]
    return subprocess.run(command, check=False).returncode
