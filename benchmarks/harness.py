"""What every benchmark shares: its command line, mean and 95 % confidence intervals, the table, the JSON."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Sequence

import torch
from scipy import stats

from kdflow.artifacts import write_json
from kdflow.tracking import git_commit

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    cli.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, few epochs, two seeds")
    cli.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    cli.add_argument("--work-dir", type=Path, default=REPO_ROOT / "benchmarks" / ".work",
                     help="where pipeline workspaces are built and reused")
    cli.add_argument("--threads", type=int, default=1,
                     help="torch intra-op threads (default 1: these models are too small to gain from more, and "
                          "on a shared machine extra threads spin-wait)")
    # The commit the run starts from: the code may change while a long run goes on.
    # Earlier results under benchmarks/results/ do not make it dirty.
    commit = git_commit(REPO_ROOT, ignore=(RESULTS_DIR.relative_to(REPO_ROOT).as_posix(),))
    cli.set_defaults(commit=str(commit or "unknown"))  # `<sha>` or `<sha>-dirty`
    return cli


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (0 for a single value)."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": 0.0, "n": len(values)}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci95": float(half), "n": len(values)}


def fmt(summary: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{summary['mean'] * scale:.{digits}f} ± {summary['ci95'] * scale:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, what the README's Results section holds."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(args: argparse.Namespace, name: str, payload: dict, markdown: str) -> Path:
    """`<name>.json` (`<name>.quick.json` for a smoke run) with the commit and machine it came from."""
    quick = args.quick
    path = Path(args.results_dir) / f"{name}{'.quick' if quick else ''}.json"
    write_json(path, {"benchmark": name, "quick": quick, "commit": args.commit, "machine": machine(),
                      **payload, "table": markdown})
    print(markdown)
    print(f"\nwrote {path}")
    return path
