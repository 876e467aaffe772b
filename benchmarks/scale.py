"""Soft labels and distillation on a transfer set of 5 million rows against the same stages on 50,000.

Each size runs in a fresh process: tasks.soft_labels.write_logits streams the transfer split through the teacher
into its soft-label file, then the distilled student (the stage's MLP, Hinton KD with alpha = 1) trains one epoch on
kdflow.batches.training_data at the stage's default memory budget: 50,000 rows fit and are held in memory, 5 million
do not and are streamed from the Parquet files by worker processes. Peak memory is the largest proportional set size
(PSS, so pages the workers share with their parent count once) of the process and its workers, sampled every 0.1 s.
Throughput is rows per second of the teacher's labelling and of the student's epoch; the streamed path's speed
per row against the in-memory path's is measured apart, on the same 100,000 rows, one epoch each way, interleaved
over three rounds so that a busy machine slows both alike (median of the rounds).

The rows are MNIST-1D-shaped (40 float features, unlabelled) but drawn from a normal distribution: generating 5
million MNIST-1D samples would take longer than the stages measured, and neither memory nor speed depends on the
values. The teacher is the tiny config's (cnn1d, channels [8, 8]): the pipeline's 35k-parameter teacher would take
hours to label 5 million rows on two CPU cores, and its cost per row is the same on either path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.harness import REPO_ROOT, parser, table, write_results
from kdflow.artifacts import PARQUET_ROW_GROUP_ROWS
from kdflow.batches import Rows, Streamed, load_in_memory, training_data
from kdflow.config import CNN1DSpec, MLPSpec, TrainSpec
from kdflow.losses import kd_loss
from kdflow.training import fit_batches, intra_op_threads
from models import build_model
from tasks.soft_labels import write_logits

FEATURES, CLASSES = 40, 5
SIZES, QUICK_SIZES, QUICK_BUDGET_MB = (50_000, 5_000_000), (2_000, 20_000), 1.0
SAME_ROWS = 100_000  # the interleaved in-memory vs streamed comparison
TARGETS = {"peak_memory_ratio_max": 1.3, "throughput_ratio_min": 0.8}


def write_transfer(path: Path, rows: int, seed: int = 0) -> Path:
    """An unlabelled split of `rows` rows, written a row group at a time (flat memory)."""
    if path.exists():
        return path
    schema = pa.schema([("sample_id", pa.string())] + [(f"f{i}", pa.float32()) for i in range(FEATURES)])
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
        for start in range(0, rows, PARQUET_ROW_GROUP_ROWS):
            stop = min(start + PARQUET_ROW_GROUP_ROWS, rows)
            x = rng.standard_normal((stop - start, FEATURES), dtype=np.float32)
            columns = [pa.array([f"t{i}" for i in range(start, stop)])] + [pa.array(x[:, i]) for i in range(FEATURES)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    partial.rename(path)
    return path


def tree_pss_mb(pid: int) -> float:
    """PSS of `pid` and its descendants, in MiB."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return total / 1024 + sum(tree_pss_mb(child) for child in children)


class PeakMemory:
    """The largest `tree_pss_mb` of this process seen by a sampling thread."""

    def __init__(self, interval: float = 0.1):
        self.peak, self.interval, self.running = 0.0, interval, True
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        while self.running:
            self.peak = max(self.peak, tree_pss_mb(pid))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def measure(work_dir: Path, rows: int, memory_budget_mb: float) -> dict:
    """One size, in this (fresh) process: label the transfer split, then distil one epoch from it."""
    split = work_dir / f"transfer_{rows}.parquet"
    soft = work_dir / f"soft_labels_{rows}.parquet"
    torch.manual_seed(0)
    teacher = build_model(CNN1DSpec(arch="cnn1d", channels=[8, 8]), (FEATURES,), CLASSES).eval()
    spec = TrainSpec(epochs=1, batch_size=128, lr=0.002, device="cpu", memory_budget_mb=memory_budget_mb)
    with PeakMemory() as peak:
        started = time.perf_counter()
        write_logits(teacher, split, soft, (FEATURES,), CLASSES, chunk_size=8192)
        labelling = time.perf_counter() - started
        data = training_data([Rows(split, soft)], ["logits", "label"], (FEATURES,), spec)
        torch.manual_seed(0)
        student = build_model(MLPSpec(arch="mlp", hidden=[64, 64]), (FEATURES,), CLASSES)
        result = fit_batches(student, data, spec, seed=0, loss_fn=lambda out, t: kd_loss(out, t[0], t[1], 4.0, 1.0))
    epoch = result.history[0]["epoch_seconds"]
    return {"rows": rows, "path": "streamed" if isinstance(data, Streamed) else "in memory",
            "peak_pss_mb": peak.peak, "soft_label_rows_per_s": rows / labelling,
            "distill_rows_per_s": rows / epoch, "train_loss": result.history[0]["train_loss"]}


