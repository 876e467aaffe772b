"""`kdflow`: run the pipeline through Prefect, serve it on a schedule, or trace a run's lineage."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kdflow.config import ConfigError, load_params


def _prefect_defaults() -> None:
    # The temporary server's telemetry otherwise races its own SQLite start-up ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start migrates a fresh database, which takes longer than the 20 s default on 2 busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@click.group()
def app() -> None:
    """Distil a big model into a small, fast one for a new task: Prefect runs it, MLflow tracks it, DVC versions it."""


@app.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The params file.")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Project root: data/, artifacts/, metrics/, reports/ and mlflow.db live here.")
@click.option("-S", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a params key for this run, as `dvc exp run -S` does. Repeatable.")
@click.option("--force", "force", multiple=True, is_flag=False, flag_value="all", metavar="[STAGE]",
              help="Rerun STAGE even if cached; without a value, every stage. Repeatable.")
def run(params_path: str, root: str, overrides: tuple[str, ...], force: tuple[str, ...]) -> None:
    """Run the whole pipeline once and print the results table."""
    from kdflow.report import comparison_lines, text_table
    from kdflow.tracking import tracking_uri

    try:
        load_params(params_path, overrides)  # fail before Prefect starts a server
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _prefect_defaults()
    from flows.pipeline import pipeline

    result = pipeline(params_path=params_path, overrides=list(overrides), root=root, force=list(force))
    click.echo("\n" + text_table(result["summary"]) + "\n")
    for line in comparison_lines(result["summary"]):
        click.echo(line)
    click.echo(f"\nstages run: {', '.join(result['ran']) or 'none'}; from cache: {', '.join(result['cached']) or 'none'}")
    uri = tracking_uri(Path(root).resolve())
    click.echo(f"MLflow: parent run {result['mlflow_run_id']} in experiment 'kdflow' at {uri}")
    click.echo(f"  browse: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000")
    click.echo(f"report: {Path(root) / 'reports' / 'report.md'}")


@app.command()
@click.option("--cron", required=True, help='Cron schedule, e.g. "0 3 * * *".')
@click.option("--name", default="kdflow-scheduled", show_default=True, help="Deployment name.")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--root", default=".", show_default=True)
def serve(cron: str, name: str, params_path: str, root: str) -> None:
    """Serve the pipeline flow on a cron schedule; unchanged stages come from the cache."""
    try:
        load_params(params_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _prefect_defaults()
    from flows.pipeline import pipeline

    pipeline.serve(name=name, cron=cron, parameters={
        "params_path": str(Path(params_path).resolve()), "root": str(Path(root).resolve()),
    })


@app.command()
@click.argument("run_id")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Project root holding mlflow.db (ignored when MLFLOW_TRACKING_URI is set).")
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
