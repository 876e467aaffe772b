"""Training-loop throughput against the usual alternatives, and soft-label generation against raw inference.

Training: the same MLP (40-64-64-5), the same tensors, batch 100, Adam, the same number of steps, four ways,
interleaved round by round so that a busy machine slows all of them alike (the ratios are what count):
- engine: kdflow.training.fit, what every stage trains with, fed the tensors moved to the device once and indexed
  by each epoch's permutation;
- (a) a minimal hand-written loop fed the same way: the tensors on the device, a permutation, index each batch,
  forward, backward, step (the practical limit);
- (b) a DataLoader over a TensorDataset, what most code does: each batch indexed sample by sample, collated by
  stacking, then moved to the device;
- (c) PyTorch Lightning's Trainer fed the hand loop's batches, index slices of the tensors on the device, so that
  it costs its loop and not a DataLoader's (the `bench` extra; reported as skipped when missing).
Soft labels: tasks.soft_labels.write_logits (Parquet in, Parquet out, streamed in chunks) against the teacher
alone on an in-memory tensor under torch.inference_mode; and its peak memory, in a fresh process each, for a
transfer set and one 10x larger.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.harness import REPO_ROOT, parser, table, write_results
from kdflow.artifacts import write_parquet
from kdflow.config import MLPSpec, Params, TrainSpec
from kdflow.datasets import to_frame
from kdflow.training import fit, intra_op_threads, resolve_device
from models import build_model

INPUT_SHAPE, CLASSES, BATCH = (40,), 5, 100
# What each training row is fed: its name in the table, "fed" in its JSON.
FEEDS = {
    "engine": "fit, index slices of the tensors on the device",
    "engine_bf16": "fit under bf16 autocast, index slices of the tensors on the device",
    "hand_loop": "index slices of the tensors on the device",
    "dataloader": "DataLoader over a TensorDataset: indexed and collated per sample, moved per batch",
    "lightning": "Trainer over the hand loop's index slices of the tensors on the device",
}
TARGETS = {"engine_vs_hand_loop": 0.9, "engine_vs_dataloader": 1.5, "engine_vs_lightning": 2.0,
           "soft_labels_vs_raw_inference": 0.8}


def make_student(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(MLPSpec(arch="mlp", hidden=[64, 64]), INPUT_SHAPE, CLASSES).to(device)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_loop(x, y, epochs: int, device: torch.device, bf16: bool = False) -> None:
    spec = TrainSpec(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-3, patience=0, device=device.type, bf16=bf16)
    fit(make_student(device), x, [y], spec, seed=0)


class ShuffledSlices:
    """Batches indexed straight out of tensors already on the device, a fresh permutation each pass: no Dataset,
    no per-sample collation. The hand loop and Lightning's Trainer both iterate it, so they see the same batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:  # the Trainer counts an epoch's batches
        return -(-len(self.x) // BATCH)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        for start in range(0, len(self.x), BATCH):
            batch = order[start : start + BATCH]
            yield self.x[batch], self.y[batch]


def hand_loop(x, y, epochs: int, device: torch.device) -> None:
    model = make_student(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = ShuffledSlices(x.to(device), y.to(device))
    for _ in range(epochs):
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def dataloader_loop(x, y, epochs: int, device: torch.device) -> None:
    model = make_student(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def lightning_loop(x, y, epochs: int, device: torch.device) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_student(torch.device("cpu"))

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), ShuffledSlices(x.to(device), y.to(device)))


def lightning_available() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def time_training(samples: int, epochs: int, rounds: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *INPUT_SHAPE, generator=generator)
    y = torch.randint(0, CLASSES, (samples,), generator=generator)
    loops = {"engine": engine_loop, "hand_loop": hand_loop, "dataloader": dataloader_loop}
    if device.type == "cuda":
        loops["engine_bf16"] = lambda *a: engine_loop(*a, bf16=True)
    if lightning_available():
        loops["lightning"] = lightning_loop
    timings: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            synchronise(device)
            started = time.perf_counter()
            loop(x, y, epochs, device)
            synchronise(device)
            timings[name].append(samples * epochs / (time.perf_counter() - started))
    return {name: {"fed": FEEDS[name], "samples_per_second": statistics.median(values), "rounds": values}
            for name, values in timings.items()}


def soft_label_child(source: str, chunk_size: int) -> None:
    """In a fresh process: peak memory growth of write_logits over this process's baseline, as JSON on stdout."""
    from tasks.soft_labels import write_logits

    def high_water_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))

    teacher = build_model(Params().train_teacher.model, INPUT_SHAPE, CLASSES).eval()
    with tempfile.TemporaryDirectory() as scratch:
        teacher(torch.zeros(chunk_size, *INPUT_SHAPE))  # allocator warm-up: counted in the baseline, not the run
        before = high_water_kib()
        write_logits(teacher, Path(source), Path(scratch) / "logits.parquet", INPUT_SHAPE, CLASSES, chunk_size)
        print(json.dumps({"peak_growth_mib": (high_water_kib() - before) / 1024, "baseline_mib": before / 1024}))


