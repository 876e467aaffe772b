"""A user's own image-like CSV through the real pipeline with only params.yaml changed, and a new version of the
file rerunning the pipeline from `prepare` in both runners (the Prefect flow's cache and `dvc repro`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdflow import graph
from kdflow.checkpoints import load_model
from kdflow.config import CNN2DSpec

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = list(graph.STAGES)
RAW = "data/raw/digits.csv"


@pytest.fixture(scope="module")
def own_data_params(tiny_params) -> dict:
    """The tiny config with the `data` and teacher changes "Bring your own data" in the README makes."""
    data = {**tiny_params["data"],
            "source": {"kind": "file", "path": RAW, "feature_prefix": "pixel_", "label": "digit", "reshape": [1, 8, 8]},
            "transfer": {"kind": "file", "path": RAW, "feature_prefix": "pixel_", "label": "digit"}}
    teacher = {**tiny_params["train_teacher"], "model": {"arch": "cnn2d", "channels": [8, 8]}}
    return {**tiny_params, "data": data, "train_teacher": teacher}


def test_flow_runs_on_a_csv_and_a_new_version_reruns_from_prepare(tmp_path, own_data_params, write_params,
                                                                   write_image_csv, prefect_server):
    from flows.pipeline import pipeline

    write_image_csv(tmp_path / RAW, rows_per_class=30)
    params_path = write_params(tmp_path, own_data_params)
    cold = pipeline(params_path=str(params_path), root=str(tmp_path), serial=True)
    assert cold["ran"] == STAGES

    card = json.loads((tmp_path / "data/prepared/dataset_card.json").read_text())
    assert card["input_shape"] == [1, 8, 8] and card["source_classes"] == ["0", "1", "2", "3", "4"]
    # 30 rows per digit: 6 test, 3 validation, 21 train per source class; the transfer set is every row of the
    # file that no labelled split holds: 300 - 150 source rows - 5 x (6 test + 5 train + 5 validation) target rows.
    assert {name: card["splits"][name]["rows"] for name in card["splits"]} == {
        "source_train": 105, "source_val": 15, "source_test": 30, "target_train": 25, "target_val": 25,
        "target_test": 30, "transfer": 70}
    teacher, meta = load_model(tmp_path / "artifacts/teacher/teacher.pt", CNN2DSpec(arch="cnn2d", channels=[8, 8]))
    assert meta["input_shape"] == [1, 8, 8]
    assert set(cold["summary"]["models"]) >= {"teacher", "student_distilled", "target_finetuned"}
    report = json.loads((tmp_path / "artifacts/target/transfer_report.json").read_text())
    assert report["copied"] and set(report["skipped"]) == {"head.weight", "head.bias"}

    assert pipeline(params_path=str(params_path), root=str(tmp_path), serial=True)["ran"] == []

    write_image_csv(tmp_path / RAW, rows_per_class=30, seed=1)  # a new version of the user's file
    rerun = pipeline(params_path=str(params_path), root=str(tmp_path), serial=True)  # what reruns, not where
    assert rerun["ran"] == STAGES


def test_flow_stops_on_a_bad_file_with_its_message(tmp_path, own_data_params, write_params, write_image_csv,
                                                    prefect_server):
    from flows.pipeline import StageFailed, pipeline
    from kdflow.sources import DataError

    write_image_csv(tmp_path / RAW, rows_per_class=30)
    params = {**own_data_params, "data": {**own_data_params["data"],
                                          "source": {**own_data_params["data"]["source"], "label": "digits"}}}
    with pytest.raises(StageFailed, match=r"stage 'prepare' failed: DataError: data/raw/digits.csv: no column "
                                          r"'digits' \(data.source.label\); did you mean 'digit'\?") as caught:
        pipeline(params_path=str(write_params(tmp_path, params)), root=str(tmp_path))
    assert isinstance(caught.value.__cause__, DataError)
    assert not (tmp_path / "data" / "prepared").exists()


def dvc(repo: Path, *arguments: str) -> str:
    # `python` in dvc.yaml's commands must be this interpreter, whatever PATH the test runner had.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run([sys.executable, "-m", "dvc", *arguments], cwd=repo, capture_output=True, text=True,
                               env=env)
    assert completed.returncode == 0, f"dvc {' '.join(arguments)} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout + completed.stderr


def test_dvc_reruns_prepare_for_a_new_version_of_the_raw_file(tmp_path, own_data_params, write_params,
                                                               write_image_csv):
    for folder in ("kdflow", "models", "tasks", "flows"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    write_image_csv(tmp_path / RAW, rows_per_class=30)
    write_params(tmp_path, own_data_params)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    dvc(tmp_path, "add", RAW)
    assert (tmp_path / f"{RAW}.dvc").exists()

    assert "Running stage 'prepare'" in dvc(tmp_path, "repro", "prepare")
    first = (tmp_path / "data/prepared/source_train.parquet").read_bytes()

    write_image_csv(tmp_path / RAW, rows_per_class=30, seed=1)  # a new version, not yet `dvc add`ed again
    status = dvc(tmp_path, "status", "prepare")
    assert "prepare:\n\tchanged deps:\n\t\tmodified:           data/raw" in status
    assert "Running stage 'prepare'" in dvc(tmp_path, "repro", "prepare")
    assert (tmp_path / "data/prepared/source_train.parquet").read_bytes() != first
