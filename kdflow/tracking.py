"""MLflow tracking: one parent run per pipeline run, a nested run per stage, a nested run per trained model.

Runs are addressed by id through `MlflowClient` rather than MLflow's thread-local "active run", so a stage logs
the same way whether Prefect runs it in a worker thread, DVC runs it in its own process, or a test calls it.
mlflow is imported here only, so the training engine works without it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
import base64
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdflow.artifacts import ArtifactError, atomic_path, process_alive
from kdflow.layout import ProjectPaths

DEFAULT_EXPERIMENT = "kdflow"
PARENT_RUN_ENV = "KDFLOW_PARENT_RUN_ID"
HOST_TAG, PID_TAG = "kdflow.host", "kdflow.pid"  # which process owns a run, to close it if that process dies
OFFLINE_ENV = "KDFLOW_OFFLINE"  # set by `kdflow run --offline`; honoured by `kdflow stage <name>` (dvc repro)
# The experiment's kind as MLflow records it (the tag the UI's kind selector writes): model training, not GenAI.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server in MLFLOW_TRACKING_URI does not answer."""


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def local_uri(root: Path) -> str:
    return f"sqlite:///{ProjectPaths(root).mlflow_store.as_posix()}"


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set and not offline, else the project's own `sqlite:///mlflow.db`."""
    return (not offline() and os.environ.get("MLFLOW_TRACKING_URI")) or local_uri(root)


def store_uri(root: Path) -> str:
    """The tracking URI to hand MLflow. A `user:password@` in it moves to MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, which MLflow sends as basic auth: MLflow prints its URI in run links and errors."""
    uri = tracking_uri(root)
    parts = urllib.parse.urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or parts.scheme not in ("http", "https"):
        return uri
    user, _, password = userinfo.partition(":")
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(user)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(password)
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def redacted(url: str) -> str:
    """`url` with the password of a `user:password@` in it shown as ***: for anything printed, raised or tagged."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def probe_health(url: str, timeout_s: float) -> None:
    """GET `url`/health, sending a `user:password@` in the URL as HTTP basic auth (urllib would take it for part of
    the host); raises urllib's errors."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)).rstrip("/") + "/health")
    if at:
        user, _, password = userinfo.partition(":")
        token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    with urllib.request.urlopen(request, timeout=timeout_s):
        pass


def check_tracking(root: Path, timeout_s: float = 5.0) -> str:
    """Before any training: probe a tracking server's /health, or check a local store's file, and say where the
    runs will go.

    An unreachable server is a `TrackingUnreachable` naming the URI and the way out (offline mode), and a damaged
    local store an ArtifactError naming the file, rather than a stage that trains for minutes and then fails on
    its first log call. Credentials in the URI are sent, never shown.
    """
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri[len("sqlite:///"):]))
    if offline():
        return f"offline ({OFFLINE_ENV}=1): MLflow runs go to the local store {uri}"
    if not uri.startswith(("http://", "https://")):
        return f"MLflow runs go to {uri}"
    try:
        probe_health(uri, timeout_s)
    except urllib.error.HTTPError as exc:  # it answered: a server error or refused credentials mean no runs
        if exc.code in (401, 403):
            raise TrackingUnreachable(
                f"MLflow tracking server {redacted(uri)} (MLFLOW_TRACKING_URI) refused the credentials (HTTP "
                f"{exc.code} {exc.reason}); nothing was run. Correct the user:password in MLFLOW_TRACKING_URI (or "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)") from None
        if exc.code >= 500:
            raise _unreachable(root, uri, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a URL urllib cannot read (bad port)
        raise _unreachable(root, uri, str(getattr(exc, "reason", exc)).replace(uri, redacted(uri))) from None
    return f"MLflow runs go to the tracking server {redacted(uri)}"


def check_sqlite_store(database: Path) -> None:
    """A local store that exists must be a sound SQLite file: a damaged one would fail the stage's first log call
    with a raw database error. None yet is fine (MLflow makes it)."""
    import sqlite3

    if not database.exists():
        return
    try:
        with _read_only(database) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise ArtifactError(database, f"not a readable MLflow store ({verdict}); nothing was run",
                            f"move it aside (`mv {database} {database}.damaged`) and rerun: a new store is made, and "
                            "the runs the damaged one held stay in that file")


def _read_only(database: Path):
    """A read-only connection to the SQLite file `database`, closed after the block."""
    import sqlite3

    return contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True))


