"""`kdflow.artifacts` and `kdflow.checkpoints`: atomic writes, stable bytes, digests and safe checkpoint loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdflow.artifacts import (
    CheckpointError,
    atomic_path,
    file_digest,
    load_checkpoint,
    read_json,
    save_checkpoint,
    tree_digest,
    write_json,
    write_parquet,
    write_text,
)
from kdflow.checkpoints import load_model, save_model
from kdflow.config import CNN1DSpec, MLPSpec
from models import build_model


class NotATensor:
    """Anything a weights_only unpickler must refuse to build."""

    def __init__(self, value: int):
        self.value = value


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_text_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "note.txt"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert names(target.parent) == ["note.txt"]


def test_write_json_round_trip_and_sorted_keys(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"b": 1, "a": [1.5, "x"]})
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    "x"\n  ],\n  "b": 1\n}\n'
    assert read_json(target) == {"a": [1.5, "x"], "b": 1}
    assert names(tmp_path) == ["m.json"]


def test_failure_inside_atomic_path_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("good")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary != target
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "good"
    assert names(tmp_path) == ["metrics.json"]


def test_failure_inside_atomic_path_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(KeyError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise KeyError("boom")
    assert names(tmp_path) == []


def test_equal_frames_give_identical_parquet_bytes(tmp_path: Path) -> None:
    def frame() -> pd.DataFrame:
        data = pd.DataFrame({"sample_id": pd.Series(["a", "b", "c"], dtype="string"),
                             "f0": [0.5, -1.25, 3.0], "label": [0, 2, 1]})
        return data.set_index(pd.Index([7, 3, 9]))  # the index is dropped, so it must not matter

    first = write_parquet(tmp_path / "one.parquet", frame())
    second = write_parquet(tmp_path / "two.parquet", frame().reset_index(drop=True))
    assert first.read_bytes() == second.read_bytes()
    assert file_digest(first) == file_digest(second)
    read_back = pd.read_parquet(first)
    assert list(read_back.columns) == ["sample_id", "f0", "label"]
    assert read_back["f0"].tolist() == [0.5, -1.25, 3.0]
    changed = frame()
    changed.loc[3, "f0"] = -1.0
    assert write_parquet(tmp_path / "three.parquet", changed).read_bytes() != first.read_bytes()


def test_file_digest_is_md5_of_the_bytes(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 41  # 10,496 bytes: several chunks with chunk_size=1000
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    expected = hashlib.md5(payload).hexdigest()
    assert file_digest(path) == expected
    assert file_digest(path, chunk_size=1000) == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_digest(empty) == "d41d8cd98f00b204e9800998ecf8427e"


def test_tree_digest_ignores_temporary_files_and_sees_names(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_text(tree / "a.txt", "A")
    write_text(tree / "sub" / "b.txt", "B")
    before = tree_digest(tree)
    expected = hashlib.md5(
        f"a.txt:{hashlib.md5(b'A').hexdigest()}\nsub/b.txt:{hashlib.md5(b'B').hexdigest()}\n".encode()
    ).hexdigest()
    assert before == expected
    (tree / ".a.txt.123.tmp").write_text("partial")
    assert tree_digest(tree) == before
    (tree / "sub" / "b.txt").rename(tree / "sub" / "c.txt")
    assert tree_digest(tree) != before
    assert tree_digest(tree / "a.txt") == hashlib.md5(b"A").hexdigest()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    payload = {"state": {"w": torch.arange(6.0).reshape(2, 3)}, "names": ["a", "b"], "epoch": 3}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", payload))
    assert torch.equal(loaded["state"]["w"], payload["state"]["w"])
    assert loaded["names"] == ["a", "b"] and loaded["epoch"] == 3
    assert names(tmp_path) == ["c.pt"]


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.randn(100, 100)})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: refused to load (")
    assert message.endswith("the file is truncated, tampered with or not a kdflow checkpoint: "
                            "delete it and rerun its stage")


def test_checkpoint_with_an_arbitrary_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "extra": NotATensor(3)}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert f"{path}: refused to load (" in str(caught.value)


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path}: no such checkpoint; run the stage that writes it first"


@pytest.mark.parametrize(
    "spec",
    [
        MLPSpec(arch="mlp", hidden=[8, 6]),
        CNN1DSpec(arch="cnn1d", channels=[4, 4], stride=1, padding_mode="circular", pool="max", hidden=5),
    ],
)
def test_save_model_load_model_round_trip(tmp_path: Path, spec) -> None:
    torch.manual_seed(0)
    model = build_model(spec, (40,), 3)
    path = save_model(tmp_path / "m.pt", model, spec, (40,), ["5", "6", "7"], extra={"val_accuracy": 0.5})
    loaded, payload = load_model(path)
    assert not loaded.training
    assert payload["spec"] == spec
    assert payload["class_names"] == ["5", "6", "7"]
    assert payload["input_shape"] == [40]
    assert payload["val_accuracy"] == 0.5
    x = torch.randn(7, 40)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_of_a_plain_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(1)})
    with pytest.raises(CheckpointError, match="not a kdflow model checkpoint"):
        load_model(path)
