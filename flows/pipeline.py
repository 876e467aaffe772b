"""The pipeline as one Prefect flow: the same stage functions `dvc repro` runs, as tasks, each started as soon as
the stages it reads from are done (one per model: the baselines train while the teacher does), on the runner
the caller chooses (flows.runners: local processes by default, a Dask cluster, or one after another).

There is one record of what was computed from what, DVC's (kdflow.record): before a stage starts, the flow asks
DVC whether it is up to date, as `dvc repro` would; a task runs the stage function when it is not, and the flow's
own process records the result in dvc.lock and DVC's cache (one writer, however many stages run at once). So
`kdflow run` then `dvc repro` runs nothing, and the other way round. Prefect adds the schedules, retries and the
UI of runs. After the stages, a configured DVC remote receives the outputs, and the parent MLflow run keeps dvc.lock (and what git keeps), so `kdflow checkout <run>` can restore the run's bytes.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.states import Failed

from flows import runners
from kdflow import graph, record, schedule, tracking
from kdflow.artifacts import read_json
from kdflow.config import ConfigError, Params, dump_params, load_params, validate
from kdflow.layout import ProjectPaths
from flows.retries import STAGE_TASK_OPTIONS


def stage_function(module: str):
    """The `run` of the stage module `module`, imported at its first call: the flow's own process only orders and
    records the stages, and the worker that runs one has imported it already (flows.runners)."""
    def run(params: Params, paths: ProjectPaths, parent_run_id: str | None) -> dict:
        return importlib.import_module(module).run(params, paths, parent_run_id)

    return run


STAGES = {name: stage_function(stage.module) for name, stage in graph.STAGES.items()}


class StageFailed(RuntimeError):
    """A stage that failed for good: a deterministic error, or a transient one that outlasted its retries."""


@task(task_run_name="{stage}", **STAGE_TASK_OPTIONS)
def train_stage(stage: str, params: dict[str, Any], root: str, parent_run_id: str | None,
                slot: schedule.Slot | None) -> tuple[float, float]:
    """Run `stage`'s function, which DVC's record says must run (the flow records it after); its wall and CPU
    seconds (the CPU time of its process: on a shared machine, the work apart from the wait for a core). In a
    `slot`, with that slot's thread budget and GPU; without, as the process is (the serial schedule)."""
    if slot is not None:
        schedule.use_slot(slot)
    started, cpu_started = time.perf_counter(), time.process_time()
    call_stage(stage, validate(params), ProjectPaths.at(root), parent_run_id)
    return time.perf_counter() - started, time.process_time() - cpu_started


def call_stage(stage: str, params: Params, paths: ProjectPaths, parent_run_id: str | None) -> dict:
    """The stage in this process, or, when its `train.nproc_per_node` asks for more, as that many torchrun ranks
    running its command (`kdflow stage <stage>`, which reads the params.yaml the flow wrote, as `dvc repro`)."""
    from kdflow import distributed
    from kdflow.stage import stage_train_spec

    train = stage_train_spec(params, stage)
    if train is None or train.nproc_per_node == 1:
        return STAGES[stage](params, paths, parent_run_id)
    arguments = ["stage", stage, "--root", str(paths.root)] + (["--parent-run-id", parent_run_id] if parent_run_id else [])
    status = distributed.relaunch(train.nproc_per_node, "cli.main", arguments)
    if status:
        raise StageFailed(f"stage '{stage}' failed under torchrun ({train.nproc_per_node} processes, exit status "
                          f"{status}); its output above says why")
    return read_json(paths.stage_metrics(stage))


def failure(stage: str, error: Exception) -> Exception:
    """The error a stage's failed task raised, as the flow raises it: DVC's own, or StageFailed naming the stage."""
    if isinstance(error, record.RecordError):
        return error
    failed = StageFailed(f"stage '{stage}' failed: {type(error).__name__}: {error}")
    failed.__cause__ = error
    return failed


