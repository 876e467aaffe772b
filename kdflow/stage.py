"""What every stage shares: its MLflow run, training one model with full tracking, and its command line.

`python -m tasks.<stage>` (what `dvc repro` calls) only parses arguments and calls the stage's `run`, as the
Prefect flow does; both read params.yaml through the same schema.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from kdflow.artifacts import (ArtifactError, CheckpointError, check_writable, file_digest, files_in, write_json,
                              write_text)
from kdflow.checkpoints import save_model
from kdflow.config import ConfigError, Params, TrainSpec, load_params
from kdflow import graph
from kdflow.layout import ProjectPaths
from kdflow.resume import ResumeFile, training_fingerprint
from kdflow.training import FitResult, LossFn, cross_entropy_loss, effective_lr, fit, intra_op_threads

StageFn = Callable[[Params, ProjectPaths, "str | None"], dict]

def output_dirs(paths: ProjectPaths, stage: str) -> list[Path]:
    """The folders `stage` writes into, from its declaration (and the resume state of a stage that trains)."""
    declared = graph.STAGES[stage]
    files = [*declared.metrics(paths), *declared.plots(paths), *(p for p in declared.outs(paths) if p.suffix)]
    folders = [p for p in declared.outs(paths) if not p.suffix]  # an out is a file (teacher.pt) or a folder
    resume = [paths.resume_state("-").parent] if declared.plots(paths) else []
    return sorted({*folders, *(p.parent for p in files), *resume})


@contextlib.contextmanager
def stage_run(paths: ProjectPaths, stage: str, params: Params, parent_run_id: str | None,
              extra_inputs: Sequence[Path] = ()):
    """The stage's MLflow run: its params sections, seed, the md5 of every input file and the ids of the runs
    that wrote them as tags (see kdflow.lineage), and the input files as MLflow datasets; its model runs carry the
    same lineage tags and datasets. The inputs are the files kdflow.graph declares for the stage (plus
    `extra_inputs`, a user's data files); on success the run tags the md5 of every file the declaration says it
    writes, for later stages to find it by.

    Before the run starts, the inputs must belong together (kdflow.consistency) and every folder the stage writes
    must take a file: a stale input or a read-only folder fails now, not after the training.
    """
    from kdflow import consistency, lineage, tracking

    declared = graph.STAGES[stage]
    inputs = declared.read_files(paths) + list(extra_inputs)
    digests = consistency.check_inputs(paths, inputs)  # hashed once: checked, tagged, recorded in checkpoints
    for directory in output_dirs(paths, stage):
        check_writable(directory)
    inputs_md5 = lineage.input_tags(digests)
    with tracking.start_run(paths.root, stage, parent_run_id, {"kdflow.stage": stage, **inputs_md5},
                            source=f"tasks/{stage}.py") as tracked:
        upstream = lineage.upstream_tags(tracked.client, tracked.experiment_id, digests)
        tracked.set_tags(upstream)
        tracked.inherited_tags = {**inputs_md5, **upstream}
        tracked.input_digests = digests
        tracked.inherited_datasets = tracking.file_datasets(paths.root, digests)
        tracked.log_datasets(tracked.inherited_datasets)
        tracked.log_params({"seed": params.seed, **{s: params.section(s) for s in declared.sections()}})
        yield tracked
        written = [file for out in declared.written(paths) for file in files_in(out)]
        tracked.set_tags(lineage.output_tags(paths.root, written))


def write_curve(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch history as CSV for `dvc plots`."""
    columns = ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for epoch, record in enumerate(history, start=1):
        writer.writerow({"epoch": epoch, **{k: f"{record[k]:.6g}" for k in columns[1:] if k in record}})
    write_text(path, buffer.getvalue())


def train_model(
    stage_tracked,
    paths: ProjectPaths,
    name: str,
    model: nn.Module,
    spec,
    train: TrainSpec,
    x: torch.Tensor,
    targets: Sequence[torch.Tensor],
    *,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor],
    input_shape: tuple[int, ...],
    class_names: list[str],
    loss_fn: LossFn = cross_entropy_loss,
    param_groups=None,
    before_epoch: Callable[[int], None] | None = None,
    extra_params: dict | None = None,
) -> FitResult:
    """Fit one model in its own nested MLflow run; write its checkpoint and curve; tag the checkpoint's md5.

    Training resumes from `.kdflow/resume/<name>.pt` when a killed run of the same settings and inputs left one;
    a state a live run holds is an ArtifactError (see kdflow.resume).
    """
    from models import count_parameters

    settings = {"model": name, "arch": spec.model_dump(mode="json"), "train": train.model_dump(mode="json"),
                "seed": seed, "train_samples": len(x), **(extra_params or {})}
    resume = None
    with contextlib.ExitStack() as holding:
        if train.resume_every:
            fingerprint = training_fingerprint(settings, model, [x, *targets, *val])
            resume = ResumeFile(paths.resume_state(name), fingerprint, train.resume_every)
            holding.enter_context(resume.held())  # until the state is removed: no other run may take it
        with stage_tracked.child(name, tags={"kdflow.model": name}) as tracked:
            tracked.log_params({**{k: v for k, v in settings.items() if k != "model"},
                                "lr_effective": effective_lr(train, len(x))})
            with intra_op_threads(train.threads):  # the same count under every runner: the same bytes
                result = fit(
                    model, x, targets, train, seed=seed, loss_fn=loss_fn, val=val, param_groups=param_groups,
                    before_epoch=before_epoch, on_epoch=lambda epoch, record: tracked.log_metrics(record, step=epoch),
                    description=name, resume=resume,
                )
            # What it was trained from, so a later stage can tell a checkpoint of other inputs (kdflow.consistency).
            checkpoint = save_model(paths.checkpoint(name), model, spec, input_shape, class_names,
                                    extra={"inputs": stage_tracked.input_digests})
            write_curve(paths.curve(name), result.history)
            summary = {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                       "epochs_run": len(result.history), "parameters": count_parameters(model)}
            tracked.log_metrics(summary)
            tracked.set_tags({"kdflow.checkpoint_md5": file_digest(checkpoint),
                              "kdflow.stopped_early": result.stopped_early,
                              "kdflow.resumed_from_epoch": result.resumed_from_epoch})
            tracked.log_artifact(checkpoint, "checkpoint")
            tracked.log_artifact(paths.curve(name), "curves")
        if resume is not None:
            resume.remove()
    return result


