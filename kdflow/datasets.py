"""The on-disk form of a split: Parquet with `sample_id`, feature columns `f0..fN` and, if labelled, `label`.

Labels are class indices of the split's own task (0..K-1); the dataset card maps them back to class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import (BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError, conint,
                      model_validator)

from kdflow.artifacts import ArtifactError, read_json
from kdflow.layout import SPLITS
from kdflow.losses import UNLABELLED

FEATURE_PREFIX = "f"


@dataclass
class Split:
    sample_id: np.ndarray
    x: torch.Tensor
    y: torch.Tensor  # UNLABELLED (-1) where the split has no labels

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def labelled(self) -> bool:
        return bool((self.y != UNLABELLED).all())


def to_frame(sample_id: np.ndarray, features: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame:
    # Rows flattened (image-like samples too); an explicit width, since -1 is ambiguous for zero rows.
    features = features.reshape(len(features), int(np.prod(features.shape[1:]))).astype(np.float32)
    frame = pd.DataFrame(features, columns=[f"{FEATURE_PREFIX}{i}" for i in range(features.shape[1])])
    frame.insert(0, "sample_id", pd.Series(sample_id, dtype="string"))
    if labels is not None:
        frame["label"] = labels.astype(np.int64)
    return frame


def feature_columns(columns) -> list[str]:
    return [c for c in columns if c.startswith(FEATURE_PREFIX) and c[len(FEATURE_PREFIX) :].isdigit()]


def _unreadable(path: str | Path, exc: Exception) -> ArtifactError:
    first_line = (str(exc).splitlines() or [""])[0]
    return ArtifactError(path, f"not a readable Parquet file ({type(exc).__name__}: {first_line})")


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """The file, for streaming; a truncated or foreign file is an ArtifactError (a missing one stays
    FileNotFoundError, which names the stage to run first)."""
    try:
        # Without pre_buffer: with it, iter_batches keeps every column chunk it has read until the iterator ends,
        # so a streamed read grew by the file's size (2.2 MiB a chunk of 8192 MNIST-1D rows, measured).
        return pq.ParquetFile(path, pre_buffer=False)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None


def read_table(path: str | Path) -> pa.Table:
    parquet = open_parquet(path)
    try:
        return parquet.read()
    except (pa.ArrowException, OSError) as exc:  # a damaged page behind an intact footer
        raise _unreadable(path, exc) from None


class SplitRecord(BaseModel):
    """One split as the dataset card records it; `md5` is what the stages check the split file against."""

    model_config = ConfigDict(frozen=True)

    md5: StrictStr
    rows: StrictInt | None = None
    labelled: StrictBool | None = None
    class_counts: dict[str, StrictInt] = {}


class DatasetCard(BaseModel):
    """`prepare`'s record of the prepared data (data/prepared/dataset_card.json), the one form every stage reads:
    the input shape, each task's class names in label order, each split's record and the raw files' md5s."""

    model_config = ConfigDict(frozen=True)

    input_shape: tuple[conint(strict=True, gt=0), ...]
    source_classes: list[StrictStr]
    target_classes: list[StrictStr]
    splits: dict[str, SplitRecord]
    raw_files_md5: dict[str, StrictStr] | None = None  # only for a user's own files

    @model_validator(mode="after")
    def _every_split(self) -> "DatasetCard":
        missing = [name for name in SPLITS if name not in self.splits]
        if missing:
            raise ValueError(f"no record of the splits {missing}")
        return self

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def read_dataset_card(path: str | Path) -> DatasetCard:
    """`prepare`'s dataset card, checked for what the stages read from it."""
    try:
        return DatasetCard.model_validate(read_json(path))
    except ValidationError:
        raise ArtifactError(path, "not a dataset card (input_shape, source_classes, target_classes and every "
                                  "split's md5 are missing or malformed)") from None


def load_split(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Split:
    frame = read_table(path).to_pandas()
    if "sample_id" not in frame:
        raise ArtifactError(path, "not a kdflow split (no sample_id column)")
    features = frame[feature_columns(frame.columns)].to_numpy(dtype=np.float32)
    if input_shape is not None:
        if features.shape[1] != int(np.prod(input_shape)):
            raise ArtifactError(path, f"{features.shape[1]} features per row, not the {int(np.prod(input_shape))} "
                                      f"of the dataset card's input shape {list(input_shape)}")
        features = features.reshape(len(features), *input_shape)
    labels = frame["label"].to_numpy(np.int64) if "label" in frame else np.full(len(frame), UNLABELLED)
    # torch.tensor copies: the arrays may be read-only views of Arrow memory.
    return Split(frame["sample_id"].to_numpy(dtype=str), torch.tensor(features), torch.tensor(labels))


def teacher_logits_for(split: Split, path) -> torch.Tensor:
    """The stored logits (a soft_labels file) of `split`'s samples, matched by sample_id."""
    frame = read_table(path).to_pandas()
    if "sample_id" not in frame:
        raise ArtifactError(path, "not a soft-label file (no sample_id column)")
    frame = frame.set_index("sample_id")
    missing = np.setdiff1d(split.sample_id, frame.index.to_numpy(dtype=str))
    if len(missing):
        raise ArtifactError(path, f"no soft labels for {len(missing)} of the split's samples (e.g. {missing[0]})")
    return torch.tensor(frame.loc[split.sample_id].to_numpy(np.float32))