def _unreachable(root: Path, uri: str, reason: str) -> TrackingUnreachable:
    return TrackingUnreachable(
        f"MLflow tracking server {redacted(uri)} (MLFLOW_TRACKING_URI) is unreachable ({reason}); nothing was run. "
        f"Start the server or correct MLFLOW_TRACKING_URI, or track locally in {local_uri(root)} with "
        f"`kdflow run --offline` ({OFFLINE_ENV}=1 for `dvc repro` and `kdflow stage <name>`)"
    )


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


@dataclass(frozen=True)
class GitCommit:
    sha: str  # HEAD, a full commit SHA
    dirty: bool  # a tracked file differs from HEAD

    def __str__(self) -> str:
        return self.sha + ("-dirty" if self.dirty else "")

    def tags(self) -> dict[str, str]:
        """MLflow's own tags: the commit stays a SHA the UI and git can resolve; dirtiness is a tag of its own."""
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY

        return {MLFLOW_GIT_COMMIT: self.sha, MLFLOW_GIT_DIRTY: str(self.dirty).lower()}


def git_commit(root: Path, ignore: tuple[str, ...] = ()) -> GitCommit | None:
    """HEAD and whether a tracked file differs from it (changes under `ignore`, paths from the repository root,
    do not count); None outside a git repository."""
    excluded = [f":(top,exclude){path}" for path in ignore]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return GitCommit(commit, bool(dirty))


def source_tags(root: Path, source: str) -> dict[str, str]:
    """What the UI's Source and User columns show: the code that made the run (`source`, a path in the
    repository, read at the tagged commit), and who ran it."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, as in some containers
        user = "unknown"
    commit = git_commit(root)
    return {MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
            MLFLOW_USER: user, **(commit.tags() if commit else {})}


def file_datasets(root: Path, digests: dict[str, str], context: str | None = None) -> list:
    """Files as MLflow dataset inputs: the project-relative path as name, the md5 (DVC's digest, so `dvc` finds
    the bytes in its cache or remote) as digest, and the file's `file://` URI as source, from which
    `mlflow.data.get_source(dataset).load()` gives the bytes back on this machine. `context` is MLflow's
    train/validation/test label, when one fits every file."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)] if context else []
    return [DatasetInput(Dataset(**MetaDataset(LocalArtifactDatasetSource((root / path).as_uri()), name=path,
                                               digest=digest).to_dict()), tags)
            for path, digest in sorted(digests.items())]


def runs_page(ui_url: str, experiment_id: str) -> str:
    """The experiment's run table in MLflow's UI at `ui_url`. MLflow 3.17's UI opens an experiment on the GenAI
    overview unless the URL (or the user's toggle, remembered in the browser) says `workflowType=machine_learning`;
    it does not go by the experiment's kind tag. A `user:password@` is left out: the browser asks for it."""
    parts = urllib.parse.urlsplit(ui_url)
    ui_url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists stay whole, as MLflow shows them."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), child))
        return flat
    return {prefix: value}


def already_exists(error) -> bool:
    """MLflow's answer to creating what another process made meanwhile (an experiment, a registered model)."""
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    return error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


DATASET_LOG_ATTEMPTS = 3


def _duplicate_key(error: Exception) -> bool:
    """A unique key broken by a concurrent insert, as SQLite, PostgreSQL and MySQL word it (through a server too)."""
    message = str(error).lower()
    return any(words in message for words in ("unique constraint", "duplicate key", "duplicate entry"))


