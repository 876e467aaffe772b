"""A hyperparameter sweep: the `distill` stage mapped over a grid, trials fanned out on Prefect's Dask task runner.

The stages distill depends on run first as the pipeline runs them (skipped when DVC's record has them), so a
sweep after `kdflow run` starts straight with the trials. Each trial is a Prefect task that runs the student
stages (`distill` and its baselines `student_hard_labels`, `student_scratch`) with its grid point applied, in a Dask
worker process: it reads the project's data, teacher and soft labels, and writes its students, metrics and curves
under `sweeps/<sweep run id>/trial-NN/`, leaving the pipeline's own outputs alone. In MLflow, the sweep is one run
`sweep` with a nested run per trial (its grid point as params, the student stages and their models nested below). The best trial by the distilled student's validation accuracy
is reported, with the `kdflow run -S ...` line that reproduces it in the pipeline.

Workers get plain data (params as a dict, paths as strings), never tensors. On a remote cluster
(`dask_address`) the workers must see the project directory at the same path and reach the MLflow store.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from flows import runners
from flows.pipeline import STAGES, apply_overrides, run_stages
from flows.retries import STAGE_TASK_OPTIONS
from kdflow import graph, record, tracking
from kdflow.artifacts import write_json
from kdflow.config import ConfigError, format_override, load_params, syntax_problem, validate
from kdflow.figures import plot_matrix
from kdflow.layout import CATALOGUE, ProjectPaths, models_of

UPSTREAM = graph.upstream("distill")


@dataclass(frozen=True)
class SweepParams:
    shared: dict[str, Any]  # the upstream stages' params: params.yaml with the overrides
    trials: list[dict[str, Any]]  # each grid point's, in grid order


# A grid point may change the student or its training (distill.student, distill.train): each trial trains the
# distilled student and its two baselines, each in its stage.
TRIAL_STAGES = [name for name, stage in graph.STAGES.items() if stage.model in models_of("student")]
DEFAULT_GRID = {"distill.temperature": [1.0, 2.0, 4.0, 8.0], "distill.alpha": [0.5, 1.0]}
SELECT_BY = "student_distilled_val_accuracy"  # from the distill stage's metrics; higher is better


class TrialFailed(RuntimeError):
    """A trial that failed for good; names the trial and its grid point."""


@dataclass(frozen=True)
class TrialPaths(ProjectPaths):
    """Reads the project's data, teacher and soft labels; writes this trial's students, metrics, curves and resume
    state.

    MLflow's store is found from `root`, so every trial logs into the project's store.
    """

    trial_dir: Path

    @property
    def trial(self) -> ProjectPaths:
        """The project layout inside the trial's folder, for what the trial writes."""
        return ProjectPaths(self.trial_dir)

    def model_dir(self, folder: str) -> Path:
        trained_here = folder == CATALOGUE["student_distilled"].folder
        return self.trial.model_dir(folder) if trained_here else super().model_dir(folder)

    @property
    def metrics_dir(self) -> Path:
        return self.trial.metrics_dir

    def curve(self, model: str) -> Path:
        return self.trial.curve(model)

    def resume_state(self, model: str) -> Path:
        # Trials train in parallel, and their students share names: each keeps its own resume state.
        return self.trial.resume_state(model)


def parse_grid_option(option: str) -> tuple[str, list]:
    """`distill.temperature=1,2,4` or `distill.student.hidden=[[32],[64,64]]` -> (key, values).

    Values are read as `-S` reads them (Hydra's override grammar, as `dvc exp run -S`), so that a point's
    assignments load back as the same values; a bracketed list is the list of values, as is a Hydra sweep
    (`1,2,4`, `[32],[64,64]`, `range(1,5)`).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    key, sep, text = option.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--grid '{option}': expected KEY=V1,V2,... e.g. distill.temperature=1,2,4,8")
    parser, line = OverridesParser.create(), f"{key}={text}"
    try:
        [override] = parser.parse_overrides([line])
        if override.is_sweep_override():
            # Each choice as its own override, as DVC splits a sweep (quoted strings come back as strings).
            values = [parser.parse_overrides([f"{key}={choice}"])[0].value()
                      for choice in override.sweep_string_iterator()]
        else:
            value = override.value()
            values = value if isinstance(value, list) else [value]
    except HydraException as exc:
        problem = syntax_problem(line, exc) if isinstance(exc, OverrideParseException) else str(exc)
        raise ConfigError(f"--grid '{option}': {problem}; expected KEY=V1,V2,... in -S's grammar, "
                          "e.g. distill.temperature=1,2,4,8") from None
    if not values:
        raise ConfigError(f"--grid '{option}': no values; expected KEY=V1,V2,...")
    return key, values


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last key varying fastest."""
    for key in grid:
        if not key.startswith("distill."):
            raise ConfigError(
                f"--grid '{key}': a sweep varies the distill stage only (keys 'distill.*'); the upstream stages "
                "run once with the project's params. Change other keys with -S"
            )
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def assignments(point: dict[str, Any]) -> list[str]:
    """A grid point as `-S` assignments, in the form load_params and `kdflow run -S` read back."""
    return [format_override(key, value) for key, value in point.items()]


