"""What every stage shares: its MLflow run and training one model with full tracking.

`kdflow stage <name>` (what `dvc repro` calls) and the Prefect flow both call the stage's `run` with params read
through the same schema.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Callable, Sequence

from kdflow.artifacts import check_writable, file_digest, files_in, write_json, write_text
from kdflow.checkpoints import save_model
from kdflow.config import Params, TrainSpec
from kdflow import distributed, graph
from kdflow.layout import ProjectPaths
from kdflow.resume import ResumeFile, training_fingerprint
from kdflow.training import FitResult, Training, effective_lr, fit_batches, intra_op_threads


def output_dirs(paths: ProjectPaths, stage: str) -> list[Path]:
    """The folders `stage` writes into, from its declaration (and the resume state of a stage that trains)."""
    declared = graph.STAGES[stage]
    folders = [p for p in declared.outs(paths) if not p.suffix]  # an out with a suffix is a file: metrics/<stage>.json
    files = [*declared.kept_in_git(paths), *(p for p in declared.outs(paths) if p.suffix)]
    resume = [paths.resume_state("-").parent] if declared.plots(paths) else []
    return sorted({*folders, *(p.parent for p in files), *resume})


def stage_train_spec(params: Params, stage: str) -> TrainSpec | None:
    """The training settings of `stage` (its params sections' `train`, or a `*.train` section itself, as the
    baselines' `distill.train`); None for a stage that trains nothing."""
    for section in graph.STAGES[stage].sections():
        node = params
        for part in section.split("."):
            node = getattr(node, part)
        train = node if isinstance(node, TrainSpec) else getattr(node, "train", None)
        if isinstance(train, TrainSpec):
            return train
    return None


class Untracked:
    """What a rank other than 0 tracks under torchrun: nothing (rank 0 records the run)."""

    input_digests: dict = {}

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None

    @contextlib.contextmanager
    def child(self, name: str, tags: dict | None = None):
        yield self


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
    if not distributed.is_main():
        yield Untracked()
        return
    inputs = graph.STAGES[stage].read_files(paths) + list(extra_inputs)
    with _tracked_stage(paths, stage, params, parent_run_id, _checked_inputs(paths, stage, inputs)) as tracked:
        yield tracked


@contextlib.contextmanager
def training_stage_run(paths: ProjectPaths, stage: str, params: Params, parent_run_id: str | None,
                       declare: Callable[[], object], extra_inputs: Sequence[Path] = ()):
    """stage_run for a stage that trains: yields its run and `declare()`, what the stage trains (its `trainings`).

    The declaration reads the inputs, so it is made after they are checked; and before the run opens, so that one
    that fails (weights that do not fit the teacher) ends the stage with its own message and leaves no run.
    `extra_inputs` are files the declaration names itself (a teacher's starting weights): checked after it, so a
    missing one is the declaration's error.
    """
    from kdflow import consistency

    if not distributed.is_main():  # rank 0 checks and tracks; every rank trains
        yield Untracked(), declare()
        return
    digests = _checked_inputs(paths, stage, graph.STAGES[stage].read_files(paths))
    declared = declare()
    digests |= consistency.check_inputs(paths, extra_inputs)
    with _tracked_stage(paths, stage, params, parent_run_id, digests) as tracked:
        yield tracked, declared


def _checked_inputs(paths: ProjectPaths, stage: str, inputs: Sequence[Path]) -> dict[str, str]:
    """The md5s of `inputs`, once they are found to belong together (kdflow.consistency) and every folder `stage`
    writes to take a file."""
    from kdflow import consistency

    digests = consistency.check_inputs(paths, inputs)  # hashed once: checked, tagged, recorded in checkpoints
    for directory in output_dirs(paths, stage):
        check_writable(directory)
    return digests


@contextlib.contextmanager
def _tracked_stage(paths: ProjectPaths, stage: str, params: Params, parent_run_id: str | None,
                   digests: dict[str, str]):
    """The stage's MLflow run on its checked inputs' `digests`, as stage_run describes it."""
    from kdflow import lineage, tracking

    declared = graph.STAGES[stage]
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


def train_model(stage_tracked, paths: ProjectPaths, training: Training) -> FitResult:
    """Fit what `training` declares in its own nested MLflow run; write its checkpoint and curve; tag the
    checkpoint's md5. Under torchrun every rank trains and rank 0 alone does the rest (kdflow.distributed).

    Training resumes from `.kdflow/resume/<name>.pt` when a killed run of the same settings and inputs left one;
    a state a live run holds is an ArtifactError (see kdflow.resume).
    """
    from models import count_parameters

    name, train, data, val = training.name, training.train, training.data, training.val
    settings = {"model": name, "arch": training.arch.model_dump(mode="json"), "train": train.model_dump(mode="json"),
                "seed": training.seed, "train_samples": data.num_samples, **training.extra_params}
    model, param_groups, before_epoch = training.setup()
    resume = None
    with contextlib.ExitStack() as holding:
        if train.resume_every:
            fingerprint = training_fingerprint(settings, model, [*data.identity(), *val])
            resume = ResumeFile(paths.resume_state(name), fingerprint, train.resume_every)
            if distributed.is_main():  # the other ranks only read the state rank 0 writes
                holding.enter_context(resume.held())  # until the state is removed: no other run may take it
        with stage_tracked.child(name, tags={"kdflow.model": name}) as tracked:
            tracked.log_params({**{k: v for k, v in settings.items() if k != "model"},
                                "lr_effective": effective_lr(train, data.num_samples)})
            with intra_op_threads(train.threads):  # the same count under every runner: the same bytes
                result = fit_batches(
                    model, data, train, seed=training.seed, loss_fn=training.loss_fn, val=val,
                    param_groups=param_groups, before_epoch=before_epoch,
                    on_epoch=lambda epoch, record: tracked.log_metrics(record, step=epoch), description=name,
                    resume=resume,
                )
            if not distributed.is_main():
                return result
            # What it was trained from, so a later stage can tell a checkpoint of other inputs (kdflow.consistency).
            checkpoint = save_model(paths.checkpoint(name), model, training.arch, training.input_shape,
                                    training.class_names, extra={"inputs": stage_tracked.input_digests})
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
            resume.remove()  # every rank read it before the first epoch's collectives
    return result


def write_stage_metrics(paths: ProjectPaths, stage: str, metrics: dict) -> None:
    if distributed.is_main():
        write_json(paths.stage_metrics(stage), metrics)
