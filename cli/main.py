"""`kdflow`: run the pipeline through Prefect, serve it on a schedule, run one stage as `dvc repro` does, restore
a run's bytes, or trace its lineage."""

from __future__ import annotations

import click

from cli.flow_commands import run, serve, sweep
from cli.project_commands import checkout, dvc_yaml, lineage, lr_find, stage


@click.group("kdflow", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdflow", prog_name="kdflow")
def app() -> None:
    """Distil a big model into a small, fast one for a new task: Prefect runs it, MLflow tracks it, DVC versions it."""


for command in (run, stage, sweep, serve, lr_find, checkout, lineage, dvc_yaml):
    app.add_command(command)


if __name__ == "__main__":  # `python -m cli.main`: how torchrun starts a stage's ranks
    app()
