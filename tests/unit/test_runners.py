"""The flow's local Dask cluster, as flows.runners starts it."""

from __future__ import annotations

import logging
import os


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