class TrackedRun:
    """One MLflow run, logged to by id."""

    def __init__(self, client, run_id: str, root: Path, experiment_id: str, source: str = ""):
        self.client = client
        self.run_id = run_id
        self.root = root
        self.experiment_id = experiment_id
        self.source = source  # the code that made the run, which its child runs share
        self.inherited_tags: dict[str, str] = {}  # lineage tags every child run carries too
        self.input_digests: dict[str, str] = {}  # a stage run's inputs, {path relative to the root: md5}
        self.inherited_datasets: list = []  # dataset inputs (file_datasets) every child run logs too

    def log_params(self, params: dict[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Param

        flat = flatten(prefix, params)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in flat.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
                    dataset=None) -> None:
        """`model_id` links the metrics to a logged model (MLflow 3's Models tab); `dataset`, a DatasetInput
        the run logged, names the data they were measured on."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        on = {"dataset_name": dataset.dataset.name, "dataset_digest": dataset.dataset.digest} if dataset else {}
        batch = [Metric(k, float(v), now, step or 0, model_id=model_id, **on) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_datasets(self, datasets: list) -> None:
        """Link the run to its input files. MLflow's store looks a dataset up, then inserts it if missing: two runs
        logging the same new file at once (models trained at once, sweep trials) can both miss it, and the second
        insert breaks the store's unique key. Logged again, it finds the first one's row and links that."""
        from mlflow.exceptions import MlflowException

        if not datasets:
            return
        for attempt in range(DATASET_LOG_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
                return
            except MlflowException as exc:
                if attempt == DATASET_LOG_ATTEMPTS - 1 or not _duplicate_key(exc):
                    raise

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator["TrackedRun"]:
        with _run(self.client, self.experiment_id, self.root, name, self.run_id,
                  {**self.inherited_tags, **(tags or {})}, self.source) as run:
            run.inherited_tags = self.inherited_tags
            run.inherited_datasets = self.inherited_datasets
            run.log_datasets(self.inherited_datasets)
            yield run


@contextlib.contextmanager
def _one_maker(root: Path, uri: str) -> Iterator[None]:
    """One process at a time makes a local store: MLflow builds a new database by migrating it, and two commands
    started together in a fresh project (two `kdflow run`, a run and `dvc repro`) would both migrate it, one
    failing midway. A server makes its database itself."""
    if not uri.startswith("sqlite:"):
        yield
        return
    from filelock import FileLock

    lock = ProjectPaths(root).mlflow_store_lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        yield


def store_template() -> Path | None:
    """An empty MLflow database at the installed MLflow's schema, made once per machine and user (in
    `$XDG_CACHE_HOME/kdflow`): a new project's store starts as its copy instead of running MLflow's migrations
    (a second and more of CPU while a run starts). None where it cannot be made (a cache folder that takes no
    file); the store is then made by MLflow as before."""
    import mlflow
    import sqlalchemy

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdflow"
    template = folder / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"
    if template.is_file() and _sound_template(template):
        return template  # else damaged (a full disk, a hand edit): made again
    from mlflow.store.db.utils import _initialize_tables  # what MLflow's SQL store runs on an empty database

    try:
        with atomic_path(template) as making:  # whole or not at all, whoever else makes it meanwhile
            engine = sqlalchemy.create_engine(f"sqlite:///{making}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
    except OSError:
        return None
    return template


def _sound_template(template: Path) -> bool:
    """A readable SQLite file whose schema MLflow's migrations stamped."""
    import sqlite3

    try:
        with _read_only(template) as connection:
            return (connection.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                    and len(connection.execute("SELECT version_num FROM alembic_version").fetchall()) == 1)
    except sqlite3.DatabaseError:
        return False


def _seed_local_store(root: Path, uri: str) -> None:
    """Start the project's own local store, when it does not exist yet, as a copy of the store template."""
    database = ProjectPaths(root).mlflow_store
    if uri != local_uri(root) or database.exists():
        return
    template = store_template()
    if template is not None:
        with atomic_path(database) as copy:
            shutil.copyfile(template, copy)


def project_client(root: Path):
    """An MlflowClient on the project's store and the id of its experiment (made, and tagged, when new)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = store_uri(root)
    name = experiment_name()
    with _one_maker(root, uri):
        _seed_local_store(root, uri)
        client = MlflowClient(tracking_uri=uri)  # a new local store is made here
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            # A local store keeps artifacts beside mlflow.db; a server decides for itself.
            location = ProjectPaths(root).mlflow_artifacts.as_uri() if uri.startswith("sqlite:") else None
            try:
                return client, client.create_experiment(name, artifact_location=location,
                                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
            except MlflowException as exc:  # another command made it on the same server meanwhile
                if not already_exists(exc):
                    raise
                experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before kdflow set it; a kind chosen in the UI stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return client, experiment.experiment_id


@contextlib.contextmanager
def _run(client, experiment_id: str, root: Path, name: str, parent_id: str | None, tags: dict | None, source: str):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    all_tags = {**source_tags(root, source), HOST_TAG: socket.gethostname(), PID_TAG: os.getpid(), **(tags or {})}
    if parent_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
    created = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    run = TrackedRun(client, created.info.run_id, root, experiment_id, source)
    try:
        yield run
    except BaseException:
        client.set_terminated(run.run_id, "FAILED")
        raise
    client.set_terminated(run.run_id, "FINISHED")


@contextlib.contextmanager
def start_run(root: Path, name: str, parent_run_id: str | None = None, tags: dict | None = None, *,
              source: str) -> Iterator[TrackedRun]:
    """A run in the project's experiment; nested under `parent_run_id` or, failing that, `$KDFLOW_PARENT_RUN_ID`.
    `source` names the code that makes it (e.g. `tasks/distill.py`), for the UI's Source column."""
    client, experiment_id = project_client(root)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if parent is None:
        close_orphaned_runs(client, experiment_id)
    with _run(client, experiment_id, root, name, parent, tags, source) as run:
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
