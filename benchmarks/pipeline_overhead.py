"""Where the default run's wall time goes: the schedule of its models, and everything else (Prefect, MLflow, I/O).

In a fresh project root holding a copy of the code, dvc.yaml and the params, each measurement runs in its own
process, with a PREFECT_HOME of its own. Its database is created first, by one start of Prefect's temporary server,
timed on its own (`prefect_first_start_seconds`): that happens once per machine (PREFECT_HOME is ~/.prefect), so the
runs below start Prefect as every run after a machine's first does. With --quick, the database is a copy of the
caller's, migrated already (benchmarks.workspace.quick_prefect_home), and that start times no migration. Likewise
the empty MLflow store a new project's store is copied from is made first, once per machine
(kdflow.tracking.store_template), not in the cold run.
- cold: `flows.pipeline.pipeline`, started as `kdflow run` starts it, its models trained at once in local worker
  processes (the default); the wall time is the process's whole life. Each stage's seconds in its worker are its
  compute; from them, the critical path and the two-core bound max(critical path, total / cores), which no
  schedule of these stages on these cores beats, against the wall time;
- serial: the same, cold, in another project, with `--serial` (every stage in the flow's process, in turn, with
  all its threads), timers around the compute inside the stages (data generation in prepare, every
  kdflow.training.fit, teacher inference in soft_labels, predictions and latency in evaluate): everything but
  that compute is overhead (interpreter start, imports, Prefect's temporary server, MLflow, I/O);
- warm: the cold flow again, unchanged: DVC's record (which the cold flow run wrote) should skip every stage;
- dvc: `dvc repro` right after the flow, timed: it must run nothing, the flow's record being DVC's own;
- scale (not with --quick, a smoke run of the rest): soft_labels and distill rerun on a transfer set a tenth the
  size, against the cold run's;
- baseline (`--baseline REF`): the cold run of the code at git REF with REF's own params.yaml (and the same -S
  overrides), in the same benchmark run, for the ratio of this code's cold run to that one's: each commit's default
  run, as a user of each would start it.
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
from benchmarks.workspace import load_overridden, quick_overrides, quick_prefect_home
from kdflow import graph, schedule, tracking
from kdflow.config import dump_params

TARGETS = {"overhead_share": 0.20, "warm_over_cold": 0.25, "dvc_noop_seconds": 5.0, "scale_cost": 11.0,
           "wall_over_bound": 1.2, "concurrent_over_serial": 0.6, "warm_seconds": 10.0}
TRAINING_STAGES = graph.TRAINING_STAGES


def measure(root: Path, stages: str, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(root / ".prefect-home"),
           "KDFLOW_BENCH_THREADS": str(threads or ""),
           # A busy machine can take minutes to start and migrate the temporary server's fresh database.
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    started = time.perf_counter()
    completed = subprocess.run(
        # ended as `kdflow run` ends (cli.quick_exit): without the seconds of Python's module teardown
        [sys.executable, "-c", f"from benchmarks.overhead_child import child; child({str(root)!r}, {stages!r}); "
                               "from cli.quick_exit import exit_now; exit_now(0)"],
        cwd=root, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{stages} in {root} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    line = next(l for l in completed.stdout.splitlines() if l.startswith("KDFLOW-BENCH "))
    # The process's whole life, what `time kdflow run` shows: interpreter, imports, Prefect's server, the flow.
    return {**json.loads(line.removeprefix("KDFLOW-BENCH ")), "wall_seconds": time.perf_counter() - started}


def project_copy(root: Path, params_text: str, ref: str | None = None) -> Path:
    """A project root holding the code (this checkout's, or that of git `ref` with its own measuring child,
    benchmarks/overhead_child.py, which times its code's functions), its dvc.yaml and the params."""
    root.mkdir(parents=True)
    if ref is None:
        for folder in ("kdflow", "models", "tasks", "flows"):
            shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".gitignore"):
            shutil.copy(REPO_ROOT / name, root / name)
    else:
        archive = subprocess.run(["git", "archive", ref, "kdflow", "models", "tasks", "flows", "benchmarks", "dvc.yaml",
                                  ".gitignore"],
                                 cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "data" / "raw").mkdir(parents=True)  # prepare depends on the folder of users' raw files
    shutil.copy(REPO_ROOT / "data" / "raw" / "README.md", root / "data" / "raw" / "README.md")
    (root / "params.yaml").write_text(params_text)
    return root


