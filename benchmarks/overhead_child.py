"""The measured process of benchmarks.pipeline_overhead: it imports nothing at the top, so that, like `kdflow run`,
it starts Prefect's server before torch and the stages load."""

from __future__ import annotations

import functools
import json
import os
import time
from collections import defaultdict
from pathlib import Path


def instrument() -> dict:
    """Wrap the stage functions and the compute inside them with timers; returns the timings being filled."""
    import flows.pipeline
    import kdflow.stage
    import tasks.evaluate
    import tasks.prepare
    import tasks.soft_labels

    timings = {"stage_seconds": {}, "compute_seconds": defaultdict(float)}
    current = {"stage": None}

    def timed_compute(module, name):
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings["compute_seconds"][current["stage"]] += time.perf_counter() - started
        setattr(module, name, wrapper)

    def timed_stage(stage, original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            current["stage"] = stage
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings["stage_seconds"][stage] = time.perf_counter() - started
        return wrapper

    for module, name in [(tasks.prepare, "build_splits"), (kdflow.stage, "fit_batches"), (tasks.soft_labels, "write_logits"),
                         (tasks.evaluate, "predict_logits"), (tasks.evaluate, "latency_ms_per_sample")]:
        timed_compute(module, name)
    for stage, run in list(flows.pipeline.STAGES.items()):
        flows.pipeline.STAGES[stage] = timed_stage(stage, run)
    return timings


def child(root: str, stages: str) -> None:
    """In a fresh process: the whole flow (`stages` "flow", or "serial" for `--serial`), Prefect's server alone
    ("prefect") or the named stages directly; JSON timings on stdout.

    The flow is started as `kdflow run` starts it: Prefect's temporary server first, then the stages' imports.
    """
    from flows.server import PrefectApi

    if stages == "prefect":  # the server's start alone, nothing of the project's
        with PrefectApi.start().settings():
            print("KDFLOW-BENCH {}")
        return
    api = PrefectApi.start() if stages in ("flow", "serial") else None
    if api is not None:  # as `kdflow run` goes on while the server starts
        from flows.runners import start_workers_early
        from kdflow import record

        start_workers_early(Path(root).resolve(), stages == "serial", None, False, False)
        record.ensure_project(Path(root).resolve())
    if os.environ.get("KDFLOW_BENCH_THREADS"):  # else torch's default, as `kdflow run` has it
        import torch

        torch.set_num_threads(int(os.environ["KDFLOW_BENCH_THREADS"]))
    # Timers where the stages run in this process; the concurrent flow's run in its workers, which report their
    # seconds, and its process imports no stage (as `kdflow run`'s does not).
    timings = instrument() if stages != "flow" else {"stage_seconds": {}, "compute_seconds": {}}
    from flows.pipeline import STAGES, pipeline
    from kdflow import tracking
    from kdflow.config import load_params
    from kdflow.layout import ProjectPaths

    tracking.project_client(Path(root).resolve())  # as `kdflow run` does; for the stages, not in the first timed one
    if api is not None:
        with api.settings():
            # (only when asked: a --baseline commit's flow may predate the option)
            result = pipeline(params_path=str(Path(root) / "params.yaml"), root=root,
                              **({"serial": True} if stages == "serial" else {}))
        # Each stage's seconds where it ran (a worker process, or this one); the compute timers see this one only.
        timings.update(ran=result["ran"], cached=result["cached"], slots=result.get("slots"),
                       stage_seconds=result.get("stage_seconds", timings["stage_seconds"]),
                       stage_cpu_seconds=result.get("stage_cpu_seconds", {}),
                       summary_accuracy={model: metrics["test_accuracy"]
                                         for model, metrics in result["summary"]["models"].items()})
    else:
        params = load_params(Path(root) / "params.yaml")
        for stage in stages.split(","):
            STAGES[stage](params, ProjectPaths.at(root), None)
    print("KDFLOW-BENCH " + json.dumps(timings))
