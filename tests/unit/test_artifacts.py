"""`kdflow.artifacts` and `kdflow.checkpoints`: atomic writes, stable bytes, digests and safe checkpoint loading."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow import graph
from kdflow.artifacts import (
    ArtifactError,
    CheckpointError,
    atomic_path,
    check_writable,
    file_digest,
    files_in,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
    write_parquet,
    write_text,
)
from kdflow.checkpoints import load_model, save_model
from kdflow.config import CNN1DSpec, CustomSpec, MLPSpec
from kdflow.datasets import load_split, to_frame
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


def test_files_in_ignores_temporary_files_and_lists_names_in_order(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_text(tree / "sub" / "b.txt", "B")
    write_text(tree / "a.txt", "A")
    (tree / ".a.txt.123.tmp").write_text("partial")
    assert files_in(tree) == [tree / "a.txt", tree / "sub" / "b.txt"]
    assert files_in(tree / "a.txt") == [tree / "a.txt"]
    assert files_in(tmp_path / "absent") == []


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
    loaded, payload = load_model(path, spec)
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
        load_model(path, MLPSpec(arch="mlp"))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        written = [write_text(tmp_path / "a.txt", "A"), save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(1)}),
                   write_parquet(tmp_path / "f.parquet", pd.DataFrame({"x": [1]}))]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [mode] * 3


def test_a_write_is_synced_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else f"fsync {os.fstat(fd).st_size} bytes")
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(f"rename onto {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "note.txt", "12345")
    assert events == ["fsync 5 bytes", "rename onto note.txt", "fsync folder"]


def test_only_dead_writers_temporaries_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    live = tmp_path / f".note.txt.{os.getpid()}.live.tmp"  # this process: a writer still at work
    dead = tmp_path / f".note.txt.{dead_pid}.dead.tmp"
    other = tmp_path / f".other.txt.{dead_pid}.x.tmp"  # another target's: not this write's business
    longer = tmp_path / f".note.txt.{dead_pid}.{os.getpid()}.y.tmp"  # `note.txt.<dead pid>`'s, by a live writer
    for path in (live, dead, other, longer):
        path.write_text("partial")
    write_text(tmp_path / "note.txt", "done")
    assert names(tmp_path) == sorted([live.name, other.name, longer.name, "note.txt"])


def test_equal_payloads_give_identical_checkpoint_bytes(tmp_path: Path) -> None:
    """torch.save names the zip's records after the file it writes; a temporary's random name must not leak in."""
    payload = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "spec": {"arch": "mlp"}}
    first = save_checkpoint(tmp_path / "a" / "model.pt", payload)
    second = save_checkpoint(tmp_path / "b" / "other.pt", payload)
    assert first.read_bytes() == second.read_bytes()


def test_garbage_json_is_an_artifact_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text('{"input_shape": [40')
    with pytest.raises(ArtifactError) as caught:
        read_json(path)
    assert str(caught.value) == (f"{path}: not valid JSON (Expecting ',' delimiter: line 1 column 20 (char 19))")
    assert caught.value.path == path and caught.value.fix is None


def test_a_folder_that_takes_no_file_fails_the_check_and_nothing_is_created(tmp_path: Path, monkeypatch) -> None:
    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ArtifactError) as caught:
        check_writable(tmp_path / "artifacts" / "teacher")
    assert str(caught.value) == f"{tmp_path / 'artifacts' / 'teacher'}: cannot write there (Read-only file system)"
    assert caught.value.fix == "make the folder writable (or free space on its disk) and rerun"
    assert names(tmp_path) == []


def test_a_truncated_split_is_an_artifact_error_naming_the_file(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "source_train.parquet", to_frame(np.array(["a"]), np.ones((1, 4)), np.array([0])))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ArtifactError) as caught:
        load_split(path, (4,))
    assert str(caught.value).startswith(f"{path}: not a readable Parquet file (ArrowInvalid: ")
    assert load_split(write_parquet(path, to_frame(np.array(["a"]), np.ones((1, 4)), np.array([0]))), (4,)).x.shape == (1, 4)


def test_a_checkpoint_naming_a_custom_factory_never_builds_it(tmp_path: Path, monkeypatch) -> None:
    """The file picks a factory and its keywords; loading must compare, not call (nor even import the module)."""
    package = tmp_path / "attacker_nets.py"
    package.write_text("from pathlib import Path\n\ndef make(**kwargs):\n    Path(kwargs['marker']).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = MLPSpec(arch="mlp", hidden=[8])
    path = save_model(tmp_path / "teacher.pt", build_model(spec, (40,), 3), spec, (40,), ["0", "1", "2"])
    payload = load_checkpoint(path)
    payload["spec"] = {"arch": "custom", "factory": "attacker_nets:make", "options": {"marker": str(tmp_path / "ran")}}
    torch.save(payload, path)

    with pytest.raises(CheckpointError) as caught:
        load_model(path, spec)
    assert str(caught.value) == (
        f"{path}: saved for the architecture {{'arch': 'custom', 'factory': 'attacker_nets:make', 'options': "
        f"{{'marker': '{tmp_path / 'ran'}'}}}}, but params.yaml gives {{'arch': 'mlp', 'hidden': [8], 'dropout': 0.0}}; "
        "it is not loaded (nor its spec built)")
    assert not (tmp_path / "ran").exists() and "attacker_nets" not in sys.modules


def test_a_checkpoint_of_the_expected_custom_spec_loads(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "user_nets.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n"
        "        self.backbone = nn.Sequential(nn.Linear(40, width))\n        self.head = nn.Linear(width, 3)\n\n"
        "    def forward(self, x):\n        return self.head(self.backbone(x))\n\n"
        "def make(input_shape, num_classes, width):\n    return Net(width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = CustomSpec(arch="custom", factory="user_nets:make", options={"width": 5})
    path = save_model(tmp_path / "m.pt", build_model(spec, (40,), 3), spec, (40,), ["0", "1", "2"])
    assert type(load_model(path, spec)[0]).__name__ == "Net"
    with pytest.raises(CheckpointError, match="it is not loaded"):
        load_model(path, CustomSpec(arch="custom", factory="user_nets:make", options={"width": 6}))


@pytest.mark.parametrize("text", ["epoch,train_loss,val_loss,val_accuracy,lr\n1,0.5,oops,0.9,0.001\n", "", "\xff\xfe"],
                         ids=["not-a-number", "empty", "not-text"])
def test_a_damaged_curve_is_an_artifact_error_and_names_the_stage_that_trains_it(tmp_path: Path, text: str) -> None:
    from kdflow.layout import ProjectPaths
    from kdflow.report import read_curve

    paths = ProjectPaths.at(tmp_path)
    path = paths.curve("student_distilled")
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ArtifactError) as caught:
        read_curve(path)
    assert str(caught.value).startswith(f"{path}: not a learning curve (")
    assert graph.producer(paths, path) == "distill"
