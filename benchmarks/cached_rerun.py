"""Wall time of a cold `kdflow run` against an unchanged rerun, whose stages all come from Prefect's cache.

    python benchmarks/cached_rerun.py [--params params.yaml]

Runs the CLI twice in a fresh temporary project (each run starts its own temporary Prefect server, as a user's
does), prints a table and writes benchmarks/results/cached_rerun.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def timed_run(root: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kdflow", "run", "--params", str(root / "params.yaml"),
                           "--root", str(root)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"kdflow run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stages = re.search(r"^stages run: .*$", done.stdout, re.MULTILINE)
    return elapsed, stages.group(0) if stages else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "cached_rerun.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from kdflow.artifacts import write_json

    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as directory:
        root = Path(directory)
        shutil.copy(args.params, root / "params.yaml")
        # A private PREFECT_HOME: the runs leave the user's Prefect database alone (the cache lives under root).
        os.environ["PREFECT_HOME"] = str(root / ".prefect-home")
        cold, cold_stages = timed_run(root)
        warm, warm_stages = timed_run(root)
    rows = [("cold", cold, cold_stages), ("cached rerun", warm, warm_stages)]
    print(f"{'run':<14}{'wall s':>9}  stages")
    for name, seconds, stages in rows:
        print(f"{name:<14}{seconds:>9.1f}  {stages}")
    print(f"cached rerun / cold: {warm / cold:.2f}")
    result = {"params": str(args.params), "cold_s": round(cold, 2), "cached_s": round(warm, 2),
              "cold_stages": cold_stages, "cached_stages": warm_stages, "ratio": round(warm / cold, 3),
              "cpus": os.cpu_count(), "python": platform.python_version()}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
