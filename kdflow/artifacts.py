"""Writing and reading artifacts without ever leaving a half-written file behind.

Every writer writes to a temporary file beside the target and renames it into place (atomic on POSIX), so a
stage killed mid-write leaves the previous good artifact intact.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, on failure remove it.

    A writer killed outright (SIGKILL) cannot remove its temporary; the next write of the same target does.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_text(text)
    return Path(target)


def write_json(target: str | Path, payload: Any) -> Path:
    return write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(source: str | Path) -> Any:
    return json.loads(Path(source).read_text())


# Row groups bound what a streaming reader (soft_labels) decodes at once; one group per file made its peak
# memory grow with the transfer set.
PARQUET_ROW_GROUP_ROWS = 16384


def write_parquet(target: str | Path, frame: pd.DataFrame) -> Path:
    """Parquet without the pandas index or a creation timestamp, so equal frames give equal bytes."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary, compression="zstd", row_group_size=PARQUET_ROW_GROUP_ROWS)
    return Path(target)


def save_checkpoint(target: str | Path, payload: dict[str, Any]) -> Path:
    """A checkpoint holds only tensors and plain data, so `load_checkpoint` can use weights_only=True."""
    with atomic_path(target) as temporary:
        torch.save(payload, temporary)
    return Path(target)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, tampered with or not ours; `path` names it."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def load_checkpoint(source: str | Path) -> dict[str, Any]:
    source = Path(source)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{source}: no such checkpoint; run the stage that writes it first", source) from None
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(
            f"{source}: refused to load ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the file is truncated, tampered with or not a kdflow checkpoint: delete it and rerun its stage",
            source,
        ) from None


def file_digest(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """MD5 of the file's bytes, the digest DVC records in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(path: str | Path) -> str:
    """One digest for a file or a whole directory (relative names and contents), ignoring temporary files."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.md5()
    for member in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        digest.update(f"{member.relative_to(path).as_posix()}:{file_digest(member)}\n".encode())
    return digest.hexdigest()
