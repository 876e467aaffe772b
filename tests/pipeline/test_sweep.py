"""A real sweep of the tiny config: upstream stages once, distill trials on a local Dask cluster, MLflow nesting."""

from __future__ import annotations

import json

import pytest

from kdflow.artifacts import read_json

pytestmark = pytest.mark.slow

GRID = {"distill.temperature": [2, 8], "distill.alpha": [0.5]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_params, write_params, prefect_server):
    """`kdflow sweep` through click on a fresh tiny project; its sweep.json and what it printed."""
    from click.testing import CliRunner

    from cli.main import app

    root = tmp_path_factory.mktemp("sweep-project")
    params_path = write_params(root, tiny_params)
    result = CliRunner().invoke(app, ["sweep", "--params", str(params_path), "--root", str(root), "--workers", "2",
                                      "--grid", "distill.temperature=2,8", "--grid", "distill.alpha=0.5"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (summary_path,) = (root / "sweeps").glob("*/sweep.json")
    return root, read_json(summary_path), result.output


def test_each_trial_writes_its_own_students_and_metrics_and_leaves_the_project_outputs_alone(swept):
    root, summary, _ = swept
    assert [t["point"] for t in summary["trials"]] == [{"distill.temperature": 2, "distill.alpha": 0.5},
                                                      {"distill.temperature": 8, "distill.alpha": 0.5}]
    for trial in summary["trials"]:
        directory = root / "sweeps" / summary["mlflow_run_id"] / f"trial-{trial['trial']:02d}"
        assert trial["trial_dir"] == str(directory)
        stages = ("distill", "student_hard_labels", "student_scratch")  # a trial runs the three student stages
        assert {k: v for stage in stages for k, v in read_json(directory / "metrics" / f"{stage}.json").items()} \
            == trial["metrics"]
        for model in ("student_distilled", "student_hard_labels", "student_scratch"):
            assert (directory / "artifacts" / "students" / f"{model}.pt").stat().st_size > 0
            assert (directory / "plots" / "curves" / f"{model}.csv").exists()
        assert trial["dask_worker"].startswith("tcp://127.0.0.1:")
    # The sweep ran the upstream stages for the trials, but never the pipeline's own distill.
    assert (root / "artifacts" / "soft_labels" / "transfer.parquet").exists()
    assert not (root / "artifacts" / "students").exists() and not (root / "metrics" / "distill.json").exists()
    # Temperature changes the soft targets, so the two distilled students learned different weights.
    first, second = (root / "sweeps" / summary["mlflow_run_id"] / f"trial-0{i}" / "artifacts" / "students" /
                     "student_distilled.pt" for i in (0, 1))
    assert first.read_bytes() != second.read_bytes()


def test_best_trial_is_the_argmax_and_its_command_reproduces_its_point(swept):
    root, summary, output = swept
    scores = [t["metrics"]["student_distilled_val_accuracy"] for t in summary["trials"]]
    best = scores.index(max(scores))
    assert summary["best"]["trial"] == best
    temperature = GRID["distill.temperature"][best]
    assert summary["command"] == f"kdflow run -S distill.temperature={temperature} -S distill.alpha=0.5"
    assert output.rstrip().splitlines()[-2] == summary["command"]
    assert f"best: trial-0{best} (student_distilled_val_accuracy {max(scores):.4f})" in output


def test_mlflow_holds_a_sweep_run_with_nested_trials_and_their_distill_runs(swept):
    from mlflow.tracking import MlflowClient

    root, summary, _ = swept
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdflow")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    children = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    sweep_run = client.get_run(summary["mlflow_run_id"])
    assert sweep_run.info.run_name == "sweep" and sweep_run.info.status == "FINISHED"
    assert json.loads(sweep_run.data.params["grid"]) == GRID
    assert sweep_run.data.tags["kdflow.best_command"] == summary["command"]
    # The grid varies temperature and α: the sweep draws their map and logs it.
    assert (root / "sweeps" / sweep_run.info.run_id / "temperature_alpha.png").read_bytes()[:4] == b"\x89PNG"
    assert [a.path for a in client.list_artifacts(sweep_run.info.run_id, "sweep")] == ["sweep/temperature_alpha.png"]
    assert sweep_run.data.metrics["best_student_distilled_val_accuracy"] == pytest.approx(
        summary["best"]["metrics"]["student_distilled_val_accuracy"])
    nested = {r.info.run_name: r for r in children[sweep_run.info.run_id]}
    assert set(nested) == {"prepare", "train_teacher", "soft_labels", "trial-00", "trial-01"}
    for index, temperature in enumerate(GRID["distill.temperature"]):
        trial = nested[f"trial-{index:02d}"]
        assert trial.info.status == "FINISHED"
        assert trial.data.params["distill.temperature"] == str(temperature)  # the grid point as given
        assert trial.data.metrics["student_distilled_val_accuracy"] == pytest.approx(
            summary["trials"][index]["metrics"]["student_distilled_val_accuracy"])
        stages = {r.info.run_name: r for r in children[trial.info.run_id]}
        assert set(stages) == {"distill", "student_hard_labels", "student_scratch"}  # a stage per student
        stage = stages["distill"]
        assert stage.data.params["distill.temperature"] == str(float(temperature))
        models = {r.info.run_name: r for stage in stages.values() for r in children[stage.info.run_id]}
        assert set(models) == {"student_distilled", "student_hard_labels", "student_scratch"}
        assert models["student_distilled"].data.params["temperature"] == str(float(temperature))
