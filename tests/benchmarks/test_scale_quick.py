"""benchmarks/scale --quick: its JSON has the right shape, and its ratios are the quotients of what it reports."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import scale


def test_scale(tmp_path):
    scale.main(["--quick", "--results-dir", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work")])
    payload = json.loads((tmp_path / "results" / "scale.quick.json").read_text())
    assert payload["quick"] is True and payload["table"].startswith("|")
    small, large = payload["sizes"]
    assert (small["rows"], small["path"]) == (2_000, "in memory") and (large["rows"], large["path"]) == (20_000, "streamed")
    assert all(size["peak_pss_mb"] > 0 and math.isfinite(size["train_loss"]) for size in payload["sizes"])
    ratios = payload["ratios"]
    assert ratios["peak_memory_ratio"] == pytest.approx(large["peak_pss_mb"] / small["peak_pss_mb"])
    assert ratios["distill_throughput_ratio"] == pytest.approx(large["distill_rows_per_s"] / small["distill_rows_per_s"])
    assert payload["met"]["peak_memory"] == (ratios["peak_memory_ratio"] <= 1.3)
    speeds = payload["same_rows"]["rows_per_s"]
    assert ratios["streamed_vs_in_memory"] == pytest.approx(speeds["streamed"] / speeds["in memory"])
