"""`kdflow`: run the pipeline through Prefect, serve it on a schedule, restore a run's bytes, or trace its lineage."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kdflow import graph
from kdflow.config import ConfigError, load_params


def _prefect_defaults() -> None:
    # The temporary server's telemetry otherwise races its own SQLite start-up ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start migrates a fresh database, which takes longer than the 20 s default on 2 busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# The options several commands share; each command says what its root and its overrides are for.
params_option = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="The params file.")


def root_option(help: str):
    return click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False), help=help)


def overrides_option(help: str):
    return click.option("-S", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


@click.group()
def app() -> None:
    """Distil a big model into a small, fast one for a new task: Prefect runs it, MLflow tracks it, DVC versions it."""


@app.command()
@params_option
@root_option("Project root: data/, artifacts/, metrics/, reports/ and mlflow.db live here.")
@overrides_option("Override a params key for this run, as `dvc exp run -S` does. Repeatable.")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="all", metavar="[STAGE]",
              type=click.Choice(["all", *graph.STAGES]),
              help="Rerun STAGE even if cached; without a value, every stage. Repeatable.")
@click.option("--offline", is_flag=True,
              help="Track in the project's local mlflow.db, ignoring MLFLOW_TRACKING_URI (sets KDFLOW_OFFLINE=1).")
@click.option("--git-branch", default=None, metavar="BRANCH",
              help="Commit the run's dvc.lock, params.yaml and metrics on BRANCH (made from HEAD when new; the "
                   "working tree is untouched unless it is the checked-out branch). Default: no commit.")
@click.option("--serial", is_flag=True,
              help="Run the stages one after another in this process, with all its threads, instead of each model "
                   "as soon as its inputs are ready in worker processes.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Stages that may run at once (default: one per core, or per GPU when several are visible, at "
                   "most as many as can run at once); each gets its share of the cores.")
@click.option("--dask-address", default=None, metavar="ADDRESS",
              help="Run the stages on the Dask cluster at ADDRESS (its workers see this project at the same path, "
                   "and reach the MLflow store and PREFECT_API_URL).")
def run(params_path: str, root: str, overrides: tuple[str, ...], force: tuple[str, ...], offline: bool,
        git_branch: str | None, serial: bool, workers: int | None, dask_address: str | None) -> None:
    """Run the whole pipeline once and print the results table."""
    from kdflow.artifacts import ArtifactError, CheckpointError
    from kdflow.layout import ProjectPaths
    from kdflow import record
    from kdflow.record import RecordError
    from kdflow.report import comparison_lines, text_table
    from kdflow.stage import artifact_failure, checkpoint_failure
    from kdflow.tracking import OFFLINE_ENV, TrackingUnreachable, check_tracking, tracking_uri

    if offline:
        os.environ[OFFLINE_ENV] = "1"
    try:
        click.echo(check_tracking(Path(root).resolve()))  # before anything trains
        load_params(params_path, overrides)  # fail before Prefect starts a server
        record.ensure_project(Path(root).resolve())
        with record.hold_outputs(Path(root).resolve()):  # another run holds the project: say so now, not in the flow
            pass
    except (ConfigError, TrackingUnreachable, RecordError) as exc:
        raise click.ClickException(str(exc)) from None
    except ArtifactError as exc:  # a damaged mlflow.db
        raise click.ClickException(artifact_failure(exc, ProjectPaths.at(root))) from None
    _prefect_defaults()
    from flows.server import PrefectApi

    # Prefect's temporary server starts in the background while the stages import and MLflow's store opens
    # (a fresh project's store creates its tables: seconds).
    api = PrefectApi.start()
    from flows.pipeline import StageFailed, pipeline
    from kdflow.tracking import _client, runs_page

    _, experiment_id = _client(Path(root).resolve())

    try:
        with api.settings():
            result = pipeline(params_path=params_path, overrides=list(overrides), root=root, force=list(force),
                              git_branch=git_branch, serial=serial, workers=workers, dask_address=dask_address)
    except StageFailed as exc:  # names the stage; a bad checkpoint or artifact also says how to rebuild it
        cause, paths = exc.__cause__, ProjectPaths.at(root)
        if isinstance(cause, CheckpointError):
            message = checkpoint_failure(cause, paths)
        elif isinstance(cause, ArtifactError):
            message = artifact_failure(cause, paths)
        else:
            message = str(exc)
        raise click.ClickException(message) from None
    except (ConfigError, RecordError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n" + text_table(result["summary"]) + "\n")
    for line in comparison_lines(result["summary"]):
        click.echo(line)
    click.echo(f"\nstages run: {', '.join(result['ran']) or 'none'}; "
               f"from DVC's record: {', '.join(result['cached']) or 'none'}")
    uri = tracking_uri(Path(root).resolve())
    click.echo(f"MLflow: parent run {result['mlflow_run_id']} in experiment 'kdflow' at {uri}")
    if uri.startswith(("http://", "https://")):
        click.echo(f"  browse: {runs_page(uri, experiment_id)}")
    else:
        click.echo(f"  browse: mlflow ui --backend-store-uri {uri}   then open "
                   f"{runs_page('http://127.0.0.1:5000', experiment_id)}")
    click.echo(f"  restore its bytes later: kdflow checkout {result['mlflow_run_id']}")
    if result["git_commit"]:
        click.echo(f"git: dvc.lock, params and metrics committed on {git_branch} as {result['git_commit'][:12]}")
    click.echo(f"report: {Path(root) / 'reports' / 'report.md'}")


@app.command("lr-find")
@click.argument("stage", type=click.Choice(["train_teacher", "distill", "finetune"]))
@params_option
@root_option("Project root; the stage's inputs must exist (run the stages before it first).")
@overrides_option("Override a params key.")
@click.option("--min-lr", default=1e-6, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-lr", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=2), help="Mini-batches swept.")
@click.option("--offline", is_flag=True, help="Track in the project's local mlflow.db (sets KDFLOW_OFFLINE=1).")
def lr_find(stage: str, params_path: str, root: str, overrides: tuple[str, ...], min_lr: float, max_lr: float,
            steps: int, offline: bool) -> None:
    """Learning-rate range test on STAGE's model, data and loss: plot, suggestion, MLflow run `lr_find:STAGE`."""
    from kdflow import graph
    from kdflow.artifacts import ArtifactError, CheckpointError
    from kdflow.layout import ProjectPaths
    from kdflow.lr_finder import lr_find as range_test
    from tasks.problems import stage_problem
    from kdflow.stage import artifact_failure, checkpoint_failure
    from kdflow.tracking import OFFLINE_ENV, TrackingUnreachable, check_tracking

    if offline:
        os.environ[OFFLINE_ENV] = "1"
    if min_lr >= max_lr:
        raise click.BadParameter(f"--min-lr {min_lr} must be below --max-lr {max_lr}")
    paths = ProjectPaths.at(root)
    try:
        click.echo(check_tracking(paths.root))
        params = load_params(params_path, overrides)
        missing = next((p for p in graph.STAGES[stage].deps(paths) if not p.exists()), None)
        if missing is not None:
            raise click.ClickException(f"{missing}: missing; run the stages before {stage} first "
                                       f"(`dvc repro {graph.producer(paths, missing)}` runs them)")
        found = range_test(stage, stage_problem(stage, params, paths), params, paths, min_lr, max_lr, steps)
    except (ConfigError, TrackingUnreachable) as exc:
        raise click.ClickException(str(exc)) from None
    except CheckpointError as exc:
        raise click.ClickException(checkpoint_failure(exc, paths)) from None
    except ArtifactError as exc:
        raise click.ClickException(artifact_failure(exc, paths)) from None
    click.echo(f"{stage}: suggested learning rate {found['suggested_lr']:.3g} (steepest descent of the smoothed loss); "
               f"the loss is lowest at {found['min_loss_lr']:.3g}")
    if found["suggested_train_lr"] != found["suggested_lr"]:
        click.echo(f"  under train.lr_scaling that is train.lr = {found['suggested_train_lr']:.3g}")
    click.echo(f"plot: {found['plot']}\nMLflow: run {found['mlflow_run_id']} (lr_find:{stage})")


