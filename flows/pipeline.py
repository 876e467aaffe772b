"""The pipeline as one Prefect flow: the same stage functions `dvc repro` runs, as tasks, in dependency order.

Caching follows DVC's rule: a stage is skipped when its params sections and the md5 of every dependency that
`dvc.yaml` lists for it (code and upstream outputs; for `prepare`, also every data file params.yaml names) are
unchanged, and its outputs on disk are still the ones that cached run wrote (a cache hit whose outputs were
deleted or overwritten reruns). Cache records and results live under the project, in `.kdflow/prefect`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext

import kdflow
from kdflow import tracking
from kdflow.artifacts import read_json, tree_digest
from kdflow.config import dump_params, load_params, validate
from kdflow.layout import ProjectPaths
from kdflow.sources import raw_files, resolve
from flows.retries import STAGE_RETRIES, STAGE_RETRY_DELAYS, STAGE_RETRY_JITTER, retry_on_transient
from tasks import distill, evaluate, finetune, prepare, soft_labels, train_teacher

STAGES = {
    "prepare": prepare.run,
    "train_teacher": train_teacher.run,
    "soft_labels": soft_labels.run,
    "distill": distill.run,
    "finetune": finetune.run,
    "evaluate": evaluate.run,
}
CODE_ROOT = Path(kdflow.__file__).resolve().parent.parent
CODE_DIRS = ("kdflow", "models", "tasks", "flows")


class StageFailed(RuntimeError):
    """A stage that failed for good: a deterministic error, or a transient one that outlasted its retries."""


def stage_graph(root: Path) -> dict[str, dict]:
    """dvc.yaml's stages: the project's own, else the one shipped beside the code."""
    path = root / "dvc.yaml" if (root / "dvc.yaml").exists() else CODE_ROOT / "dvc.yaml"
    return yaml.safe_load(path.read_text())["stages"]


def _entries(entries: list) -> list[str]:
    """dvc.yaml lists paths as strings or as one-key mappings carrying options."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]


def dependency_path(root: Path, dep: str) -> Path:
    """Code deps are hashed where the code is; data deps in the project."""
    return (CODE_ROOT if dep.split("/")[0] in CODE_DIRS else root) / dep


def output_digests(root: Path, stage: str) -> dict[str, str | None]:
    """md5 of each output dvc.yaml lists for the stage (outs, metrics, plots); None where it is missing."""
    stage_def = stage_graph(root)[stage]
    outputs = [out for key in ("outs", "metrics", "plots") for out in _entries(stage_def.get(key))]
    return {out: tree_digest(root / out) if (root / out).exists() else None for out in outputs}


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    stage, root = parameters["stage"], Path(parameters["root"])
    stage_def = stage_graph(root)[stage]
    params = parameters["params"]
    fingerprint = {
        "stage": stage,
        "params": {name: params[name] for name in _entries(stage_def.get("params"))},
        "deps": {dep: tree_digest(dependency_path(root, dep)) for dep in _entries(stage_def.get("deps"))},
    }
    if stage == "prepare":  # the user's files, wherever params.yaml puts them (dvc.yaml sees those in data/raw)
        fingerprint["raw"] = {path: tree_digest(resolve(root, path)) for path in raw_files(validate(params).data)}
    return f"{stage}-" + hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


@task(task_run_name="{stage}", persist_result=True, cache_key_fn=stage_cache_key, result_serializer="json",
      retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAYS, retry_jitter_factor=STAGE_RETRY_JITTER,
      retry_condition_fn=retry_on_transient)
def run_stage(stage: str, params: dict[str, Any], root: str, parent_run_id: str | None) -> dict:
    """The stage's metrics and the digests of the outputs it wrote, to validate a later cache hit."""
    paths = ProjectPaths.at(root)
    metrics = STAGES[stage](validate(params), paths, parent_run_id)
    return {"metrics": metrics, "outputs": output_digests(paths.root, stage)}


def run_cached_stage(stage: str, arguments: tuple, refresh: bool) -> bool:
    """Run `stage` as a task unless cached (or `refresh`); True when it came from the cache.

    `arguments` are run_stage's (params, root, parent_run_id). A stage that fails for good raises StageFailed
    naming it, with the stage's own error as the cause.
    """
    root = Path(arguments[1])
    storage = root / ".kdflow" / "prefect"
    state = run_stage.with_options(refresh_cache=refresh, result_storage=storage)(stage, *arguments, return_state=True)
    if state.name == "Cached" and state.result()["outputs"] != output_digests(root, stage):
        get_run_logger().info("%s: cached, but its outputs on disk changed or are missing; rerunning", stage)
        state = run_stage.with_options(refresh_cache=True, result_storage=storage)(stage, *arguments, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        raise StageFailed(f"stage '{stage}' failed: {type(error).__name__}: {error}") from error
    return state.name == "Cached"


@flow(name="kdflow-pipeline", log_prints=True)
def pipeline(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
             force: list[str] | None = None) -> dict:
    """Run every stage; `force` names stages to rerun regardless of the cache ("all" for every stage)."""
    logger = get_run_logger()
    paths = ProjectPaths.at(root)
    params = load_params(params_path, overrides or [])
    forced = set(STAGES) if force and "all" in force else set(force or [])
    unknown = forced - set(STAGES)
    if unknown:
        raise ValueError(f"--force names unknown stages {sorted(unknown)}; stages: {', '.join(STAGES)}")
    logger.info(tracking.check_tracking(paths.root))  # a served run checks its tracking server too
    ran, cached = [], []
    with tracking.start_run(paths.root, "pipeline", tags={"kdflow.runner": "prefect"}, source="flows/pipeline.py") as parent:
        parent.log_params(params.model_dump(mode="json"))
        parent.client.log_text(parent.run_id, dump_params(params), "params.yaml")
        arguments = (params.model_dump(mode="json"), str(paths.root), parent.run_id)
        for stage in STAGES:
            (cached if run_cached_stage(stage, arguments, stage in forced) else ran).append(stage)
        parent.set_tags({"kdflow.stages_run": ",".join(ran) or "-", "kdflow.stages_cached": ",".join(cached) or "-"})
        summary = read_json(paths.summary)
        parent.log_metrics({f"{m}.test_accuracy": v["test_accuracy"] for m, v in summary["models"].items()})
        parent.log_metrics(summary["comparisons"])
    logger.info("stages run: %s; from cache: %s", ", ".join(ran) or "none", ", ".join(cached) or "none")
    return {"summary": summary, "ran": ran, "cached": cached, "mlflow_run_id": parent.run_id}
