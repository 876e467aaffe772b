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
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd

# torch, pandas and pyarrow are imported by the functions that use them: a flow's own process (which only orders
# and records stages) and the CLI's checks use this module without paying seconds for them.


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a pid of 0 or less: unknown, so assumed alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads' file creation)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (the entry lives in the directory, not the file)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _remove_dead_writers_temporaries(target: Path) -> None:
    """Remove temporaries of `target` left by writers that died; a live writer's is its own to finish."""
    # Exactly `.<name>.<pid>.<random>.tmp`: a longer name (`.<name>.1.<pid>.<random>.tmp`) is another target's.
    own = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.tmp")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        found = own.fullmatch(stale.name)
        if found and not process_alive(int(found.group(1))):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success make it durable and rename it onto `target`, on failure
    remove it.

    The file gets the mode a plain `open` would give (0666 less the umask), not mkstemp's 0600. The temporary's
    name holds the writer's pid (`.<name>.<pid>.<random>.tmp`): a writer killed outright (SIGKILL) cannot remove
    its temporary, and the next write of the same target removes it once that pid is gone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_temporaries(target)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, "rb+") as written:  # durable before it replaces the previous good file
            os.fsync(written.fileno())
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_text(text)
    return Path(target)


def write_json(target: str | Path, payload: Any) -> Path:
    return write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


class ArtifactError(RuntimeError):
    """An artifact that cannot be used as it is: unreadable, malformed, stale against its inputs, held by a live
    process, or in a place that cannot be written. `path` names it; `fix` says what to do, or None for "rerun the
    stage that writes it" (the caller knows that stage: kdflow.graph.producer)."""

    def __init__(self, path: str | Path, problem: str, fix: str | None = None):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.fix = Path(path), problem, fix


def read_json(source: str | Path) -> Any:
    try:
        return json.loads(Path(source).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(source, f"not valid JSON ({exc})") from None


def check_writable(directory: str | Path) -> None:
    """Fail now, not after training, when `directory` cannot take a new file (read-only, no permission, full).

    A folder not made yet is probed through its nearest existing parent, so checking creates nothing."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        handle, name = tempfile.mkstemp(prefix=f".writable.{os.getpid()}.", suffix=".tmp", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise ArtifactError(directory, f"cannot write there ({exc.strerror or exc})",
                            "make the folder writable (or free space on its disk) and rerun") from None


# Row groups bound what a streaming reader (soft_labels) decodes at once; one group per file made its peak
# memory grow with the transfer set.
PARQUET_ROW_GROUP_ROWS = 16384


def write_parquet(target: str | Path, frame: pd.DataFrame) -> Path:
    """Parquet without the pandas index or a creation timestamp, so equal frames give equal bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary, compression="zstd", row_group_size=PARQUET_ROW_GROUP_ROWS)
    return Path(target)


def save_checkpoint(target: str | Path, payload: dict[str, Any]) -> Path:
    """A checkpoint holds only tensors and plain data, so `load_checkpoint` can use weights_only=True."""
    import torch

    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        # Saved to a file object, not a path: torch names the zip's records after the path (here a random
        # temporary), so equal payloads would give other bytes on every save.
        torch.save(payload, handle)
    return Path(target)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, tampered with or not ours; `path` names it."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def load_checkpoint(source: str | Path) -> dict[str, Any]:
    import torch

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


def files_in(path: str | Path) -> list[Path]:
    """A file itself, or every file under a folder in name order, temporary files left out; [] when absent."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