def path_throughputs(work_dir: Path, rows: int, rounds: int) -> dict[str, float]:
    """Median rows/s of one distillation epoch over the same rows, held in memory and streamed, interleaved."""
    split, soft = work_dir / f"transfer_{rows}.parquet", work_dir / f"soft_labels_{rows}.parquet"
    torch.manual_seed(0)
    teacher = build_model(CNN1DSpec(arch="cnn1d", channels=[8, 8]), (FEATURES,), CLASSES).eval()
    write_logits(teacher, write_transfer(split, rows), soft, (FEATURES,), CLASSES, chunk_size=8192)
    spec = TrainSpec(epochs=1, batch_size=128, lr=0.002, device="cpu")
    paths = {"in memory": lambda: load_in_memory([Rows(split, soft)], ["logits", "label"], (FEATURES,)),
             "streamed": lambda: Streamed([Rows(split, soft)], ["logits", "label"], (FEATURES,),
                                          workers=spec.stream_workers, shuffle_row_groups=spec.shuffle_row_groups)}
    speeds = {name: [] for name in paths}
    for _ in range(rounds):
        for name, data in paths.items():
            torch.manual_seed(0)
            student = build_model(MLPSpec(arch="mlp", hidden=[64, 64]), (FEATURES,), CLASSES)
            result = fit_batches(student, data(), spec, seed=0,
                                 loss_fn=lambda out, t: kd_loss(out, t[0], t[1], 4.0, 1.0))
            speeds[name].append(rows / result.history[0]["epoch_seconds"])
    return {name: statistics.median(values) for name, values in speeds.items()}


def run(args) -> dict:
    work_dir = Path(args.work_dir) / "scale"
    work_dir.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else SIZES
    measured = []
    for rows in sizes:
        write_transfer(work_dir / f"transfer_{rows}.parquet", rows)
        child = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--measure", str(rows),
                                "--work-dir", str(args.work_dir), "--threads", str(args.threads),
                                "--memory-budget-mb", str(QUICK_BUDGET_MB if args.quick else args.memory_budget_mb)],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        measured.append(json.loads(child.stdout.splitlines()[-1]))
        print(measured[-1], flush=True)
    small, large = measured
    same_rows = QUICK_SIZES[1] if args.quick else SAME_ROWS
    speeds = path_throughputs(work_dir, same_rows, rounds=1 if args.quick else 3)
    print(speeds, flush=True)
    ratios = {"peak_memory_ratio": large["peak_pss_mb"] / small["peak_pss_mb"],
              "soft_label_throughput_ratio": large["soft_label_rows_per_s"] / small["soft_label_rows_per_s"],
              "distill_throughput_ratio": large["distill_rows_per_s"] / small["distill_rows_per_s"],
              "streamed_vs_in_memory": speeds["streamed"] / speeds["in memory"]}
    markdown = table(
        ["transfer rows", "distill data path", "peak memory (PSS, MiB)", "soft labels (rows/s)",
         "distillation (rows/s)"],
        [[f"{m['rows']:,}", m["path"], f"{m['peak_pss_mb']:.0f}", f"{m['soft_label_rows_per_s']:,.0f}",
          f"{m['distill_rows_per_s']:,.0f}"] for m in measured],
    ) + (f"\n\n{large['rows']:,} vs {small['rows']:,} rows: peak memory {ratios['peak_memory_ratio']:.2f}x "
         f"(target <= {TARGETS['peak_memory_ratio_max']}), soft-label throughput "
         f"{ratios['soft_label_throughput_ratio']:.2f}x, distillation throughput "
         f"{ratios['distill_throughput_ratio']:.2f}x per row (runs minutes apart on a shared machine). Interleaved "
         f"on the same {same_rows:,} rows: streamed {speeds['streamed']:,.0f} vs in memory "
         f"{speeds['in memory']:,.0f} rows/s, {ratios['streamed_vs_in_memory']:.2f}x "
         f"(target >= {TARGETS['throughput_ratio_min']}).")
    payload = {"sizes": measured, "same_rows": {"rows": same_rows, "rows_per_s": speeds}, "ratios": ratios,
               "targets": TARGETS,
               "met": {"peak_memory": ratios["peak_memory_ratio"] <= TARGETS["peak_memory_ratio_max"],
                       "throughput": ratios["streamed_vs_in_memory"] >= TARGETS["throughput_ratio_min"]}}
    write_results(args, "scale", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict | None:
    cli = parser("scale", __doc__.splitlines()[0])
    cli.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)
    cli.add_argument("--memory-budget-mb", type=float, default=TrainSpec().memory_budget_mb,
                     help="train.memory_budget_mb (default: the stage's; --quick: 1, so its larger set streams)")
    args = cli.parse_args(argv)
    with intra_op_threads(args.threads):
        if args.measure is not None:
            print(json.dumps(measure(Path(args.work_dir) / "scale", args.measure, args.memory_budget_mb)))
            return None
        return run(args)


if __name__ == "__main__":
    main()
