"""The commands that need no Prefect: one stage (what `dvc repro` runs), lr-find, checkout, lineage, dvc.yaml."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import click

from cli.options import fail_clearly, go_offline, offline_option, overrides_option, params_option, root_option
from kdflow import graph
from kdflow.config import load_params
from kdflow.layout import ProjectPaths

@click.command()
@click.argument("name", metavar="NAME", type=click.Choice(list(graph.STAGES)))
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The params file, relative to the root.")
@root_option("Project root holding data/, artifacts/ and the params file.")
@overrides_option("Override a params key, as `dvc exp run -S` does. Repeatable.")
@click.option("--parent-run-id", default=None, help="The MLflow run to nest the stage's run under (the flow's).")
def stage(name: str, params_path: str, root: str, overrides: tuple[str, ...], parent_run_id: str | None) -> None:
    """Run stage NAME once and print its metrics: dvc.yaml's command for it (`dvc repro` records the run).

    A training stage whose `train.nproc_per_node` is above 1 reruns this command as that many torchrun ranks."""
    from kdflow import distributed, tracking
    from kdflow.stage import stage_train_spec

    paths = ProjectPaths.at(root)
    try:  # a bad params file, or a bad data file it names (kdflow.sources.DataError)
        params = load_params(paths.root / params_path, overrides)
        train = stage_train_spec(params, name)
        if train is not None and train.nproc_per_node > 1 and not distributed.launched():
            sys.exit(distributed.relaunch(train.nproc_per_node, "cli.main", sys.argv[1:]))  # the ranks' status
        if train is not None:
            distributed.join(train.device)
        if distributed.is_main():
            click.echo(tracking.check_tracking(paths.root))
        metrics = importlib.import_module(graph.STAGES[name].module).run(params, paths, parent_run_id)
    except Exception as exc:
        fail_clearly(exc, paths, stage=name)
    if distributed.is_main():
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))


@click.command("lr-find")
@click.argument("stage", metavar="STAGE", type=click.Choice(graph.TRAINING_STAGES))
@params_option
@root_option("Project root; the stage's inputs must exist (run the stages before it first).")
@overrides_option("Override a params key.")
@click.option("--min-lr", default=1e-6, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-lr", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=2), help="Mini-batches swept.")
@offline_option
def lr_find(stage: str, params_path: str, root: str, overrides: tuple[str, ...], min_lr: float, max_lr: float,
            steps: int, offline: bool) -> None:
    """Learning-rate range test on the first model STAGE trains, with its data, loss and param groups: plot,
    suggestion, MLflow run `lr_find:STAGE`."""
    from kdflow import tracking
    from kdflow.consistency import check_inputs
    from kdflow.lr_finder import lr_find as learning_rate_sweep

    go_offline(offline)
    if min_lr >= max_lr:
        raise click.BadParameter(f"--min-lr {min_lr} must be below --max-lr {max_lr}")
    paths = ProjectPaths.at(root)
    try:
        click.echo(tracking.check_tracking(paths.root))
        params = load_params(params_path, overrides)
        # Only what a stage writes: raw data (data/raw, weights a teacher starts from) is the user's to bring.
        missing = next((p for p in graph.STAGES[stage].deps(paths) if not p.exists() and graph.producer(paths, p)),
                       None)
        if missing is not None:
            raise click.ClickException(f"{missing}: missing; run the stages before {stage} first "
                                       f"(`dvc repro {graph.producer(paths, missing)}` runs them)")
        check_inputs(paths, graph.STAGES[stage].read_files(paths))  # what the stage reads, as it checks them
        first = importlib.import_module(graph.STAGES[stage].module).trainings(params, paths)[0]
        found = learning_rate_sweep(stage, first, paths, min_lr, max_lr, steps)
    except click.ClickException:
        raise
    except Exception as exc:
        fail_clearly(exc, paths)
    click.echo(f"{stage}: suggested learning rate {found['suggested_lr']:.3g} (steepest descent of the smoothed loss); "
               f"the loss is lowest at {found['min_loss_lr']:.3g}")
    if found["suggested_train_lr"] != found["suggested_lr"]:
        click.echo(f"  under train.lr_scaling that is train.lr = {found['suggested_train_lr']:.3g}")
    click.echo(f"plot: {found['plot']}\nMLflow: run {found['mlflow_run_id']} (lr_find:{stage})")


@click.command()
@click.argument("ref", metavar="RUN_ID|models:/NAME@ALIAS")
@root_option("Project root to restore into (a clone of the project: its dvc.yaml and DVC remote).")
def checkout(ref: str, root: str) -> None:
    """Restore a flow run's data and artifacts byte for byte from DVC's cache or remote; runs no stage.

    REF is the flow run's MLflow id, a stage or model run inside it, or a registered model version
    (models:/kdflow-student@champion, models:/kdflow-target/3).
    """
    from kdflow import record, tracking

    client, _ = tracking.project_client(Path(root).resolve())
    try:
        restored = record.checkout(client, Path(root), ref)
    except record.RecordError as exc:
        raise click.ClickException(str(exc)) from None
    for path, md5 in restored:
        click.echo(f"restored {path}  md5 {md5}")
    click.echo("dvc.lock, params.yaml, metrics and plots restored too; `dvc status` shows nothing to run")


@click.command("dvc-yaml")
@root_option("Project root whose dvc.yaml to write.")
@click.option("--check", is_flag=True, help="Only say whether dvc.yaml matches the stage declarations (exit 1 if not).")
def dvc_yaml(root: str, check: bool) -> None:
    """Write dvc.yaml from the stage declarations (kdflow/graph.py)."""
    from kdflow import record
    from kdflow.artifacts import write_text

    path = ProjectPaths.at(root).dvc_yaml
    expected = graph.render_dvc_yaml(record.code_prefix(path.parent))
    if check:
        if not path.exists() or path.read_text() != expected:
            raise click.ClickException(f"{path} differs from the stage declarations; `kdflow dvc-yaml` rewrites it")
        click.echo(f"{path} matches the stage declarations")
        return
    write_text(path, expected)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("run_id")
@root_option("Project root holding mlflow.db (ignored when MLFLOW_TRACKING_URI is set).")
def lineage(run_id: str, root: str) -> None:
    """Print the chain of runs behind RUN_ID: data -> teacher -> soft labels -> student -> target model."""
    from mlflow.exceptions import MlflowException

    from kdflow import lineage as runs_lineage
    from kdflow import tracking

    client, _ = tracking.project_client(Path(root).resolve())
    try:
        chain = runs_lineage.chain(client, run_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except MlflowException:
        raise click.ClickException(
            f"run {run_id} not found at {tracking.redacted(tracking.tracking_uri(Path(root).resolve()))}") from None
    click.echo(runs_lineage.format_chain(client, chain))
