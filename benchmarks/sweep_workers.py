"""Wall time of one sweep grid on a local Dask cluster of 1 worker against 2 (and more with --workers).

A small project (the source task at its published size, a 10,000-sample transfer set, a two-layer teacher) is
built once in a temporary directory with one Prefect server for all sweeps (with --quick, on a copy of the
caller's Prefect database: benchmarks.workspace.quick_prefect_home); an untimed one-point sweep runs the
upstream stages, so every timed sweep starts from the same cache and times only the cluster's start and the
trials (4 grid points: temperature 2, 4 x alpha 0.5, 1; 2 with --quick, temperature 2, 4; each trial trains the
three students).
Workers are single-threaded processes (flows.sweep.local_cluster), so on 2 cores 2 workers can at best halve
the trials' time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from benchmarks.harness import parser, table, write_results
from benchmarks.workspace import load_overridden, quick_overrides, quick_prefect_home
from kdflow.config import dump_params

GRID = {"distill.temperature": [2.0, 4.0], "distill.alpha": [0.5, 1.0]}
QUICK_GRID = {"distill.temperature": [2.0, 4.0]}  # the smoke run: still a trial per worker
TARGET = "2 workers faster than 1"


def bench_params(epochs: int, quick: bool) -> str:
    """The benchmark's params.yaml: the test suite's tiny config for --quick, else the default made smaller."""
    overrides = quick_overrides() if quick else [
        "data.transfer.size=10000",
        "train_teacher.model.channels=[48, 48]",  # 12k parameters, above the student's 7k
        "train_teacher.train.epochs=3",
        "distill.max_param_ratio=1.0",
        f"distill.train.epochs={epochs}", "distill.train.patience=0",
    ]
    return dump_params(load_overridden(overrides))


def put_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (a str) or unset (None) environment variables, then put back what was there."""
    before = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            put_env(name, value)
        yield
    finally:
        for name, value in before.items():
            put_env(name, value)


def run(args) -> dict:
    timings, grid = [], QUICK_GRID if args.quick else GRID
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdflow-sweep-bench-"))
        if args.quick:
            quick_prefect_home(Path(directory) / ".prefect-home")
        # The project's own MLflow store, and Prefect's database out of the user's PREFECT_HOME.
        stack.enter_context(environment(PREFECT_HOME=str(Path(directory) / ".prefect-home"), MLFLOW_TRACKING_URI=None,
                                        KDFLOW_OFFLINE=None))
        from flows import runners
        from flows.server import PrefectApi

        api = PrefectApi.start()
        runners.prefork_local_workers("flows.sweep")  # as `kdflow sweep` does while the server starts
        stack.enter_context(api.settings())  # one server for every sweep, started before the timing
        from flows.sweep import run_sweep

        root = Path(directory)
        params_path = root / "params.yaml"
        params_path.write_text(bench_params(args.epochs, args.quick))
        run_sweep(params_path=str(params_path), grid={"distill.temperature": [2.0]}, root=str(root), workers=1)
        for workers in args.workers:
            started = time.perf_counter()
            summary = run_sweep(params_path=str(params_path), grid=grid, root=str(root), workers=workers)
            timings.append({"workers": workers, "wall_seconds": time.perf_counter() - started,
                            "trials": len(summary["trials"]),
                            "dask_workers_used": len({t["dask_worker"] for t in summary["trials"]})})
    base = timings[0]["wall_seconds"]
    for row in timings:
        row["speed_up"] = base / row["wall_seconds"]
    two = next((row for row in timings if row["workers"] == 2), None)
    one = next((row for row in timings if row["workers"] == 1), None)
    met = bool(one and two) and two["wall_seconds"] < one["wall_seconds"]
    markdown = table(["workers", "trials", "wall s", "speed-up over the first", "workers that ran trials"],
                     [[r["workers"], r["trials"], f"{r['wall_seconds']:.1f}", f"{r['speed_up']:.2f}x",
                       r["dask_workers_used"]] for r in timings])
    markdown += f"\n\nTarget: {TARGET}: {'met' if met else 'not met'}."
    payload = {"grid": grid, "distill_epochs": None if args.quick else args.epochs, "timings": timings,
               "target": {"required": TARGET, "met": met}}
    write_results(args, "sweep_workers", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict:
    cli = parser("sweep_workers", __doc__.splitlines()[0])
    cli.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes, timed in this order")
    cli.add_argument("--epochs", type=int, default=40, help="distill epochs per student of a trial")
    return run(cli.parse_args(argv))


if __name__ == "__main__":
    main()
