"""Lineage tags: valid MLflow tag keys for any legal file name, and the paths read back exactly."""

from __future__ import annotations

from pathlib import Path

from mlflow.utils.validation import _validate_tag_name

from kdflow.artifacts import write_text
from kdflow.lineage import INPUT_PREFIX, OUTPUT_PREFIX, input_tags, output_tags, tagged_files

NAMES = ["data/raw/digits (v2)'s.csv", "data/raw/ünïcode & spaces #1.csv", "data/raw/a//b/../c.csv",
         "data/prepared/source_train.parquet", "/elsewhere/" + "deep/" * 60 + "file.csv"]


def test_every_file_name_gives_valid_tag_keys_and_reads_back() -> None:
    digests = {name: f"{i:032x}" for i, name in enumerate(NAMES)}
    tags = input_tags(digests)
    for key in tags:
        _validate_tag_name(key)
        assert len(key) <= 250
    assert tagged_files(tags, INPUT_PREFIX) == digests
    assert tagged_files(tags, OUTPUT_PREFIX) == {}


def test_output_tags_name_the_file_relative_to_the_root(tmp_path: Path) -> None:
    written = write_text(tmp_path / "data" / "raw" / "digits (v2)'s.csv", "x\n")
    tags = output_tags(tmp_path, [written])
    assert tagged_files(tags, OUTPUT_PREFIX) == {"data/raw/digits (v2)'s.csv": "401b30e3b8b5d629635a5c613cdb7919"}