def params_at(ref: str, overrides: list[str]) -> str:
    """params.yaml as git `ref` has it, `overrides` written in as `dvc exp run -S` writes them: another commit's
    params may lack keys this one has (or have others), which this code's validation would refuse."""
    from dvc.utils.hydra import apply_overrides

    text = subprocess.run(["git", "show", f"{ref}:params.yaml"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "params.yaml"
        path.write_text(text)
        apply_overrides(path, overrides)
        return path.read_text()


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


def schedule_of(run: dict, cores: int) -> dict:
    """A flow run's per-stage compute, its critical path and the bound on `cores` cores, against its wall time."""
    seconds = {stage: run["stage_seconds"][stage] for stage in graph.STAGES if stage in run["stage_seconds"]}
    needs = {stage: [up for up in graph.needs(stage) if up in seconds] for stage in seconds}
    critical, chain = schedule.critical_path(seconds, needs)
    bound = schedule.bound(seconds, needs, cores)
    return {"compute_seconds": seconds, "total_compute_seconds": sum(seconds.values()), "critical_path_seconds": critical,
            "critical_path": chain, "cores": cores, "bound_seconds": bound, "wall_over_bound": run["wall_seconds"] / bound}


def met(name: str, value: float) -> dict:
    return {"required": f"<= {TARGETS[name]}", "measured": value, "met": value <= TARGETS[name]}


def run(args) -> dict:
    overrides = [*(quick_overrides() if args.quick else []), *args.overrides]
    params = load_overridden(overrides)
    smaller = params.model_copy(update={"data": params.data.model_copy(
        update={"transfer": params.data.transfer.model_copy(update={"size": params.data.transfer.size // 10})})})
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        root = project_copy(Path(scratch) / "default", dump_params(params))
        if args.quick:
            quick_prefect_home(root / ".prefect-home")
        first_start = measure(root, "prefect", args.threads)  # migrates Prefect's database, once per machine
        tracking.store_template()  # MLflow's empty store, once per machine
        cold = measure(root, "flow", args.threads)
        warm = measure(root, "flow", args.threads)
        dvc = dvc_noop(root)
        serial_root = project_copy(Path(scratch) / "serial", dump_params(params))
        shutil.copytree(root / ".prefect-home", serial_root / ".prefect-home")  # its database made already
        serial = measure(serial_root, "serial", args.threads)
        same_bytes = {stage: lock_outs(root, stage) == lock_outs(serial_root, stage)
                      for stage in graph.STAGES if stage != "evaluate"}  # evaluate's report holds measured latency
        if args.baseline:
            baseline_root = project_copy(Path(scratch) / "baseline", params_at(args.baseline, overrides), args.baseline)
            shutil.copytree(root / ".prefect-home", baseline_root / ".prefect-home")
            baseline = measure(baseline_root, "flow", args.threads)
        small = None
        if not args.quick:
            small_root = project_copy(Path(scratch) / "small_transfer", dump_params(smaller))
            measure(small_root, "prepare,train_teacher", args.threads)  # its own teacher: its card is another
            small = measure(small_root, "soft_labels,distill", args.threads)
    load_after = os.getloadavg()

    plan = schedule_of(cold, cores)
    compute = sum(serial["compute_seconds"].values())
    overhead_share = 1 - compute / serial["wall_seconds"]
    scale = {stage: serial["stage_seconds"][stage] / small["stage_seconds"][stage]
             for stage in ("soft_labels", "distill")} if small else {}
    accuracy = {name: [run["summary_accuracy"][name] for run in (cold, serial)] for name in cold["summary_accuracy"]}
    measured = {"overhead_share": overhead_share, "warm_over_cold": warm["wall_seconds"] / cold["wall_seconds"],
                "warm_seconds": warm["wall_seconds"], "dvc_noop_seconds": dvc["seconds"],
                "scale_cost": max(scale.values(), default=None),
                "wall_over_bound": plan["wall_over_bound"],
                "concurrent_over_serial": cold["wall_seconds"] / serial["wall_seconds"]}
    targets = {name: met(name, measured[name]) for name in TARGETS if measured[name] is not None}
    targets["dvc_repro_runs_nothing"] = {"required": "0 stages run", "measured": dvc["stages_run"],
                                         "met": dvc["stages_run"] == 0}
    targets["same_bytes_as_serial"] = {"required": "every stage's outputs", "measured": same_bytes,
                                       "met": all(same_bytes.values())}
    targets["same_test_accuracy_as_serial"] = {"required": "every model", "measured": accuracy,
                                               "met": all(a == b for a, b in accuracy.values())}
    if args.baseline:
        measured["cold_over_baseline"] = cold["wall_seconds"] / baseline["wall_seconds"]
        targets["cold_over_baseline"] = {"required": "<= 1.05", "measured": measured["cold_over_baseline"],
                                         "met": measured["cold_over_baseline"] <= 1.05}
    targets["warm_skips_training"] = {"required": "every training stage cached", "measured": warm["cached"],
                                      "met": set(TRAINING_STAGES) <= set(warm["cached"])}
    markdown = "\n\n".join([schedule_table(plan, cold, serial), overhead_table(serial), table(
        ["measure", "value", "target", "met"], [
            ["cold run / two-core bound", f"{plan['wall_over_bound']:.2f} ({cold['wall_seconds']:.1f} s vs "
             f"{plan['bound_seconds']:.1f} s)", "≤ 1.2", targets["wall_over_bound"]["met"]],
            ["cold run / serial cold run", f"{measured['concurrent_over_serial']:.1%} ({cold['wall_seconds']:.1f} s "
             f"vs {serial['wall_seconds']:.1f} s)", "≤ 60 %", targets["concurrent_over_serial"]["met"]],
            ["same bytes and test accuracy as the serial run", f"{sum(same_bytes.values())} of {len(same_bytes)} "
             "stages' outputs; " + ("every model's accuracy" if targets["same_test_accuracy_as_serial"]["met"] else
                                    "accuracy differs"), "all",
             targets["same_bytes_as_serial"]["met"] and targets["same_test_accuracy_as_serial"]["met"]],
            ["overhead share of the serial cold run", f"{overhead_share:.1%}", "≤ 20 %", targets["overhead_share"]["met"]],
            ["unchanged rerun", f"{warm['wall_seconds']:.1f} s, {measured['warm_over_cold']:.1%} of the cold run "
             f"(cached: {len(warm['cached'])} of {len(graph.STAGES)} stages)", "< 10 s, ≤ 25 %, every stage cached",
             targets["warm_seconds"]["met"] and targets["warm_over_cold"]["met"] and targets["warm_skips_training"]["met"]],
            ["`dvc repro` after the flow", f"{dvc['seconds']:.1f} s ({dvc['stages_run']} stages run)",
             "≤ 5 s, 0 stages", targets["dvc_noop_seconds"]["met"] and targets["dvc_repro_runs_nothing"]["met"]],
            *([[f"cold run / cold run at {args.baseline}", f"{measured['cold_over_baseline']:.3f} "
                f"({cold['wall_seconds']:.1f} s vs {baseline['wall_seconds']:.1f} s)", "≤ 1.05",
                targets["cold_over_baseline"]["met"]]] if args.baseline else []),
            *[[f"{stage}: 10x transfer set costs", f"{ratio:.2f}x ({small['stage_seconds'][stage]:.1f} s → "
               f"{serial['stage_seconds'][stage]:.1f} s)", "≤ 11x", ratio <= TARGETS["scale_cost"]]
              for stage, ratio in scale.items()],
        ]), f"Load average (1, 5, 15 min) before the benchmark {format_load(load_before)}, after it "
            f"{format_load(load_after)}, on {cores} cores."])
    payload = {"overrides": args.overrides, "params_transfer_size": params.data.transfer.size,
               "baseline": {"ref": args.baseline, **baseline} if args.baseline else None,
               "prefect_first_start_seconds": first_start["wall_seconds"], "cold": cold, "serial": serial,
               "schedule": plan, "warm": warm, "dvc": dvc, "small_transfer": small, "scale": scale,
               "load_average": {"before": load_before, "after": load_after},
               "measured": measured, "targets": targets}
    write_results(args, "pipeline_overhead", payload, markdown)
    return payload


def format_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.1f}" for value in load)


def lock_outs(root: Path, stage: str) -> list:
    import yaml

    return yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["outs"]


def schedule_table(plan: dict, cold: dict, serial: dict) -> str:
    """Per model: its compute in the concurrent run and in the serial one (wall and CPU seconds: on a shared machine
    the difference is the wait for a core), and whether it is on the critical path."""
    def cpu(run: dict, stage: str) -> str:
        return f"{run['stage_cpu_seconds'][stage]:.1f}" if stage in run.get("stage_cpu_seconds", {}) else ""

    rows = [[stage, f"{seconds:.1f}", cpu(cold, stage), f"{serial['stage_seconds'].get(stage, 0.0):.1f}",
             cpu(serial, stage), "yes" if stage in plan["critical_path"] else ""]
            for stage, seconds in plan["compute_seconds"].items()]
    rows += [["**total compute**", f"{plan['total_compute_seconds']:.1f}", f"{sum(cold['stage_cpu_seconds'].values()):.1f}",
              f"{sum(serial['stage_seconds'].values()):.1f}", f"{sum(serial['stage_cpu_seconds'].values()):.1f}", ""],
             ["**critical path**", f"{plan['critical_path_seconds']:.1f}", "", "", "", " → ".join(plan["critical_path"])],
             [f"**bound** max(critical path, total / {plan['cores']} cores)", f"{plan['bound_seconds']:.1f}", "", "", "",
              ""],
             ["**cold run, wall** (concurrent, serial)", f"{cold['wall_seconds']:.1f}", "", f"{serial['wall_seconds']:.1f}",
              "", f"{cold.get('slots', '?')} worker processes"]]
    return table(["stage (model)", "concurrent s", "CPU s", "serial s", "CPU s", "critical path"], rows)


def overhead_table(serial: dict) -> str:
    """The serial run: each stage's wall time against the compute inside it."""
    compute = sum(serial["compute_seconds"].values())
    rows = [[stage, f"{seconds:.1f}", f"{serial['compute_seconds'].get(stage, 0.0):.1f}",
             f"{seconds - serial['compute_seconds'].get(stage, 0.0):.1f}"] for stage, seconds in serial["stage_seconds"].items()]
    outside = serial["wall_seconds"] - sum(serial["stage_seconds"].values())
    rows.append(["outside the stages: start-up, imports, Prefect", f"{outside:.1f}", "0.0", f"{outside:.1f}"])
    rows.append(["**serial cold run**", f"{serial['wall_seconds']:.1f}", f"{compute:.1f}",
                 f"{serial['wall_seconds'] - compute:.1f}"])
    return table(["stage (serial run)", "wall s", "compute s", "overhead s"], rows)


def main(argv: list[str] | None = None) -> dict:
    cli = parser("pipeline_overhead", __doc__.splitlines()[0])
    cli.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params key of the measured run, as `kdflow run -S` does")
    cli.add_argument("--baseline", default=None, metavar="GIT_REF",
                     help="also time the cold run of the code at GIT_REF, for the ratio of the two")
    return run(cli.parse_args(argv))


if __name__ == "__main__":
    main()
