"""The on-disk form of a split: Parquet with `sample_id`, feature columns `f0..fN` and, if labelled, `label`.

Labels are class indices of the split's own task (0..K-1); the dataset card maps them back to class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

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


def load_split(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Split:
    frame = pq.read_table(path).to_pandas()
    features = frame[feature_columns(frame.columns)].to_numpy(dtype=np.float32)
    if input_shape is not None:
        features = features.reshape(len(features), *input_shape)
    labels = frame["label"].to_numpy(np.int64) if "label" in frame else np.full(len(frame), UNLABELLED)
    # torch.tensor copies: the arrays may be read-only views of Arrow memory.
    return Split(frame["sample_id"].to_numpy(dtype=str), torch.tensor(features), torch.tensor(labels))