@app.command()
@params_option
@root_option("Project root; trials are written under sweeps/ there.")
@overrides_option("Override a params key for every trial. Repeatable.")
@click.option("--grid", "grid_options", multiple=True, metavar="KEY=V1,V2,...",
              help="A distill.* key and its values (a YAML list for list values). Repeatable; "
                   "default: distill.temperature=1,2,4,8 x distill.alpha=0.5,1.0.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes of the local Dask cluster.")
@click.option("--dask-address", default=None, metavar="tcp://HOST:PORT",
              help="Run the trials on this Dask scheduler instead of a local cluster.")
def sweep(params_path: str, root: str, overrides: tuple[str, ...], grid_options: tuple[str, ...], workers: int,
          dask_address: str | None) -> None:
    """Map the distill stage over a grid on Dask; print the best trial and its `kdflow run -S` line."""
    from flows.sweep import assignments, grid_points, parse_grid_option

    try:
        grid = dict(parse_grid_option(option) for option in grid_options) or None
        for point in grid_points(grid) if grid else [{}]:
            load_params(params_path, [*overrides, *assignments(point)])  # fail before Prefect starts a server
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _prefect_defaults()
    from flows.server import PrefectApi

    api = PrefectApi.start()
    from flows.sweep import best_lines, results_table, run_sweep

    with api.settings():
        summary = run_sweep(params_path=params_path, grid=grid, overrides=list(overrides), root=root,
                            workers=workers, dask_address=dask_address)
    click.echo("\n" + results_table(summary["trials"], list(summary["grid"])) + "\n")
    click.echo(best_lines(summary))
    click.echo(f"trials: {Path(summary['best']['trial_dir']).parent}; MLflow: sweep run {summary['mlflow_run_id']}")