def write_stage_metrics(paths: ProjectPaths, stage: str, metrics: dict) -> None:
    write_json(paths.stage_metrics(stage), metrics)


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


def stage_main(stage: str, run: StageFn, argv: list[str] | None = None) -> None:
    """`python -m tasks.<stage> [--params params.yaml] [--root .] [-S key=value ...]`."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--root", default=".", help="the project root holding data/, artifacts/ (default: .)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key, as `dvc exp run -S` does")
    args = parser.parse_args(argv)
    from kdflow import tracking

    paths = ProjectPaths.at(args.root)
    try:  # a bad params file, or a bad data file it names (kdflow.sources.DataError)
        params = load_params(paths.root / args.params, args.overrides)
        print(tracking.check_tracking(paths.root), flush=True)
        metrics = run(params, paths, None)
    except (ConfigError, tracking.TrackingUnreachable) as exc:
        sys.exit(f"error: {exc}")
    except CheckpointError as exc:
        sys.exit(f"error: {checkpoint_failure(exc, paths)}")
    except ArtifactError as exc:
        sys.exit(f"error: {artifact_failure(exc, paths)}")
    except FileNotFoundError as exc:
        message = missing_input(exc, stage, paths)
        if message is None:
            raise
        sys.exit(f"error: {message}")
    print(json.dumps(metrics, indent=2, sort_keys=True))
