"""`write_logits`: the teacher's logits for every row of a Parquet split, streamed in chunks, rows in order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow.artifacts import write_parquet
from kdflow.config import CNN1DSpec
from kdflow.datasets import to_frame
from models import build_model
from tasks.soft_labels import read_ahead, write_logits


def test_read_ahead_yields_every_item_in_order() -> None:
    assert list(read_ahead(iter(range(7)))) == list(range(7))
    assert list(read_ahead(iter([]))) == []


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_logits_match_the_teacher_row_for_row(tmp_path, chunk_size: int) -> None:
    rows, classes = 50, 5
    features = np.random.default_rng(0).normal(size=(rows, 40)).astype(np.float32)
    ids = np.array([f"s{i:03d}" for i in range(rows)])
    source = write_parquet(tmp_path / "split.parquet", to_frame(ids, features, None))
    torch.manual_seed(0)
    teacher = build_model(CNN1DSpec(arch="cnn1d", channels=[4, 4], stride=1, pool="max"), (40,), classes).eval()

    written = write_logits(teacher, source, tmp_path / "logits.parquet", (40,), classes, chunk_size)

    frame = pd.read_parquet(tmp_path / "logits.parquet")
    assert written == rows and list(frame["sample_id"]) == list(ids)
    with torch.inference_mode():
        expected = teacher(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(frame[[f"logit_{k}" for k in range(classes)]].to_numpy(), expected, rtol=1e-5, atol=1e-6)