@app.command()
@click.option("--cron", default=None, help='Cron schedule, e.g. "0 3 * * *".')
@click.option("--interval", default=None, type=click.IntRange(min=1), metavar="SECONDS",
              help="Run every SECONDS instead of on a cron schedule.")
@click.option("--name", default="kdflow-scheduled", show_default=True, help="Deployment name.")
@params_option
@root_option("Project root, where every scheduled run works.")
def serve(cron: str | None, interval: int | None, name: str, params_path: str, root: str) -> None:
    """Serve the pipeline flow on a schedule; unchanged stages are skipped, as DVC's record says.

    Without PREFECT_API_URL it starts a Prefect server of its own (with its scheduler and UI, on 127.0.0.1) for as
    long as it serves, and says where the UI is.
    """
    if (cron is None) == (interval is None):
        raise click.UsageError("give one schedule: --cron EXPRESSION or --interval SECONDS")
    try:
        load_params(params_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _prefect_defaults()
    from flows.server import PrefectApi

    api = PrefectApi.start(scheduler=True)
    from flows.pipeline import pipeline

    schedule = {"cron": cron} if cron else {"interval": interval}
    with api.settings():
        click.echo(f"Prefect UI: {api.ui_url()}", err=True)
        pipeline.serve(name=name, **schedule, parameters={
            "params_path": str(Path(params_path).resolve()), "root": str(Path(root).resolve()),
        })


@app.command()
@click.argument("ref", metavar="RUN_ID|models:/NAME@ALIAS")
@root_option("Project root to restore into (a clone of the project: its dvc.yaml and DVC remote).")
def checkout(ref: str, root: str) -> None:
    """Restore a flow run's data and artifacts byte for byte from DVC's cache or remote; runs no stage.

    REF is the flow run's MLflow id, a stage or model run inside it, or a registered model version
    (models:/kdflow-student@champion, models:/kdflow-target/3).
    """
    from kdflow import record
    from kdflow.tracking import _client

    client, _ = _client(Path(root).resolve())
    try:
        restored = record.checkout(client, Path(root), ref)
    except record.RecordError as exc:
        raise click.ClickException(str(exc)) from None
    for path, md5 in restored:
        click.echo(f"restored {path}  md5 {md5}")
    click.echo("dvc.lock, params.yaml, metrics and plots restored too; `dvc status` shows nothing to run")


@app.command("dvc-yaml")
@root_option("Project root whose dvc.yaml to write.")
@click.option("--check", is_flag=True, help="Only say whether dvc.yaml matches the stage declarations (exit 1 if not).")
def dvc_yaml(root: str, check: bool) -> None:
    """Write dvc.yaml from the stage declarations (kdflow/graph.py)."""
    from kdflow import graph, record
    from kdflow.artifacts import write_text

    path = Path(root).resolve() / "dvc.yaml"
    expected = graph.render_dvc_yaml(record.code_prefix(path.parent))
    if check:
        if not path.exists() or path.read_text() != expected:
            raise click.ClickException(f"{path} differs from the stage declarations; `kdflow dvc-yaml` rewrites it")
        click.echo(f"{path} matches the stage declarations")
        return
    write_text(path, expected)
    click.echo(f"wrote {path}")


@app.command()
@click.argument("run_id")
@root_option("Project root holding mlflow.db (ignored when MLFLOW_TRACKING_URI is set).")
def lineage(run_id: str, root: str) -> None:
    """Print the chain of runs behind RUN_ID: data -> teacher -> soft labels -> student -> target model."""
    from mlflow.exceptions import MlflowException

    from kdflow import lineage as runs_lineage
    from kdflow.tracking import _client, tracking_uri

    client, _ = _client(Path(root).resolve())
    try:
        chain = runs_lineage.chain(client, run_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except MlflowException:
        raise click.ClickException(f"run {run_id} not found at {tracking_uri(Path(root).resolve())}") from None
    click.echo(runs_lineage.format_chain(client, chain))


if __name__ == "__main__":
    app()
