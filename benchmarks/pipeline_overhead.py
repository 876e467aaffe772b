"""Where the default run's wall time goes: stage compute against everything else (Prefect, MLflow, I/O).

In a fresh project root holding a copy of the code, dvc.yaml and the params, each measurement runs in its own
process, with a PREFECT_HOME of its own. Its database is created first, by one start of Prefect's temporary server,
timed on its own (`prefect_first_start_seconds`): that happens once per machine (PREFECT_HOME is ~/.prefect), so the
runs below start Prefect as every run after a machine's first does.
- cold: `flows.pipeline.pipeline`, started as `kdflow run` starts it, with timers around the compute inside the
  stages (data generation in prepare, every kdflow.training.fit, teacher inference in soft_labels, predictions
  and latency in evaluate); the wall time is the process's whole life, and everything but that compute is
  overhead (interpreter start, imports, Prefect's temporary server, MLflow, I/O);
- warm: the same flow again, unchanged: DVC's record (which the cold flow run wrote) should skip every stage;
- dvc: `dvc repro` right after the flow, timed: it must run nothing, the flow's record being DVC's own;
- scale: soft_labels and distill rerun on a transfer set a tenth the size, against the cold run's;
- baseline (`--baseline REF`): the cold run of the code at git REF, in the same benchmark run, for the ratio of
  this code's cold run to that one's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT, parser, table, write_results
from benchmarks.workspace import load_overridden, quick_overrides
from kdflow.config import dump_params

TARGETS = {"overhead_share": 0.20, "warm_over_cold": 0.25, "dvc_noop_seconds": 5.0, "scale_cost": 11.0}
TRAINING_STAGES = ("train_teacher", "distill", "finetune")


def measure(root: Path, stages: str, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(root / ".prefect-home"),
           "KDFLOW_BENCH_THREADS": str(threads or ""),
           # A busy machine can take minutes to start and migrate the temporary server's fresh database.
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.overhead_child import child; child({str(root)!r}, {stages!r})"],
        cwd=root, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{stages} in {root} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    line = next(l for l in completed.stdout.splitlines() if l.startswith("KDFLOW-BENCH "))
    # The process's whole life, what `time kdflow run` shows: interpreter, imports, Prefect's server, the flow.
    return {**json.loads(line.removeprefix("KDFLOW-BENCH ")), "wall_seconds": time.perf_counter() - started}


def project_copy(root: Path, params_text: str, ref: str | None = None) -> Path:
    """A project root holding the code (this checkout's, or that of git `ref`), its dvc.yaml and the params."""
    root.mkdir(parents=True)
    if ref is None:
        for folder in ("kdflow", "models", "tasks", "flows"):
            shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".gitignore"):
            shutil.copy(REPO_ROOT / name, root / name)
    else:
        archive = subprocess.run(["git", "archive", ref, "kdflow", "models", "tasks", "flows", "dvc.yaml", ".gitignore"],
                                 cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "data" / "raw").mkdir(parents=True)  # prepare depends on the folder of users' raw files
    shutil.copy(REPO_ROOT / "data" / "raw" / "README.md", root / "data" / "raw" / "README.md")
    (root / "params.yaml").write_text(params_text)
    return root


def shell(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout + completed.stderr


def dvc_noop(root: Path) -> dict:
    """Time `dvc repro` right after the flow: the flow recorded every stage in DVC, so nothing may run."""
    started = time.perf_counter()
    output = shell([sys.executable, "-m", "dvc", "repro"], root)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "stages_run": output.count("Running stage"), "output": output.strip()[-300:]}


