"""The pipeline as one Prefect flow: the same stage functions `dvc repro` runs, as tasks, in dependency order.

There is one record of what was computed from what, DVC's (kdflow.record): each task asks DVC whether its stage
is up to date, as `dvc repro` would, runs the stage function when it is not, and records the result in dvc.lock
and DVC's cache. So `kdflow run` then `dvc repro` runs nothing, and the other way round. Prefect adds the
schedules, retries and the UI of runs. After the stages, a configured DVC remote receives the outputs, and the
parent MLflow run keeps dvc.lock (and what git keeps), so `kdflow checkout <run>` can restore the run's bytes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Failed

from kdflow import distributed, graph, record, tracking
from kdflow.artifacts import read_json
from kdflow.config import ConfigError, Params, dump_params, load_params, validate
from kdflow.layout import ProjectPaths
from flows.retries import STAGE_RETRIES, STAGE_RETRY_DELAYS, STAGE_RETRY_JITTER, retry_on_transient

STAGES = {name: importlib.import_module(stage.module).run for name, stage in graph.STAGES.items()}


class StageFailed(RuntimeError):
    """A stage that failed for good: a deterministic error, or a transient one that outlasted its retries."""


@task(task_run_name="{stage}", retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAYS,
      retry_jitter_factor=STAGE_RETRY_JITTER, retry_condition_fn=retry_on_transient)
def run_stage(stage: str, params: dict[str, Any], root: str, parent_run_id: str | None, force: bool) -> str:
    """Run `stage` unless DVC's record says it is current; what happened (kdflow.record's outcomes)."""
    paths = ProjectPaths.at(root)
    outcome = record.run_stage(paths.root, stage, lambda: call_stage(stage, validate(params), paths, parent_run_id),
                               force=force)
    get_run_logger().info("%s: %s", stage, outcome)
    return outcome


def call_stage(stage: str, params: Params, paths: ProjectPaths, parent_run_id: str | None) -> dict:
    """The stage in this process, or, when its `train.nproc_per_node` asks for more, as that many torchrun ranks
    running its command (`kdflow stage <stage>`, which reads the params.yaml the flow wrote, as `dvc repro`)."""
    train = getattr(getattr(params, stage, None), "train", None)
    if train is None or train.nproc_per_node == 1:
        return STAGES[stage](params, paths, parent_run_id)
    arguments = ["stage", stage, "--root", str(paths.root)] + (["--parent-run-id", parent_run_id] if parent_run_id else [])
    status = distributed.relaunch(train.nproc_per_node, "cli.main", arguments)
    if status:
        raise StageFailed(f"stage '{stage}' failed under torchrun ({train.nproc_per_node} processes, exit status "
                          f"{status}); its output above says why")
    return read_json(paths.stage_metrics(stage))


def run_recorded_stage(stage: str, arguments: tuple, force: bool) -> bool:
    """Run `stage` as a task; True when it did not run (DVC's record had it, as is or in its run cache).

    `arguments` are run_stage's (params, root, parent_run_id). A stage that fails for good raises StageFailed
    naming it, with the stage's own error as the cause.
    """
    state = run_stage(stage, *arguments, force, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, record.RecordError):
            raise error
        raise StageFailed(f"stage '{stage}' failed: {type(error).__name__}: {error}") from error
    return state.result() != record.RAN


def apply_overrides(params_path: Path, overrides: list[str]) -> None:
    """Write `-S` overrides into params.yaml as `dvc exp run -S` does (DVC's own code), so dvc.lock records the
    params the stages ran with."""
    if overrides:
        from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

        dvc_apply_overrides(params_path, overrides)


@flow(name="kdflow-pipeline", log_prints=True)
def pipeline(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
             force: list[str] | None = None, git_branch: str | None = None,
             params: dict[str, Any] | None = None) -> dict:
    """Run every stage that DVC's record says is not current; `force` names stages to rerun regardless ("all" for
    every stage); `git_branch` commits the run's dvc.lock, params and metrics on that branch. `params` are those
    of `params_path` with `overrides`, when the caller has loaded them already (`kdflow run` does, to fail before
    Prefect starts); a scheduled run reads the file as it is then."""
    try:
        return run_pipeline(params_path, overrides, root, force, git_branch, params)
    except (ConfigError, record.RecordError, StageFailed) as exc:
        # The flow run fails with the error's one line (a call raises it), not a traceback in the log.
        return Failed(message=str(exc), data=exc)


def run_pipeline(params_path: str, overrides: list[str] | None, root: str, force: list[str] | None,
                 git_branch: str | None, loaded: dict[str, Any] | None = None) -> dict:
    logger = get_run_logger()
    paths = ProjectPaths.at(root)
    forced = set(STAGES) if force and "all" in force else set(force or [])
    unknown = forced - set(STAGES)
    if unknown:
        raise ConfigError(f"--force names unknown stages {sorted(unknown)}; stages: {', '.join(STAGES)}")
    params_file = record.project_params(params_path, paths.root)
    # every override checked before any is written
    params = validate(loaded) if loaded is not None else load_params(params_file, overrides or [])
    record.ensure_project(paths.root)
    logger.info(tracking.check_tracking(paths.root))  # a served run checks its tracking server too
    ran, cached = [], []
    with record.hold_outputs(paths.root):
        apply_overrides(params_file, overrides or [])
        with tracking.start_run(paths.root, "pipeline", tags={"kdflow.runner": "prefect"},
                                source="flows/pipeline.py") as parent:
            parent.log_params(params.model_dump(mode="json"))
            parent.client.log_text(parent.run_id, dump_params(params), "params.yaml")
            arguments = (params.model_dump(mode="json"), str(paths.root), parent.run_id)
            for stage in STAGES:
                (cached if run_recorded_stage(stage, arguments, stage in forced) else ran).append(stage)
            parent.set_tags({"kdflow.stages_run": ",".join(ran) or "-", "kdflow.stages_cached": ",".join(cached) or "-"})
            summary = read_json(paths.summary)
            parent.log_metrics({f"{m}.test_accuracy": v["test_accuracy"] for m, v in summary["models"].items()})
            parent.log_metrics(summary["comparisons"])
            remote, sent = record.push_to_default_remote(paths.root)
            if remote:
                logger.info("pushed %d files to DVC remote '%s'", sent, remote)
            commit = record.commit_to_git(paths.root, git_branch, f"kdflow run {parent.run_id}") if git_branch else None
            record.log_record(parent, paths.root, remote, commit)
    logger.info("stages run: %s; from DVC's record: %s", ", ".join(ran) or "none", ", ".join(cached) or "none")
    return {"summary": summary, "ran": ran, "cached": cached, "mlflow_run_id": parent.run_id, "git_commit": commit}
