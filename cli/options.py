"""What the commands share: their common options, and the one line a known failure prints (no traceback)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from kdflow import graph
from kdflow.config import ConfigError
from kdflow.layout import ProjectPaths

if TYPE_CHECKING:
    from kdflow.artifacts import ArtifactError, CheckpointError

# Each command says what its root and its overrides are for.
params_option = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="The params file.")
offline_option = click.option("--offline", is_flag=True,
                              help="Track in the project's local mlflow.db, ignoring MLFLOW_TRACKING_URI "
                                   "(sets KDFLOW_OFFLINE=1).")


def root_option(help: str):
    return click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False), help=help)


def overrides_option(help: str):
    return click.option("-S", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def go_offline(offline: bool) -> None:
    from kdflow.tracking import OFFLINE_ENV

    if offline:
        os.environ[OFFLINE_ENV] = "1"


def checkpoint_failure(exc: CheckpointError, paths: ProjectPaths) -> str:
    """The error, and which stage to rerun to replace the bad file."""
    producer = graph.producer(paths, exc.path) if exc.path is not None else None
    if producer is None:
        return str(exc)
    return (f"{exc}; fix: the stage '{producer}' writes {exc.path}: delete the file and rerun it "
            f"(`dvc repro -f {producer}` or `kdflow run --force {producer}`)")


def artifact_failure(exc: ArtifactError, paths: ProjectPaths) -> str:
    """One line: the file, what is wrong with it, and the fix (by default, rerunning the stage that writes it)."""
    producer = graph.producer(paths, exc.path)
    fix = exc.fix or (f"rerun the stage '{producer}', which writes it (`dvc repro {producer}` or `kdflow run`)"
                      if producer else "replace or remove it and rerun")
    return f"{exc}; fix: {fix}"


def missing_input(exc: FileNotFoundError, stage: str, paths: ProjectPaths) -> str | None:
    """For an upstream output that is not there: which stage writes it, and how to run that stage."""
    producer = graph.producer(paths, exc.filename) if exc.filename else None
    if producer is None or producer == stage:
        return None
    return (f"stage '{stage}' needs {exc.filename}, which does not exist\n"
            f"fix: the stage '{producer}' writes it: run that stage first (`dvc repro {producer}`), "
            "or the whole pipeline (`dvc repro` or `kdflow run`)")


def failure_message(exc: BaseException, paths: ProjectPaths, stage: str | None = None) -> str | None:
    """What to print for a failure the user can fix (a bad params key, a damaged or missing file, an unreachable
    tracking server or Prefect API, a record DVC refuses); None for anything else, a bug, which keeps its traceback."""
    from flows.server import PrefectUnreachable
    from kdflow.artifacts import ArtifactError, CheckpointError  # torch: not for `kdflow -h`
    from kdflow.record import RecordError
    from kdflow.tracking import TrackingUnreachable
    from models.errors import ModelError  # a factory or zoo model that cannot be built: the line says the fix

    if isinstance(exc, (ConfigError, TrackingUnreachable, RecordError, PrefectUnreachable, ModelError)):
        return str(exc)
    if isinstance(exc, CheckpointError):
        return checkpoint_failure(exc, paths)
    if isinstance(exc, ArtifactError):
        return artifact_failure(exc, paths)
    if isinstance(exc, FileNotFoundError) and stage is not None:
        return missing_input(exc, stage, paths)
    return None


def fail_clearly(exc: BaseException, paths: ProjectPaths, stage: str | None = None) -> None:
    """Raise `exc` as click's one-line error when the user can fix it; re-raise it otherwise."""
    message = failure_message(exc, paths, stage)
    if message is None:
        raise exc
    raise click.ClickException(message) from None