def run(args) -> dict:
    params = load_overridden([*(quick_overrides() if args.quick else []), *args.overrides])
    smaller = params.model_copy(update={"data": params.data.model_copy(
        update={"transfer": params.data.transfer.model_copy(update={"size": params.data.transfer.size // 10})})})
    args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        root = project_copy(Path(scratch) / "default", dump_params(params))
        first_start = measure(root, "prefect", args.threads)  # creates Prefect's database, once per machine
        cold = measure(root, "flow", args.threads)
        warm = measure(root, "flow", args.threads)
        dvc = dvc_noop(root)
        if args.baseline:
            baseline_root = project_copy(Path(scratch) / "baseline", dump_params(params), args.baseline)
            shutil.copytree(root / ".prefect-home", baseline_root / ".prefect-home")  # its database made already
            baseline = measure(baseline_root, "flow", args.threads)
        small_root = project_copy(Path(scratch) / "small_transfer", dump_params(smaller))
        measure(small_root, "prepare,train_teacher", args.threads)  # its own teacher: its card is another
        small = measure(small_root, "soft_labels,distill", args.threads)

    compute = sum(cold["compute_seconds"].values())
    overhead_share = 1 - compute / cold["wall_seconds"]
    scale = {stage: cold["stage_seconds"][stage] / small["stage_seconds"][stage] for stage in ("soft_labels", "distill")}
    measured = {"overhead_share": overhead_share, "warm_over_cold": warm["wall_seconds"] / cold["wall_seconds"],
                "dvc_noop_seconds": dvc["seconds"], "scale_cost": max(scale.values())}
    targets = {name: {"required": f"<= {limit}", "measured": measured[name], "met": measured[name] <= limit}
               for name, limit in TARGETS.items()}
    targets["dvc_repro_runs_nothing"] = {"required": "0 stages run", "measured": dvc["stages_run"],
                                         "met": dvc["stages_run"] == 0}
    if args.baseline:
        measured["cold_over_baseline"] = cold["wall_seconds"] / baseline["wall_seconds"]
        targets["cold_over_baseline"] = {"required": "<= 1.05", "measured": measured["cold_over_baseline"],
                                         "met": measured["cold_over_baseline"] <= 1.05}
    targets["warm_skips_training"] = {"required": "train_teacher, distill, finetune cached",
                                      "measured": warm["cached"], "met": set(TRAINING_STAGES) <= set(warm["cached"])}
    rows = [[stage, f"{seconds:.1f}", f"{cold['compute_seconds'].get(stage, 0.0):.1f}",
             f"{seconds - cold['compute_seconds'].get(stage, 0.0):.1f}"] for stage, seconds in cold["stage_seconds"].items()]
    outside = cold["wall_seconds"] - sum(cold["stage_seconds"].values())
    rows.append(["outside the stages: start-up, imports, Prefect", f"{outside:.1f}", "0.0", f"{outside:.1f}"])
    rows.append(["**cold run**", f"{cold['wall_seconds']:.1f}", f"{compute:.1f}", f"{cold['wall_seconds'] - compute:.1f}"])
    rows.append(["(once per machine: Prefect creates its database)", f"{first_start['wall_seconds']:.1f}", "", ""])
    markdown = "\n\n".join([
        table(["stage", "wall s", "compute s", "overhead s"], rows),
        table(["measure", "value", "target", "met"], [
            ["overhead share of the cold run", f"{overhead_share:.1%}", "≤ 20 %", targets["overhead_share"]["met"]],
            ["unchanged rerun / cold run", f"{measured['warm_over_cold']:.1%} ({warm['wall_seconds']:.1f} s; cached: "
             f"{', '.join(warm['cached']) or 'none'})", "≤ 25 %, training stages cached",
             targets["warm_over_cold"]["met"] and targets["warm_skips_training"]["met"]],
            ["`dvc repro` after the flow", f"{dvc['seconds']:.1f} s ({dvc['stages_run']} stages run)",
             "≤ 5 s, 0 stages", targets["dvc_noop_seconds"]["met"] and targets["dvc_repro_runs_nothing"]["met"]],
            *([[f"cold run / cold run at {args.baseline}", f"{measured['cold_over_baseline']:.3f} "
                f"({cold['wall_seconds']:.1f} s vs {baseline['wall_seconds']:.1f} s)", "≤ 1.05",
                targets["cold_over_baseline"]["met"]]] if args.baseline else []),
            *[[f"{stage}: 10x transfer set costs", f"{ratio:.2f}x ({small['stage_seconds'][stage]:.1f} s → "
               f"{cold['stage_seconds'][stage]:.1f} s)", "≤ 11x", ratio <= TARGETS["scale_cost"]]
              for stage, ratio in scale.items()],
        ]),
    ])
    payload = {"overrides": args.overrides, "params_transfer_size": params.data.transfer.size,
               "baseline": {"ref": args.baseline, **baseline} if args.baseline else None,
               "prefect_first_start_seconds": first_start["wall_seconds"], "cold": cold, "warm": warm, "dvc": dvc,
               "small_transfer": small, "scale": scale, "measured": measured, "targets": targets}
    write_results(args, "pipeline_overhead", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict:
    cli = parser("pipeline_overhead", __doc__.splitlines()[0])
    cli.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params key of the measured run, as `kdflow run -S` does")
    cli.add_argument("--baseline", default=None, metavar="GIT_REF",
                     help="also time the cold run of the code at GIT_REF, for the ratio of the two")
    return run(cli.parse_args(argv))


if __name__ == "__main__":
    main()