@task(task_run_name="trial-{index}", **STAGE_TASK_OPTIONS)
def distill_trial(index: int, point: dict[str, Any], params: dict[str, Any], root: str, trial_dir: str,
                  sweep_run_id: str) -> dict:
    """One grid point through the student stages (TRIAL_STAGES), in its own directory and nested MLflow run."""
    import torch

    # One trial per worker process: more intra-op threads would only fight the other workers for the cores.
    torch.set_num_threads(1)
    from distributed import get_worker

    paths = TrialPaths(Path(root), Path(trial_dir))
    worker = get_worker().address  # which Dask worker ran the trial, for the record
    with tracking.start_run(paths.root, f"trial-{index:02d}", sweep_run_id,
                            tags={"kdflow.sweep_trial": index, "kdflow.dask_worker": worker},
                            source="flows/sweep.py") as trial:
        trial.log_params(point)
        metrics = {}
        for stage in TRIAL_STAGES:
            metrics.update(STAGES[stage](validate(params), paths, trial.run_id))
        trial.log_metrics(metrics)
    return {"trial": index, "point": point, "metrics": metrics, "trial_dir": trial_dir, "mlflow_run_id": trial.run_id,
            "dask_worker": worker}


def temperature_alpha_map(trials: list[dict]) -> tuple[list, list, list[list[float]]] | None:
    """The best SELECT_BY of each (temperature, α) cell, when the grid varies both (over any other keys it varies);
    rows by temperature, columns by α, each ascending; None when the grid does not vary both."""
    keys = ("distill.temperature", "distill.alpha")
    if not all(key in trials[0]["point"] for key in keys):
        return None
    temperatures = sorted({t["point"][keys[0]] for t in trials})
    alphas = sorted({t["point"][keys[1]] for t in trials})
    values = [[float("nan")] * len(alphas) for _ in temperatures]
    for trial in trials:
        row, column = temperatures.index(trial["point"][keys[0]]), alphas.index(trial["point"][keys[1]])
        value, current = trial["metrics"][SELECT_BY], values[row][column]
        if math.isnan(current) or value > current:
            values[row][column] = value
    return temperatures, alphas, values


def results_table(trials: list[dict], keys: list[str]) -> str:
    header = ["trial", *keys, SELECT_BY]
    rows = [[f"trial-{t['trial']:02d}", *(str(t["point"][k]) for k in keys), f"{t['metrics'][SELECT_BY]:.4f}"]
            for t in trials]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def sweep_params(params_path: str | Path, grid: dict[str, list] | None, overrides: list[str]) -> SweepParams:
    """The params every trial shares and each grid point's (the default grid without `grid`), every point
    validated before anything runs, so a bad value fails the sweep at once, naming the key."""
    trials = [load_params(params_path, [*overrides, *assignments(p)]) for p in grid_points(grid or DEFAULT_GRID)]
    return SweepParams(load_params(params_path, overrides).model_dump(mode="json"),
                       [params.model_dump(mode="json") for params in trials])


