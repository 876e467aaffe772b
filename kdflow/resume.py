"""Resumable training: `fit`'s whole state after an epoch, so a killed stage picks up where it stopped.

The state file holds the model, optimiser and scheduler, the shuffle generator and torch's global RNG (dropout),
the history, the best epoch's weights and score, the early-stopping counter, and which parameters were trainable
(gradual unfreezing changes that between epochs). It is written atomically and loaded with weights_only=True.
It is used only if its fingerprint (the model's settings, initial weights and data) matches the run's, so a
changed param or input starts afresh rather than continuing someone else's training. A training holds an
exclusive lock (`<state>.lock`, fcntl) from before it reads the state until it has removed it, so a second run
of the same stage stops rather than resume from, or overwrite, the state of a run that is still alive; the
kernel releases the lock when its holder dies, even by SIGKILL, so a killed run's state stays resumable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from kdflow.artifacts import ArtifactError, CheckpointError, load_checkpoint, save_checkpoint


def _update_with_tensor(digest, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes; same bytes otherwise
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def training_fingerprint(settings: dict[str, Any], model: nn.Module, tensors: Sequence[torch.Tensor | str]) -> str:
    """sha256 of the settings (JSON), the model's initial weights and the training/validation tensors (or, for
    data streamed from files, strings naming the files' digests)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        _update_with_tensor(digest, value)
    for tensor in tensors:
        if isinstance(tensor, str):
            digest.update(tensor.encode())
        else:
            _update_with_tensor(digest, tensor)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResumeFile:
    """Where one model's training state lives, the fingerprint it must carry, and how often it is saved."""

    path: Path
    fingerprint: str
    every: int = 1

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the state's lock while training; an ArtifactError naming the holder if a live process has it."""
        lock = self.path.with_name(self.path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ArtifactError(self.path, f"in use by a training that is still running ({holder}); not resumed "
                                               "from, nor touched",
                                    "wait for that run to finish (or stop it) before running the stage again") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            yield  # closing the file releases the lock

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it belongs to other settings or it cannot be read."""
        if not self.path.exists():
            return None
        try:
            state = load_checkpoint(self.path)
        except CheckpointError as exc:
            print(f"not resuming: {exc}")
            return None
        if state.get("fingerprint") != self.fingerprint:
            print(f"not resuming: {self.path} was saved for other params or inputs; starting afresh")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, {"fingerprint": self.fingerprint, **state})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
