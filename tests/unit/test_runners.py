"""The flow's local Dask cluster, as flows.runners starts it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

from tests.conftest import REPO_ROOT


def test_local_workers_start_without_dasks_malloc_trim_threshold_or_its_info_lines(monkeypatch, caplog):
    """Dask's nannies would give each worker MALLOC_TRIM_THRESHOLD_=65536, under which torch's allocations fault
    their pages in anew every step (the default teacher trained 1.6x slower); the flow's cluster unsets it. Its
    scheduler and nannies log in the flow's process: about 35 INFO lines a run, and a traceback when a failed stage
    closes the cluster under a busy worker; the run's output keeps their warnings only."""
    from flows import runners

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    caplog.set_level(logging.INFO)
    with runners.dask_runner(1) as runner:
        per_worker = runner.client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    assert list(per_worker.values()) == [None]
    assert [record.getMessage() for record in caplog.records if record.name.startswith("distributed")] == []


def test_two_local_clusters_at_once_each_serve_a_dashboard_without_a_warning():
    """Two runs on one machine: each cluster's dashboard takes a free port of 127.0.0.1 (Dask's 8787 made the second
    warn that it was taken and pick another)."""
    from flows import runners

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with runners.dask_runner(1) as first, runners.dask_runner(1) as second:
            links = [first.client.dashboard_link, second.client.dashboard_link]
    assert [str(w.message) for w in caught if "already in use" in str(w.message)] == []
    assert len(set(links)) == 2 and all(link.startswith("http://127.0.0.1:") for link in links)


PREFORKED_WORKERS = """
import json, os, sys
from flows import runners


def worker_state():
    return {"imported": "flows.pipeline" in sys.modules, "parent": os.getppid(),
            "variable": os.environ.get("KDFLOW_TEST_VARIABLE")}


if __name__ == "__main__":
    runners.prefork_local_workers("flows.pipeline")
    os.environ["KDFLOW_TEST_VARIABLE"] = "set after the fork server started"
    assert "flows.pipeline" not in sys.modules
    with runners.dask_runner(2) as runner:
        states = list(runner.client.run(worker_state).values())
    print(json.dumps({"states": states, "pid": os.getpid()}))
"""


def test_preforked_workers_start_with_the_stages_imported_as_forks_of_one_server(tmp_path):
    """`kdflow run` and `kdflow sweep` start the fork server while Prefect's server starts: each worker is a fork of
    it with the flow's tasks imported before its first task (spawned workers imported them at their first task,
    ~3 s on the run's critical path), and the environment is the command's as it was then."""
    script = tmp_path / "preforked.py"
    script.write_text(PREFORKED_WORKERS)
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.splitlines()[-1])
    states = result["states"]
    assert [state["imported"] for state in states] == [True, True]
    assert [state["variable"] for state in states] == [None, None]
    (server,) = {state["parent"] for state in states}  # both forks of one process: the fork server, not this one
    assert server != result["pid"]
