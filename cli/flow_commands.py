"""The commands that run a Prefect flow: `run` (the pipeline once), `sweep` (a grid on Dask), `serve` (a schedule).

Each checks its choices and loads its params once: `sweep` and `serve` before the Prefect API (flows.server) starts,
`run` while Prefect's temporary server starts (it is stopped if a check fails).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from cli.options import (failure_message, fail_clearly, go_offline, offline_option, overrides_option, params_option,
                         root_option)
from kdflow import graph
from kdflow.config import load_params
from kdflow.layout import ProjectPaths


@click.command()
@params_option
@root_option("Project root: data/, artifacts/, metrics/, reports/ and mlflow.db live here.")
@overrides_option("Override a params key for this run, as `dvc exp run -S` does. Repeatable.")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="all", metavar="[STAGE]",
              type=click.Choice(["all", *graph.STAGES]),
              help="Rerun STAGE even if cached; without a value, every stage. Repeatable.")
@offline_option
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
    from kdflow import record, tracking
    from kdflow.report import comparison_lines, text_table

    from flows.runners import start_workers_early
    from flows.server import PrefectApi, check_configured_api

    go_offline(offline)
    paths = ProjectPaths.at(root)
    with contextlib.ExitStack() as held:
        try:
            # Prefect's temporary server starts first, in the background (seconds), while the run's choices and
            # the project are checked and MLflow's store opens; a check that fails stops it with the command.
            api = PrefectApi.start()
            held.callback(api.stop)
            click.echo(tracking.check_tracking(paths.root))  # before anything trains
            params = load_params(params_path, overrides)  # the flow takes them
            start_workers_early(paths.root, serial, dask_address, bool(force), bool(overrides))
            check_configured_api()
            record.project_params(params_path, paths.root)  # before anything is written to the root
            record.ensure_project(paths.root)
            # Another run holds the project: say so now, not in the flow. Held until this run ends (the flow's own
            # hold re-enters it), so no second run starts in between.
            held.enter_context(record.hold_outputs(paths.root))
        except Exception as exc:  # a bad key, a dead tracking server, a damaged mlflow.db, a held project
            fail_clearly(exc, paths)
        from flows.pipeline import StageFailed, pipeline

        _, experiment_id = tracking.project_client(paths.root)
        try:
            with api.settings():
                result = pipeline(params_path=params_path, overrides=list(overrides), root=root, force=list(force),
                                  git_branch=git_branch, params=params.model_dump(mode="json"), serial=serial,
                                  workers=workers, dask_address=dask_address)
        except StageFailed as exc:  # names the stage; a bad checkpoint or artifact also says how to rebuild it
            from kdflow.artifacts import ArtifactError, CheckpointError

            cause = exc.__cause__
            bad_file = isinstance(cause, (ArtifactError, CheckpointError))
            raise click.ClickException(failure_message(cause, paths) if bad_file else str(exc)) from None
        except Exception as exc:
            fail_clearly(exc, paths)
    click.echo("\n" + text_table(result["summary"]) + "\n")
    for line in comparison_lines(result["summary"]):
        click.echo(line)
    click.echo(f"\nstages run: {', '.join(result['ran']) or 'none'}; "
               f"from DVC's record: {', '.join(result['cached']) or 'none'}")
    uri = tracking.tracking_uri(paths.root)
    click.echo(f"MLflow: parent run {result['mlflow_run_id']} in experiment 'kdflow' at {tracking.redacted(uri)}")
    if uri.startswith(("http://", "https://")):
        click.echo(f"  browse: {tracking.runs_page(uri, experiment_id)}")
    else:
        click.echo(f"  browse: mlflow ui --backend-store-uri {uri}   then open "
                   f"{tracking.runs_page('http://127.0.0.1:5000', experiment_id)}")
    click.echo(f"  restore its bytes later: kdflow checkout {result['mlflow_run_id']}")
    if result["git_commit"]:
        click.echo(f"git: dvc.lock, params and metrics committed on {git_branch} as {result['git_commit'][:12]}")
    click.echo(f"report: {paths.report}")


@click.command()
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
    from flows.server import check_configured_api
    from flows.sweep import parse_grid_option, sweep_params

    try:
        grid = dict(parse_grid_option(option) for option in grid_options) or None
        loaded = sweep_params(params_path, grid, list(overrides))  # fail before Prefect starts a server
        check_configured_api()
    except Exception as exc:
        fail_clearly(exc, ProjectPaths.at(root))
    from flows.server import PrefectApi

    api = PrefectApi.start()
    if not dask_address:
        from flows.runners import prefork_local_workers

        prefork_local_workers("flows.sweep")
    from flows.sweep import best_lines, results_table, run_sweep

    with api.settings():
        summary = run_sweep(params_path=params_path, grid=grid, overrides=list(overrides), root=root,
                            workers=workers, dask_address=dask_address, loaded=loaded)
    click.echo("\n" + results_table(summary["trials"], list(summary["grid"])) + "\n")
    click.echo(best_lines(summary))
    click.echo(f"trials: {Path(summary['best']['trial_dir']).parent}; MLflow: sweep run {summary['mlflow_run_id']}")


@click.command()
@click.option("--cron", default=None, help='Cron schedule, e.g. "0 3 * * *".')
@click.option("--interval", default=None, type=click.IntRange(min=1), metavar="SECONDS",
              help="Run every SECONDS instead of on a cron schedule.")
@click.option("--name", default="kdflow-scheduled", show_default=True, help="Deployment name.")
@params_option
@root_option("Project root, where every scheduled run works.")
def serve(cron: str | None, interval: int | None, name: str, params_path: str, root: str) -> None:
    """Serve the pipeline flow on a schedule; unchanged stages are skipped, as DVC's record says.

    Without PREFECT_API_URL it starts a Prefect server of its own (with its scheduler and UI, on 127.0.0.1) for as
    long as it serves, and says where the UI is. Each scheduled run reads the params file as it is then.
    """
    if (cron is None) == (interval is None):
        raise click.UsageError("give one schedule: --cron EXPRESSION or --interval SECONDS")
    from flows.server import check_configured_api

    try:
        load_params(params_path)
        check_configured_api()
    except Exception as exc:
        fail_clearly(exc, ProjectPaths.at(root))
    from flows.server import PrefectApi

    api = PrefectApi.start(scheduler=True)
    from flows.pipeline import pipeline

    schedule = {"cron": cron} if cron else {"interval": interval}
    with api.settings():
        click.echo(f"Prefect UI: {api.ui_url()}", err=True)
        # One run at a time: runs of one project would only collide on its outputs (the second stops at once), so
        # a run that comes due while another runs waits for it instead.
        pipeline.serve(name=name, **schedule, limit=1, parameters={
            "params_path": str(Path(params_path).resolve()), "root": str(Path(root).resolve()),
        })
