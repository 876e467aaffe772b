"""`kdflow`: run the pipeline through Prefect, serve it on a schedule, run one stage as `dvc repro` does, restore
a run's bytes, or trace its lineage."""

from __future__ import annotations

import sys

import click

from cli.flow_commands import run, serve, sweep
from cli.quick_exit import exit_now
from cli.project_commands import checkout, dvc_yaml, lineage, lr_find, stage


@click.group("kdflow", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdflow", prog_name="kdflow")
def app() -> None:
    """Distil a big model into a small, fast one for a new task: Prefect runs it, MLflow tracks it, DVC versions it."""


for command in (run, stage, sweep, serve, lr_find, checkout, lineage, dvc_yaml):
    app.add_command(command)


def main() -> None:
    """The `kdflow` console script: the command, then a quick exit.

    Python's own exit waits for the command's threads and runs its exit handlers, then takes every module apart:
    after torch, MLflow and Prefect that teardown alone takes 1-2.5 s (a cached rerun's whole work, and again for
    each stage `dvc repro` runs). Every file is closed and every run recorded by then, so the process does the
    first two and leaves the teardown to the OS. A crash (a traceback) still exits the usual way.
    """
    try:
        app()  # standalone: click always ends in SystemExit, with the code and any message printed
    except SystemExit as ended:
        code = ended.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    exit_now(code)


if __name__ == "__main__":  # `python -m cli.main`: how torchrun starts a stage's ranks
    main()