@flow(name="kdflow-sweep", task_runner=runners.dask_runner(2), persist_result=False)
def sweep(params_path: str = "params.yaml", grid: dict[str, list] | None = None, overrides: list[str] | None = None,
          root: str = ".", loaded: SweepParams | None = None) -> dict:
    """Run the upstream stages (cached), then one distill trial per grid point; report the best. `loaded`: the
    sweep's params when the caller has read them already (`kdflow sweep` does, before Prefect starts)."""
    logger = get_run_logger()
    grid = grid or DEFAULT_GRID
    overrides = overrides or []
    points = grid_points(grid)
    paths = ProjectPaths.at(root)
    params_file = record.project_params(params_path, paths.root)
    loaded = loaded or sweep_params(params_file, grid, overrides)
    params, trial_params = validate(loaded.shared), loaded.trials
    with tracking.start_run(paths.root, "sweep", tags={"kdflow.runner": "prefect-dask"},
                            source="flows/sweep.py") as sweep_run:
        sweep_run.log_params({"grid": json.dumps(grid), "trials": len(points), "select_by": SELECT_BY})
        arguments = (params.model_dump(mode="json"), str(paths.root), sweep_run.run_id)
        record.ensure_project(paths.root)
        with record.hold_outputs(paths.root):
            apply_overrides(params_file, overrides)  # the upstream stages' record names the params they ran with
            with runners.choose(serial=True) as in_turn:  # in this process: the trials take the cluster
                run_stages(UPSTREAM, arguments, set(), in_turn)
        sweep_dir = paths.sweep_dir(sweep_run.run_id)
        futures = distill_trial.map(
            index=list(range(len(points))), point=points, params=trial_params, root=unmapped(str(paths.root)),
            trial_dir=[str(sweep_dir / f"trial-{i:02d}") for i in range(len(points))],
            sweep_run_id=unmapped(sweep_run.run_id),
        )
        trials = []
        for index, future in enumerate(futures):
            future.wait()
            state = future.state
            if state.is_failed():
                error = state.result(raise_on_failure=False)
                raise TrialFailed(f"sweep trial-{index:02d} ({', '.join(assignments(points[index]))}) failed: "
                                  f"{type(error).__name__}: {error}") from error
            trials.append(future.result())
        best = max(trials, key=lambda t: t["metrics"][SELECT_BY])  # ties: the first in grid order
        command = "kdflow run " + " ".join(f"-S {a}" for a in assignments(best["point"]))
        sweep_run.log_metrics({f"best_{SELECT_BY}": best["metrics"][SELECT_BY]})
        sweep_run.set_tags({"kdflow.best_trial": f"trial-{best['trial']:02d}", "kdflow.best_command": command,
                            "kdflow.best_run_id": best["mlflow_run_id"]})
        summary = {"grid": grid, "select_by": SELECT_BY, "trials": trials, "best": best, "command": command,
                   "mlflow_run_id": sweep_run.run_id}
        write_json(sweep_dir / "sweep.json", summary)
        cells = temperature_alpha_map(trials)
        if cells is not None:
            temperatures, alphas, values = cells
            plot_matrix(values, [f"T={t:g}" for t in temperatures], [f"α={a:g}" for a in alphas],
                        ("temperature", "α (weight of the soft term)", SELECT_BY), sweep_dir / "temperature_alpha.png",
                        number_format="{:.3f}")
            sweep_run.log_artifact(sweep_dir / "temperature_alpha.png", "sweep")
    logger.info("sweep of %d trials in %s; MLflow run %s\n%s\n%s", len(trials), sweep_dir, sweep_run.run_id,
                results_table(trials, list(grid)), best_lines(summary))
    return summary


def best_lines(summary: dict) -> str:
    best = summary["best"]
    return f"best: trial-{best['trial']:02d} ({SELECT_BY} {best['metrics'][SELECT_BY]:.4f})\n{summary['command']}"


def run_sweep(params_path: str = "params.yaml", grid: dict[str, list] | None = None,
              overrides: list[str] | None = None, root: str = ".", workers: int | None = None,
              dask_address: str | None = None, loaded: SweepParams | None = None) -> dict:
    """The sweep flow on the chosen cluster.

    Its Dask workers must talk to the flow's Prefect server: without PREFECT_API_URL each would start a temporary
    one of its own, so a temporary server is started here and its address shipped with every task's settings.
    (A remote cluster cannot reach it: set PREFECT_API_URL to a real server for --dask-address.)
    """
    from flows.server import PrefectApi

    run = sweep.with_options(task_runner=runners.dask_runner(workers, dask_address))
    with PrefectApi.start().settings():
        return run(params_path=params_path, grid=grid, overrides=overrides, root=root, loaded=loaded)
