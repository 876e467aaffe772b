"""Wall time of one sweep grid on a local Dask cluster of 1 worker against 2 (and more with --workers).

    python benchmarks/sweep_workers.py [--workers 1 2] [--epochs 20]

A small project (the source task at its published size, a 10,000-sample transfer set, a small teacher) is built
once in a temporary directory; an untimed one-point sweep runs the upstream stages, so every timed sweep starts
from the same cache and times only the trials (4 grid points: temperature 2, 4 x alpha 0.5, 1) and the cluster's
start. Prints a table and writes benchmarks/results/sweep_workers.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
GRID = {"distill.temperature": [2.0, 4.0], "distill.alpha": [0.5, 1.0]}


def bench_params(epochs: int) -> dict:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["transfer"]["size"] = 10000
    params["train_teacher"]["model"]["channels"] = [48, 48]  # 12k parameters, above the student's 7k
    params["train_teacher"]["train"]["epochs"] = 3
    params["distill"]["max_param_ratio"] = 1.0
    params["distill"]["train"].update(epochs=epochs, patience=0)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="distill epochs per model of a trial")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "sweep_workers.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.sweep import run_sweep
    from kdflow.artifacts import write_json

    timings = []
    with tempfile.TemporaryDirectory(prefix="kdflow-sweep-bench-") as directory:
        root = Path(directory)
        os.environ["PREFECT_HOME"] = str(root / ".prefect-home")
        params_path = root / "params.yaml"
        params_path.write_text(yaml.safe_dump(bench_params(args.epochs), sort_keys=False))
        run_sweep(params_path=str(params_path), grid={"distill.temperature": [2.0]}, root=str(root), workers=1)
        for workers in args.workers:
            started = time.perf_counter()
            summary = run_sweep(params_path=str(params_path), grid=GRID, root=str(root), workers=workers)
            seconds = time.perf_counter() - started
            timings.append({"workers": workers, "wall_s": round(seconds, 2), "trials": len(summary["trials"]),
                            "best_command": summary["command"]})
    base = timings[0]["wall_s"]
    print(f"\n{'workers':>7}  {'trials':>6}  {'wall s':>8}  {'speed-up':>8}")
    for row in timings:
        print(f"{row['workers']:>7}  {row['trials']:>6}  {row['wall_s']:>8.1f}  {base / row['wall_s']:>7.2f}x")
    result = {"grid": GRID, "distill_epochs": args.epochs, "timings": timings, "cpus": os.cpu_count(),
              "python": platform.python_version()}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