def transfer_parquet(directory: Path, rows: int) -> tuple[Path, torch.Tensor]:
    features = np.random.default_rng(0).normal(size=(rows, INPUT_SHAPE[0])).astype(np.float32)
    ids = np.array([f"bench-{i:07d}" for i in range(rows)])
    return write_parquet(directory / f"transfer_{rows}.parquet", to_frame(ids, features, None)), torch.from_numpy(features)


def time_soft_labels(rows: int, rounds: int, chunk_size: int, scratch: Path) -> dict:
    from tasks.soft_labels import write_logits

    teacher = build_model(Params().train_teacher.model, INPUT_SHAPE, CLASSES).eval()
    source, x = transfer_parquet(scratch, rows)
    raw, streamed = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, rows, chunk_size):
                teacher(x[start : start + chunk_size])
        raw.append(rows / (time.perf_counter() - started))
        started = time.perf_counter()
        write_logits(teacher, source, scratch / "logits.parquet", INPUT_SHAPE, CLASSES, chunk_size)
        streamed.append(rows / (time.perf_counter() - started))
    return {"rows": rows, "raw_inference_samples_per_second": statistics.median(raw),
            "write_logits_samples_per_second": statistics.median(streamed)}


def peak_memory(rows: int, chunk_size: int, scratch: Path, threads: int) -> dict:
    source, _ = transfer_parquet(scratch, rows)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(threads)}
    code = f"from benchmarks.throughput import soft_label_child; soft_label_child({str(source)!r}, {chunk_size})"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                               check=True)
    return {"rows": rows, **json.loads(completed.stdout.strip().splitlines()[-1])}


def run(args) -> dict:
    device = resolve_device(args.device)
    samples, epochs, rounds = (2000, 1, 1) if args.quick else (20000, 3, 3)
    training = time_training(samples, epochs, rounds, device)
    engine = training["engine"]["samples_per_second"]
    ratios = {f"engine_vs_{name}": engine / result["samples_per_second"]
              for name, result in training.items() if name not in ("engine", "engine_bf16")}
    chunk_size = Params().soft_labels.chunk_size
    with tempfile.TemporaryDirectory() as scratch:
        # The default transfer set's size, 5 rounds: one pass over 20,000 rows is a fifth of a second, as noisy
        # as the ratio it would measure.
        soft = time_soft_labels(2000 if args.quick else Params().data.transfer.size, 1 if args.quick else 5,
                                chunk_size, Path(scratch))
        # Both sizes span several chunks, so the 10x set differs only in how many chunks stream through.
        small, memory_chunk = (1000, 256) if args.quick else (20000, chunk_size)
        memory = [peak_memory(rows, memory_chunk, Path(scratch), args.threads) for rows in (small, 10 * small)]
    ratios["soft_labels_vs_raw_inference"] = (soft["write_logits_samples_per_second"]
                                              / soft["raw_inference_samples_per_second"])
    memory_growth = memory[1]["peak_growth_mib"] / max(memory[0]["peak_growth_mib"], 1.0)
    targets = {name: {"required": f">= {need}x", "measured": ratios.get(name),
                      "met": None if name not in ratios else ratios[name] >= need} for name, need in TARGETS.items()}
    targets["soft_labels_peak_memory_flat"] = {
        "required": "peak growth at 10x rows within 1.5x of (or 1 MiB over) the smaller set's",
        "measured": memory_growth, "met": memory[1]["peak_growth_mib"] <= max(1.5 * memory[0]["peak_growth_mib"], 1.0) + 1.0}
    rows = [[f"{name}: {r['fed']}", f"{r['samples_per_second']:,.0f}", f"{engine / r['samples_per_second']:.2f}x"]
            for name, r in training.items()]
    if "lightning" not in training:
        rows.append([f"lightning: {FEEDS['lightning']}", "skipped (not installed: pip install -e '.[bench]')", "-"])
    markdown = "\n\n".join([
        table(["training loop", "samples/s", "engine is"], rows),
        table(["soft labels", "samples/s"],
              [["raw teacher inference (inference_mode)", f"{soft['raw_inference_samples_per_second']:,.0f}"],
               ["write_logits (Parquet → Parquet)", f"{soft['write_logits_samples_per_second']:,.0f}"],
               ["ratio", f"{ratios['soft_labels_vs_raw_inference']:.2f}x"]]),
        table(["transfer rows", "write_logits peak memory growth (MiB)"],
              [[m["rows"], f"{m['peak_growth_mib']:.1f}"] for m in memory]),
    ])
    payload = {"device": str(device), "samples": samples, "epochs": epochs, "batch_size": BATCH, "rounds": rounds,
               "training": training, "lightning": "measured" if "lightning" in training else "skipped: not installed",
               "soft_labels": soft, "soft_labels_peak_memory": {"chunk_size": memory_chunk, "runs": memory}, "ratios": ratios, "targets": targets}
    write_results(args, f"throughput_{device.type}", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict:
    cli = parser("throughput", __doc__.splitlines()[0])
    cli.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    args = cli.parse_args(argv)
    with intra_op_threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