def run_stages(names: list[str], arguments: tuple, forced: set[str], runner: runners.StageRunner) -> dict:
    """Run the stages `names` (in pipeline order) as their inputs become ready, on `runner`'s slots; each is first
    decided by DVC's record (skipped, restored, or run) and recorded by this process when it finishes (in worker
    processes, once the stages it made ready have started), so dvc.lock has one writer. `arguments` are
    train_stage's (params, root, parent_run_id).

    A stage that fails for good raises StageFailed (or RecordError) once the stages already running have finished
    and been recorded: nothing done is lost. Returns {"ran", "cached", "seconds", "cpu_seconds"} (stages in
    pipeline order).
    """
    root = arguments[1]
    needs = {name: [up for up in graph.needs(name) if up in names] for name in names}
    pending, done, seconds, cpu_seconds, cached = list(names), set(), {}, {}, []
    free, running, failed, unrecorded, ordered = list(runner.slots), {}, None, [], False
    current = record.current_stages(root, names, forced)  # what an unchanged rerun skips, decided at once
    while pending or running or unrecorded:
        decided = False
        try:
            for stage in schedule.ready(pending, done, needs) if failed is None else []:
                if stage not in current and not free:
                    continue
                pending.remove(stage)
                if stage in current or record.begin_stage(root, stage, stage in forced) is not None:
                    cached.append(stage)
                    done.add(stage)
                    decided = True  # its dependants may be ready now
                    continue
                slot = free.pop(0)
                running[runner.submit(train_stage, stage, *arguments, slot)] = (stage, slot)
        finally:
            # A finished stage is recorded once the stages that read its outputs have started (they read the
            # files, not its record), so DVC's rewrite of dvc.lock is off the critical path; or once deciding or
            # starting them failed: nothing done is lost.
            while unrecorded:
                record.commit_stage(root, unrecorded.pop(0))
        if decided:
            continue
        if not running:
            break
        if not pending and not ordered:
            # Every stage has started: the lock's order is put right while the last ones run, not after them (their
            # records are appended; the end checks the order again and rewrites it only if they finished out of order)
            record.order_lock(root)
            ordered = True
        future = next(as_completed(list(running)))
        stage, slot = running.pop(future)
        free.insert(0, slot)
        try:  # the task's own result: its state, read back from the API, may lag behind it
            seconds[stage], cpu_seconds[stage] = future.result()
        except Exception as error:  # noqa: BLE001 - whatever the stage raised, once its retries are spent
            failed = failed or failure(stage, error)
            continue
        done.add(stage)
        if runner.kind == "serial":  # the next stage would run in this process while DVC works in the project's folder
            record.commit_stage(root, stage)
        else:
            unrecorded.append(stage)
    record.order_lock(root)
    if failed is not None:
        raise failed
    order = list(names)
    return {"ran": [s for s in order if s in seconds], "cached": [s for s in order if s in cached], "seconds": seconds,
            "cpu_seconds": cpu_seconds}


def apply_overrides(params_path: Path, overrides: list[str]) -> None:
    """Write `-S` overrides into params.yaml as `dvc exp run -S` does (DVC's own code), so dvc.lock records the
    params the stages ran with."""
    if overrides:
        from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

        dvc_apply_overrides(params_path, overrides)


@flow(name="kdflow-pipeline", log_prints=True, persist_result=False)
def pipeline(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
             force: list[str] | None = None, git_branch: str | None = None,
             params: dict[str, Any] | None = None, serial: bool = False, workers: int | None = None,
             dask_address: str | None = None) -> dict:
    """Run every stage that DVC's record says is not current, each as soon as its inputs are ready; `force` names
    stages to rerun regardless ("all" for every stage); `git_branch` commits the run's dvc.lock, params and
    metrics on that branch. `params` are those of `params_path` with `overrides`, when the caller has loaded them
    already (`kdflow run` does, to fail before Prefect starts); a scheduled run reads the file as it is then.
    Where the stages run: flows.runners (`serial`, `workers`, `dask_address`)."""
    try:
        return run_pipeline(params_path, overrides, root, force, git_branch,
                            runners.choose(serial, workers, dask_address), params)
    except (ConfigError, record.RecordError, StageFailed) as exc:
        # The flow run fails with the error's one line (a call raises it), not a traceback in the log.
        return Failed(message=str(exc), data=exc)


def run_pipeline(params_path: str, overrides: list[str] | None, root: str, force: list[str] | None,
                 git_branch: str | None, runner: runners.StageRunner, loaded: dict[str, Any] | None = None) -> dict:
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
    with record.hold_outputs(paths.root):
        apply_overrides(params_file, overrides or [])
        with tracking.start_run(paths.root, "pipeline", tags={"kdflow.runner": "prefect",
                                                              "kdflow.schedule": runner.kind},
                                source="flows/pipeline.py") as parent:
            parent.log_params(params.model_dump(mode="json"))
            parent.client.log_text(parent.run_id, dump_params(params), "params.yaml")
            arguments = (params.model_dump(mode="json"), str(paths.root), parent.run_id)
            with runner:
                done = run_stages(list(STAGES), arguments, forced, runner)
            ran, cached = done["ran"], done["cached"]
            parent.set_tags({"kdflow.stages_run": ",".join(ran) or "-", "kdflow.stages_cached": ",".join(cached) or "-",
                             "kdflow.slots": len(runner.slots)})
            parent.log_metrics({f"{kind}.{stage}": value for kind in ("seconds", "cpu_seconds")
                                for stage, value in done[kind].items()})
            summary = read_json(paths.summary)
            parent.log_metrics({f"{m}.test_accuracy": v["test_accuracy"] for m, v in summary["models"].items()})
            parent.log_metrics(summary["comparisons"])
            remote, sent = record.push_to_default_remote(paths.root)
            if remote:
                logger.info("pushed %d files to DVC remote '%s'", sent, remote)
            commit = record.commit_to_git(paths.root, git_branch, f"kdflow run {parent.run_id}") if git_branch else None
            record.log_record(parent, paths.root, remote, commit)
    logger.info("stages run: %s; from DVC's record: %s", ", ".join(ran) or "none", ", ".join(cached) or "none")
    return {"summary": summary, "ran": ran, "cached": cached, "stage_seconds": done["seconds"],
            "stage_cpu_seconds": done["cpu_seconds"],
            "mlflow_run_id": parent.run_id, "git_commit": commit, "schedule": runner.kind, "slots": len(runner.slots)}
