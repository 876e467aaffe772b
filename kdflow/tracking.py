"""MLflow tracking: one parent run per pipeline run, a nested run per stage, a nested run per trained model.

Runs are addressed by id through `MlflowClient` rather than MLflow's thread-local "active run", so a stage logs
the same way whether Prefect runs it in a worker thread, DVC runs it in its own process, or a test calls it.
mlflow is imported here only, so the training engine works without it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from kdflow.artifacts import ArtifactError, process_alive

DEFAULT_EXPERIMENT = "kdflow"
PARENT_RUN_ENV = "KDFLOW_PARENT_RUN_ID"
HOST_TAG, PID_TAG = "kdflow.host", "kdflow.pid"  # which process owns a run, to close it if that process dies
OFFLINE_ENV = "KDFLOW_OFFLINE"  # set by `kdflow run --offline`; honoured by `python -m tasks.<stage>` (dvc repro)


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server in MLFLOW_TRACKING_URI does not answer."""


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def local_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').as_posix()}"


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set and not offline, else the project's own `sqlite:///mlflow.db`."""
    return (not offline() and os.environ.get("MLFLOW_TRACKING_URI")) or local_uri(root)


def check_tracking(root: Path, timeout_s: float = 5.0) -> str:
    """Before any training: probe a tracking server's /health, or check a local store's file, and say where the
    runs will go.

    An unreachable server is a `TrackingUnreachable` naming the URI and the way out (offline mode), and a damaged
    local store an ArtifactError naming the file, rather than a stage that trains for minutes and then fails on
    its first log call.
    """
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri[len("sqlite:///"):]))
    if offline():
        return f"offline ({OFFLINE_ENV}=1): MLflow runs go to the local store {uri}"
    if not uri.startswith(("http://", "https://")):
        return f"MLflow runs go to {uri}"
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:  # it answered: only a server error means it cannot take runs
        if exc.code >= 500:
            raise _unreachable(root, uri, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(root, uri, str(getattr(exc, "reason", exc))) from None
    return f"MLflow runs go to the tracking server {uri}"


def check_sqlite_store(database: Path) -> None:
    """A local store that exists must be a sound SQLite file: a damaged one would fail the stage's first log call
    with a raw database error. None yet is fine (MLflow makes it)."""
    import sqlite3

    if not database.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise ArtifactError(database, f"not a readable MLflow store ({verdict}); nothing was run",
                            f"move it aside (`mv {database} {database}.damaged`) and rerun: a new store is made, and "
                            "the runs the damaged one held stay in that file")


def _unreachable(root: Path, uri: str, reason: str) -> TrackingUnreachable:
    return TrackingUnreachable(
        f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ({reason}); nothing was run. "
        f"Start the server or correct MLFLOW_TRACKING_URI, or track locally in {local_uri(root)} with "
        f"`kdflow run --offline` ({OFFLINE_ENV}=1 for `dvc repro` and `python -m tasks.<stage>`)"
    )


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


def git_commit(root: Path, ignore: tuple[str, ...] = ()) -> str:
    """HEAD, with `-dirty` when a tracked file differs from it; changes under `ignore` (paths from the repository
    root) do not count."""
    excluded = [f":(top,exclude){path}" for path in ignore]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists stay whole, as MLflow shows them."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), child))
        return flat
    return {prefix: value}


class TrackedRun:
    """One MLflow run, logged to by id."""

    def __init__(self, client, run_id: str, root: Path, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.root = root
        self.experiment_id = experiment_id
        self.inherited_tags: dict[str, str] = {}  # lineage tags every child run carries too
        self.input_digests: dict[str, str] = {}  # a stage run's inputs, {path relative to the root: md5}

    def log_params(self, params: dict[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Param

        flat = flatten(prefix, params)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in flat.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator["TrackedRun"]:
        with _run(self.client, self.experiment_id, self.root, name, self.run_id,
                  {**self.inherited_tags, **(tags or {})}) as run:
            run.inherited_tags = self.inherited_tags
            yield run


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    client = MlflowClient(tracking_uri=uri)
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    # A local store keeps artifacts beside mlflow.db; a server decides for itself.
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return client, client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def _run(client, experiment_id: str, root: Path, name: str, parent_id: str | None, tags: dict | None):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    all_tags = {"mlflow.source.git.commit": git_commit(root), HOST_TAG: socket.gethostname(), PID_TAG: os.getpid(),
                **(tags or {})}
    if parent_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
    created = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    run = TrackedRun(client, created.info.run_id, root, experiment_id)
    try:
        yield run
    except BaseException:
        client.set_terminated(run.run_id, "FAILED")
        raise
    client.set_terminated(run.run_id, "FINISHED")


@contextlib.contextmanager
def start_run(root: Path, name: str, parent_run_id: str | None = None, tags: dict | None = None) -> Iterator[TrackedRun]:
    """A run in the project's experiment; nested under `parent_run_id` or, failing that, `$KDFLOW_PARENT_RUN_ID`."""
    client, experiment_id = _client(root)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if parent is None:
        close_orphaned_runs(client, experiment_id)
    with _run(client, experiment_id, root, name, parent, tags) as run:
        yield run


def close_orphaned_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs this machine's processes left RUNNING when they died (SIGKILL skips all cleanup)."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000)
    orphaned = [run.info.run_id for run in running if not process_alive(int(run.data.tags.get(PID_TAG, "0")))]
    for run_id in orphaned:
        client.set_tag(run_id, "kdflow.closed_because", "its process ended without closing the run")
        client.set_terminated(run_id, "KILLED")
    return orphaned


def find_model_run(run: TrackedRun, checkpoint_md5: str) -> str | None:
    """The newest run that trained the checkpoint with this digest, so evaluation lands in the model's own run."""
    found = run.client.search_runs(
        [run.experiment_id],
        filter_string=f"tags.`kdflow.checkpoint_md5` = '{checkpoint_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None
