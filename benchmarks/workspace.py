"""A project root in which the pipeline's own stages have run, for the benchmarks that need a teacher or student.

Stages run by their `run` functions (what `dvc repro` and the Prefect flow call); their MLflow store is the
root's own `mlflow.db` unless MLFLOW_TRACKING_URI says otherwise. A stage whose output is already there is not rerun, so `distillation` and `transfer` share one teacher.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

from benchmarks.harness import REPO_ROOT
from kdflow.config import Params, dump_params, load_params
from kdflow.layout import ProjectPaths


def quick_prefect_home(home: Path) -> None:
    """For --quick, a smoke run whose seconds are not results: give the new PREFECT_HOME `home` a copy of the calling
    environment's Prefect database (`$PREFECT_HOME/prefect.db`, migrated already), so that the Prefect server started
    on it does not first migrate an empty one (about 9 s on 2 cores). SQLite's backup API copies it whole even while
    another server writes to it. Without such a database (another PREFECT_HOME, a PostgreSQL one), nothing is copied."""
    source = Path(os.environ["PREFECT_HOME"]) / "prefect.db" if os.environ.get("PREFECT_HOME") else None
    if source is None or not source.is_file():
        return
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as database, \
            contextlib.closing(sqlite3.connect(home / "prefect.db")) as copy:
        database.backup(copy)


def load_overridden(overrides: list[str]) -> Params:
    return load_params(REPO_ROOT / "params.yaml", overrides)


def workspace(params: Params, stages: list[str], work_dir: Path) -> ProjectPaths:
    """The root for `params` (named by their digest) with `stages` run in order; returns its paths."""
    from tasks import distill, prepare, soft_labels, train_teacher

    text = dump_params(params)
    root = Path(work_dir) / hashlib.sha256(text.encode()).hexdigest()[:12]
    root.mkdir(parents=True, exist_ok=True)
    paths = ProjectPaths.at(root)
    paths.params_file.write_text(text)
    done = {
        "prepare": (prepare.run, paths.dataset_card),
        "train_teacher": (train_teacher.run, paths.checkpoint("teacher")),
        "soft_labels": (soft_labels.run, paths.soft_labels_manifest),
        "distill": (distill.run, paths.checkpoint("student_distilled")),
    }
    for stage in stages:
        run, output = done[stage]
        if not output.exists():
            print(f"workspace {root.name}: running stage {stage}", flush=True)
            run(params, paths, None)
    return paths


def quick_overrides() -> list[str]:
    """The test suite's tiny config (tests/conftest.py), as -S overrides."""
    return [
        "data.source.num_samples=1000", "data.transfer.size=2000", "data.target_labels_per_class=5",
        "data.target_val_per_class=5", "train_teacher.model.channels=[8, 8]", "train_teacher.train.epochs=2",
        "soft_labels.chunk_size=512", "distill.student.hidden=[8]", "distill.max_param_ratio=1.0",
        "distill.train.epochs=2", "finetune.train.epochs=2",
    ]
