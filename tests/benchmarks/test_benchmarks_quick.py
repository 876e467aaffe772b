"""Every benchmark's --quick smoke run: it runs the real stages and loops, and its JSON has the right shape and
numbers that agree with each other (a ratio is the quotient of the rates it reports, a CI comes from its seeds)."""

from __future__ import annotations

import importlib
import json
import math
import statistics

import pytest

from benchmarks import paper_table, throughput, transfer
from benchmarks.harness import mean_ci
from kdflow import graph


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """One work dir for the module, so distillation and transfer share the tiny pipeline's teacher."""
    return ["--quick", "--results-dir", str(tmp_path_factory.mktemp("results")),
            "--work-dir", str(tmp_path_factory.mktemp("work"))]


def quick_run(module: str, args: list[str]) -> dict:
    """`python -m <module> --quick ...` in this process: the entry point docs/benchmarks.md's commands run."""
    return importlib.import_module(module).main(args)


def written(args: list[str], name: str) -> dict:
    payload = json.loads((__import__("pathlib").Path(args[2]) / f"{name}.quick.json").read_text())
    assert payload["quick"] is True and payload["benchmark"] == name and payload["table"].startswith("|")
    assert payload["machine"]["torch_threads"] >= 1 and payload["commit"]
    return payload


def test_mean_ci_is_students_t_by_hand():
    summary = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.302653
    assert summary["mean"] == 2.0 and summary["n"] == 3
    assert summary["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean_ci([5.0]) == {"mean": 5.0, "ci95": 0.0, "n": 1}


def test_paper_table(dirs):
    quick_run("benchmarks.paper_table", dirs)
    payload = written(dirs, "paper_table")
    assert payload["split"] == {"train": 800, "test": 200}
    assert set(payload["models"]) == {"logistic_regression", "mlp", "cnn"}
    for name, model in payload["models"].items():
        assert model["paper"] == paper_table.PAPER_ACCURACY[name]
        assert len(model["per_seed"]) == 2 and all(0 <= a <= 100 for a in model["per_seed"])
        assert model["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(model["per_seed"]))
        assert model["target_met"] == (model["test_accuracy"]["mean"] >= model["paper"] - 2)
    assert payload["models"]["logistic_regression"]["parameters"] == 40 * 10 + 10


def test_distillation(dirs):
    payload = quick_run("benchmarks.distillation", dirs)
    assert written(dirs, "distillation")["rows"] == json.loads(json.dumps(payload["rows"]))
    rows = payload["rows"]
    assert [(r["transfer_size"], r["temperature"]) for r in rows] == [
        (size, t) for size in (0, 500, 2000) for t in (1.0, 4.0)]
    base = rows[0]["train_samples"]
    assert [r["train_samples"] - base for r in rows] == [0, 0, 500, 500, 2000, 2000]
    teacher = payload["teacher_test_accuracy"]
    for row in rows:
        seeds = row["per_seed"]
        gaps = [(seeds["distilled"][s] - seeds["scratch"][s]) / (teacher - seeds["scratch"][s]) for s in (0, 1)]
        assert row["gap_closed"]["mean"] == pytest.approx(statistics.fmean(gaps))
        assert row["soft_minus_hard"]["mean"] == pytest.approx(row["distilled"]["mean"] - row["hard_labels"]["mean"])
        assert row["soft_beats_hard"] == (row["soft_minus_hard"]["mean"] - row["soft_minus_hard"]["ci95"] > 0)
    assert payload["target"]["measured"] is None and payload["target"]["met"] is False  # no 25k size in --quick


def test_transfer(dirs):
    payload = quick_run("benchmarks.transfer", dirs)
    written(dirs, "transfer")
    assert set(payload["results"]) == {"5", "10"}
    for result in payload["results"].values():
        for strategy in transfer.STRATEGIES:
            assert len(result[strategy]["per_seed"]) == 2 and 0 <= result[strategy]["mean"] <= 100
        assert result["full_minus_scratch"]["mean"] == pytest.approx(result["full"]["mean"] - result["scratch"]["mean"])
    assert payload["target"]["labels_per_class"] == [10]


def test_throughput(dirs):
    payload = quick_run("benchmarks.throughput", dirs)
    written(dirs, "throughput_cpu")
    training, ratios = payload["training"], payload["ratios"]
    assert {"engine", "hand_loop", "dataloader"} <= set(training)
    for name in ("hand_loop", "dataloader"):
        assert ratios[f"engine_vs_{name}"] == pytest.approx(
            training["engine"]["samples_per_second"] / training[name]["samples_per_second"])
    if throughput.lightning_available():
        assert payload["lightning"] == "measured" and ratios["engine_vs_lightning"] > 0
    else:
        assert payload["lightning"].startswith("skipped") and payload["targets"]["engine_vs_lightning"]["met"] is None
    assert 0 < ratios["soft_labels_vs_raw_inference"] < 5
    runs = payload["soft_labels_peak_memory"]["runs"]
    assert [r["rows"] for r in runs] == [1000, 10000] and all(r["baseline_mib"] > 50 for r in runs)


@pytest.mark.slow
def test_pipeline_overhead(dirs):
    payload = quick_run("benchmarks.pipeline_overhead", dirs)
    written(dirs, "pipeline_overhead")
    stages = list(graph.STAGES)
    assert payload["cold"]["ran"] == payload["serial"]["ran"] == stages and payload["warm"]["cached"] == stages
    assert payload["dvc"]["stages_run"] == 0
    assert 0 < payload["measured"]["overhead_share"] < 1
    assert set(payload["serial"]["compute_seconds"]) == set(stages)
    plan = payload["schedule"]
    assert set(plan["compute_seconds"]) == set(stages) and plan["cores"] >= 1
    assert plan["bound_seconds"] == pytest.approx(
        max(plan["critical_path_seconds"], plan["total_compute_seconds"] / plan["cores"]))
    assert plan["critical_path"][0] == "prepare" and plan["critical_path"][-1] == "evaluate"
    assert payload["targets"]["same_bytes_as_serial"]["met"], payload["targets"]["same_bytes_as_serial"]
    # the 10x transfer-set comparison is left out of the smoke run: two more flow runs
    assert payload["small_transfer"] is None and payload["scale"] == {} and "scale_cost" not in payload["targets"]


@pytest.mark.slow
def test_sweep_workers(dirs):
    payload = quick_run("benchmarks.sweep_workers", dirs)
    written(dirs, "sweep_workers")
    timings = payload["timings"]
    assert [t["workers"] for t in timings] == [1, 2] and all(t["trials"] == 2 for t in timings)
    assert timings[0]["dask_workers_used"] == 1
    assert timings[1]["speed_up"] == pytest.approx(timings[0]["wall_seconds"] / timings[1]["wall_seconds"])
    assert payload["target"]["met"] == (timings[1]["wall_seconds"] < timings[0]["wall_seconds"])
