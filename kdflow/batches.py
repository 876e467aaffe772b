"""Where `fit` takes its batches from: one interface, an in-memory path and a streamed one.

`TrainingData.epoch(shuffle, batch_size)` yields one epoch's batches `(x, [targets...])` in an order drawn from
`shuffle`. `InMemory` holds the set as tensors and gathers one permutation per epoch (the fastest path). `Streamed`
reads the rows' Parquet files a row group at a time in decoding threads: each epoch shuffles the order of the row
groups, holds `shuffle_row_groups` of them at once, shuffles their rows together and cuts batches, so memory stays
flat however many rows there are. The two paths see the rows in different orders, so the same seed gives the same
numbers on each path but not across them (accuracy agrees within the seed-to-seed spread; see tests/model).

`training_data` picks the path: in memory when the set fits `train.memory_budget_mb`, streamed otherwise.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdflow.artifacts import ArtifactError, file_digest
from kdflow.config import TrainSpec
from kdflow.datasets import feature_columns, load_split, open_parquet, teacher_logits_for
from kdflow.losses import UNLABELLED

Batch = tuple[torch.Tensor, list[torch.Tensor]]
Transform = Callable[[torch.Tensor], torch.Tensor]
# What a target column holds: the split's labels, the teacher's logits, or their argmax (hard labels).
TARGETS = ("label", "logits", "argmax")
_BYTES_PER_VALUE = {"label": 8, "logits": 4, "argmax": 8}
ALIGN_CHECK_ROWS = 65536  # rows of sample_id compared at a time when checking that two files line up


class TrainingData(Protocol):
    num_samples: int

    def epoch(self, shuffle: torch.Generator, batch_size: int, transform: Transform | None = None) -> Iterator[Batch]:
        """One epoch's batches; `transform` (augmentation) applies to the shuffled inputs before they are cut."""
        ...

    def identity(self) -> list[torch.Tensor | str]:
        """What the resume fingerprint hashes for the data: its tensors, or its files' md5s."""
        ...


class InMemory:
    """The set as tensors on the training device; one gather per epoch, then each batch is a view."""

    def __init__(self, x: torch.Tensor, targets: Sequence[torch.Tensor]):
        self.x, self.targets = x, list(targets)
        self.num_samples = len(x)

    def to(self, device: torch.device) -> "InMemory":
        return InMemory(self.x.to(device), [t.to(device) for t in self.targets])

    def epoch(self, shuffle: torch.Generator, batch_size: int, transform: Transform | None = None) -> Iterator[Batch]:
        order = torch.randperm(self.num_samples, generator=shuffle).to(self.x.device)
        x, targets = self.x[order], [t[order] for t in self.targets]
        if transform is not None:
            x = transform(x)
        for start in range(0, self.num_samples, batch_size):
            yield x[start : start + batch_size], [t[start : start + batch_size] for t in targets]

    def identity(self) -> list[torch.Tensor | str]:
        return [self.x, *self.targets]


@dataclass(frozen=True)
class Rows:
    """One split's rows: its Parquet file, and the teacher's logits for it (soft_labels' file), if a target uses them."""

    split: Path
    soft_labels: Path | None = None


def _row_offsets(parquet: pq.ParquetFile) -> list[int]:
    """The first row of every row group, and the row count at the end."""
    offsets = [0]
    for group in range(parquet.metadata.num_row_groups):
        offsets.append(offsets[-1] + parquet.metadata.row_group(group).num_rows)
    return offsets


