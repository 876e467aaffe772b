"""Where the flow's stages run: local worker processes (the default), a Dask cluster, or one after another.

- processes: a local Dask cluster of single-threaded worker processes, one per slot; each stage trains with its
  slot's share of the cores (kdflow.schedule.slots), and on a machine with several GPUs, one model per GPU. A
  command forks them from a server that imported the stages meanwhile (prefork_local_workers), else they spawn;
- a Dask address: the cluster's workers, which must see the project at the same path and reach the MLflow store
  and the Prefect API (a temporary server on 127.0.0.1 is no use to a remote cluster: set PREFECT_API_URL);
- serial: every stage in the flow's own process, in pipeline order, with all of its threads: the schedule the
  pipeline had before its models trained at once, kept for comparison and for a machine without spare memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kdflow import graph, record, schedule
from kdflow.layout import ProjectPaths


def local_cluster(workers: int) -> dict:
    """A local Dask cluster of single-threaded worker processes, listening on 127.0.0.1 only; its dashboard on a
    free port (Prefect logs its address): on Dask's 8787, a second run at once warned that the port was taken."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0"}


def prefork_local_workers(task_module: str) -> None:
    """Start now, in the background, the process this one's local Dask workers are forked from (multiprocessing's
    fork server), importing `task_module` (the flow's tasks), the stages (torch) and MLflow: a worker is then
    ready within milliseconds of its cluster's start instead of importing them for seconds at its first task, on
    the run's critical path, and it ends without Python's module teardown (3 s at the cluster's close).

    For a command's own process: a worker has the environment this process has now, whatever it becomes later."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: workers are spawned
        return
    import dask
    from multiprocessing import forkserver

    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    # MLflow imports its SQL store (SQLAlchemy, alembic: 1.3 s) at a stage's first run, not with the tasks
    stages = sorted({stage.module for stage in graph.STAGES.values()})
    imports = ["distributed", "prefect_dask", task_module, *stages, "mlflow.store.tracking.sqlalchemy_store"]
    multiprocessing.get_context("forkserver").set_forkserver_preload(imports)
    forkserver.ensure_running()


def start_workers_early(root: Path, serial: bool, dask_address: str | None, force: bool, overrides: bool) -> None:
    """What `kdflow run` does while Prefect's server starts: fork the flow's local workers' server, unless the run
    has none (serial, a cluster's address) or has nothing to do (every stage current in DVC's record, nothing
    forced or overridden), where it would only compete for the cores. A project without dvc.lock (a first run)
    has everything to do: its server starts before DVC is even imported."""
    if serial or dask_address:
        return
    first_run = not (Path(root) / ".dvc").is_dir() or not ProjectPaths.at(root).dvc_lock.exists()
    if force or overrides or first_run or record.stale_stages(root):
        prefork_local_workers("flows.pipeline")


def dask_runner(workers: int | None = None, address: str | None = None):
    """Prefect's Dask task runner on the cluster at `address`, or on a local cluster of `workers` processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    import dask

    # The local cluster's scheduler and nannies live in this process: their INFO lines (about 35 a run, and a
    # traceback when a failed stage closes the cluster under a busy worker) would bury the run's own output.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, so that memory goes back to the OS sooner;
    # torch's allocations then fault their pages in anew at every step (the default teacher trained in 24.8 s
    # instead of 15.5 s). None unsets it, as Dask's config allows; the user's own environment still passes on.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    return DaskTaskRunner(cluster_kwargs=local_cluster(workers or 2))


# Device files a GPU driver makes (NVIDIA's, AMD's ROCm, WSL2's): without any, a Linux machine has no CUDA device.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def machine() -> tuple[int, int]:
    """(CPU cores this process may use, CUDA devices visible). torch is asked only where a GPU driver is loaded: the
    flow's own process then never imports it (seconds of a run's start-up)."""
    cores = len(os.sched_getaffinity(0))
    if sys.platform == "linux" and not any(os.path.exists(device) for device in GPU_DEVICE_FILES):
        return cores, 0
    import torch

    return cores, torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class StageRunner:
    """A Prefect task runner and the slots stages run in: at most one stage per slot at a time. The task runner is
    made and started (a local cluster: its worker processes) at the first stage that must run, so a run that DVC's
    record answers in full imports and starts none."""

    kind: str  # "processes", "dask" or "serial", for the run's record
    make_runner: Callable[[], Any]
    slots: list[schedule.Slot | None] = field(default_factory=lambda: [None])
    runner: Any = None  # once started

    def __enter__(self) -> "StageRunner":
        return self

    def __exit__(self, *exc) -> None:
        if self.runner is not None:
            self.runner.__exit__(*exc)

    def submit(self, task, stage: str, params: dict, root: str, parent_run_id: str | None, slot):
        if self.runner is None:
            runner = self.make_runner()
            runner.__enter__()
            self.runner = runner
        return self.runner.submit(task, parameters={"stage": stage, "params": params, "root": root,
                                                    "parent_run_id": parent_run_id, "slot": slot})


def choose(serial: bool = False, workers: int | None = None, dask_address: str | None = None) -> StageRunner:
    """The runner a flow run asked for; see the module's docstring. `workers` defaults to one per GPU when several
    are visible, else one per core, but no more than there are stages that can run at once."""
    if serial:
        from prefect.task_runners import ThreadPoolTaskRunner

        return StageRunner("serial", lambda: ThreadPoolTaskRunner(max_workers=1))
    cores, gpus = machine()
    needs = {name: graph.needs(name) for name in graph.STAGES}
    count = workers or schedule.default_workers(cores, gpus, schedule.width(needs))
    if dask_address:  # another machine's cores and GPUs: a thread per stage, each worker's default device
        return StageRunner("dask", lambda: dask_runner(address=dask_address), schedule.slots(count, count, 0))
    return StageRunner("processes", lambda: dask_runner(count), schedule.slots(count, cores, gpus))