def _read_rows(parquet: pq.ParquetFile, offsets: list[int], start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of the file, decoding only the row groups that hold them."""
    first = bisect.bisect_right(offsets, start) - 1
    last = bisect.bisect_left(offsets, stop)
    table = parquet.read_row_groups(list(range(first, last)), columns=columns)
    return table.slice(start - offsets[first], stop - start)


def _numpy(table: pa.Table, columns: list[str], dtype) -> np.ndarray:
    return np.stack([table.column(name).to_numpy() for name in columns], axis=1).astype(dtype, copy=False)


class _RowGroupReader:
    """Item i: the inputs and targets of the i-th row group of the split files, as tensors (called by the decoding
    threads, each with its own open files)."""

    def __init__(self, rows: Sequence[Rows], targets: Sequence[str], input_shape: tuple[int, ...]):
        self.rows, self.targets, self.input_shape = list(rows), list(targets), input_shape
        self.groups = []  # (file index, first row, stop row)
        for index, part in enumerate(self.rows):
            offsets = _row_offsets(open_parquet(part.split))
            self.groups += [(index, a, b) for a, b in zip(offsets, offsets[1:])]
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.groups)

    def _file(self, path: Path) -> tuple[pq.ParquetFile, list[int]]:
        opened = self._local.__dict__.setdefault("files", {})
        if path not in opened:  # opened once per thread: a ParquetFile is not shared between readers
            parquet = pq.ParquetFile(path)
            opened[path] = (parquet, _row_offsets(parquet))
        return opened[path]

    def __getitem__(self, group: int) -> Batch:
        index, start, stop = self.groups[group]
        part = self.rows[index]
        parquet, offsets = self._file(part.split)
        names = parquet.schema_arrow.names
        features = feature_columns(names)
        split = _read_rows(parquet, offsets, start, stop, features + (["label"] if "label" in names else []))
        x = torch.from_numpy(_numpy(split, features, np.float32)).reshape(stop - start, *self.input_shape)
        logits = None
        if {"logits", "argmax"} & set(self.targets):
            soft, soft_offsets = self._file(part.soft_labels)
            columns = [c for c in soft.schema_arrow.names if c.startswith("logit_")]
            logits = torch.from_numpy(_numpy(_read_rows(soft, soft_offsets, start, stop, columns), columns, np.float32))
        labels = (torch.from_numpy(split.column("label").to_numpy().astype(np.int64)) if "label" in names
                  else torch.full((stop - start,), UNLABELLED, dtype=torch.int64))
        made = {"label": lambda: labels, "logits": lambda: logits, "argmax": lambda: logits.argmax(1)}
        return x, [made[name]() for name in self.targets]


def _read_ahead(read: Callable[[int], Batch], order: list[int], workers: int) -> Iterator[Batch]:
    """`read(i)` for each i of `order`, in that order, decoded by `workers` threads up to 2 * workers ahead (inline
    with none). Parquet decoding releases the GIL, so the threads overlap it with training."""
    if workers == 0:
        yield from map(read, order)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="row-groups") as pool:
        pending: collections.deque[Future] = collections.deque()
        for group in order:
            pending.append(pool.submit(read, group))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Streamed:
    """The set read from its Parquet files a row group at a time by `workers` threads, shuffled in windows of
    `shuffle_row_groups` row groups; batches are full except the epoch's last."""

    def __init__(self, rows: Sequence[Rows], targets: Sequence[str], input_shape: tuple[int, ...], *,
                 workers: int, shuffle_row_groups: int):
        check_aligned(rows, targets)
        self.rows, self.targets = list(rows), list(targets)
        self.reader = _RowGroupReader(rows, targets, input_shape)
        self.num_samples = sum(stop - start for _, start, stop in self.reader.groups)
        self.window, self.workers = shuffle_row_groups, workers
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> "Streamed":
        self.device = device
        return self

    def epoch(self, shuffle: torch.Generator, batch_size: int, transform: Transform | None = None) -> Iterator[Batch]:
        order = torch.randperm(len(self.reader), generator=shuffle).tolist()
        loaded = _read_ahead(self.reader.__getitem__, order, self.workers)
        rest: list[Batch] = []
        while True:
            fresh = list(itertools.islice(loaded, self.window))
            last = len(fresh) < self.window
            held = rest + fresh
            if not held:
                return
            order = torch.randperm(sum(len(item[0]) for item in held), generator=shuffle)
            x = torch.cat([item[0] for item in held])[order]
            targets = [torch.cat([item[1][k] for item in held])[order] for k in range(len(self.targets))]
            del held, fresh  # only the shuffled window stays alive while its batches train
            # Full batches now; the rest joins the next window, so only the epoch's last batch is short.
            full = len(x) if last else len(x) - len(x) % batch_size
            on_device = x[:full].to(self.device), [t[:full].to(self.device) for t in targets]
            if transform is not None:
                on_device = transform(on_device[0]), on_device[1]
            for start in range(0, full, batch_size):
                yield on_device[0][start : start + batch_size], [t[start : start + batch_size] for t in on_device[1]]
            if last:
                return
            # Copies, so that this window's tensors are freed before the next is read.
            rest = [(x[full:].clone(), [t[full:].clone() for t in targets])] if full < len(x) else []

    def identity(self) -> list[torch.Tensor | str]:
        files = [path for part in self.rows for path in (part.split, part.soft_labels) if path is not None]
        return [*self.targets, *(f"{path.name}:{file_digest(path)}" for path in files)]


def check_aligned(rows: Sequence[Rows], targets: Sequence[str]) -> None:
    """The streamed join by sample_id: every soft-label file must list the split's sample_ids in the split's order
    (soft_labels writes it so); checked a chunk of sample_ids at a time, never loading either file whole."""
    if not {"logits", "argmax"} & set(targets):
        return
    for part in rows:
        if part.soft_labels is None:
            raise ValueError(f"{part.split}: a logits target needs the split's soft labels")
        split, soft = open_parquet(part.split), open_parquet(part.soft_labels)
        if "sample_id" not in soft.schema_arrow.names:
            raise ArtifactError(part.soft_labels, "not a soft-label file (no sample_id column)")
        if split.metadata.num_rows != soft.metadata.num_rows:
            raise ArtifactError(part.soft_labels, f"{soft.metadata.num_rows} rows of soft labels for the "
                                                  f"{split.metadata.num_rows} of {part.split}")
        chunks = zip(split.iter_batches(ALIGN_CHECK_ROWS, columns=["sample_id"]),
                     soft.iter_batches(ALIGN_CHECK_ROWS, columns=["sample_id"]))
        for ours, theirs in chunks:
            if not ours.column(0).cast(pa.string()).equals(theirs.column(0).cast(pa.string())):
                raise ArtifactError(part.soft_labels, f"its sample_ids are not in the order of {part.split}, which "
                                                      "the streamed path joins them by")


def in_memory_bytes(rows: Sequence[Rows], targets: Sequence[str]) -> int:
    """What the in-memory path would hold: the rows' features and targets, twice (each epoch gathers a copy)."""
    total = 0
    for part in rows:
        parquet = open_parquet(part.split)
        per_row = 4 * len(feature_columns(parquet.schema_arrow.names))
        if {"logits", "argmax"} & set(targets):
            logit_columns = [c for c in open_parquet(part.soft_labels).schema_arrow.names if c.startswith("logit_")]
        for name in targets:
            per_row += _BYTES_PER_VALUE[name] * (len(logit_columns) if name == "logits" else 1)
        total += 2 * per_row * parquet.metadata.num_rows
    return total


def load_in_memory(rows: Sequence[Rows], targets: Sequence[str], input_shape: tuple[int, ...]) -> InMemory:
    """The rows as tensors; soft labels are joined to the splits by sample_id (in any order)."""
    xs, columns = [], {name: [] for name in TARGETS}
    for part in rows:
        split = load_split(part.split, input_shape)
        xs.append(split.x)
        columns["label"].append(split.y)
        if {"logits", "argmax"} & set(targets):
            logits = teacher_logits_for(split, part.soft_labels)
            columns["logits"].append(logits)
            columns["argmax"].append(logits.argmax(1))
    return InMemory(torch.cat(xs), [torch.cat(columns[name]) for name in targets])


def argmax_targets(data: InMemory | Streamed, rows: Sequence[Rows], input_shape: tuple[int, ...],
                   spec: TrainSpec) -> InMemory | Streamed:
    """The rows of `data` (whose first target is the teacher's logits) with the logits' argmax as the only target:
    hard labels. An in-memory set shares its inputs rather than load them twice."""
    if isinstance(data, InMemory):
        return InMemory(data.x, [data.targets[0].argmax(1)])
    return Streamed(rows, ["argmax"], input_shape, workers=spec.stream_workers, shuffle_row_groups=spec.shuffle_row_groups)


def training_data(rows: Sequence[Rows], targets: Sequence[str], input_shape: tuple[int, ...],
                  spec: TrainSpec) -> InMemory | Streamed:
    """In memory when the set fits `spec.memory_budget_mb`, else streamed from its files."""
    if in_memory_bytes(rows, targets) <= spec.memory_budget_mb * 2**20:
        return load_in_memory(rows, targets, input_shape)
    return Streamed(rows, targets, input_shape, workers=spec.stream_workers,
                    shuffle_row_groups=spec.shuffle_row_groups)
