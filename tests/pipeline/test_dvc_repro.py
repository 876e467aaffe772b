"""`dvc repro` on the tiny config in a temporary git repository holding a copy of the project."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdflow import graph
from kdflow.layout import MODELS, SPLITS, ProjectPaths, models_of
from tests.conftest import KDFLOW

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = list(graph.STAGES)


def run(command: list[str], cwd: Path) -> str:
    # `kdflow` in dvc.yaml's commands must be this interpreter's, whatever PATH the test runner had, and run the
    # code copied into the repository, which dvc.yaml names as the stages' code deps.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd)}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout + completed.stderr


def stages_run(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, tiny_params, write_params):
    repo = tmp_path_factory.mktemp("dvc-repo")
    for folder in ("kdflow", "models", "tasks", "flows", "cli"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "data" / "raw").mkdir(parents=True)  # prepare's dependency on users' raw files
    shutil.copy(REPO_ROOT / "data" / "raw" / "README.md", repo / "data" / "raw" / "README.md")
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    write_params(repo, tiny_params)
    run(["git", "init", "-q"], repo)
    for key, value in (("user.name", "kdflow tests"), ("user.email", "tests@kdflow.invalid")):
        run(["git", "config", key, value], repo)  # `dvc exp run` commits experiments
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny"], repo)
    first = run([sys.executable, "-m", "dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)  # dvc.lock, metrics and curves: the baseline experiments compare against
    run(["git", "commit", "-qm", "baseline results"], repo)
    return repo, first


def test_repro_runs_every_stage_then_nothing(dvc_repo):
    repo, first = dvc_repo
    assert sorted(stages_run(first)) == sorted(STAGES)  # DVC picks the order of independent stages
    for split in SPLITS:
        assert (repo / "data" / "prepared" / f"{split}.parquet").exists()
    assert (repo / "metrics" / "summary.json").exists() and (repo / "reports" / "report.md").exists()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    second = run([sys.executable, "-m", "dvc", "repro"], repo)
    assert stages_run(second) == []
    assert "Data and pipelines are up to date" in second

    # The models' test metrics as the report's table: a row per model, a column per metric, nothing else.
    table = [line.split() for line in run([sys.executable, "-m", "dvc", "metrics", "show"], repo).splitlines()]
    assert table[0] == ["Path", "latency_ms", "parameters", "task", "test_accuracy", "test_agreement", "test_ece",
                        "test_macro_f1", "test_nll"]
    assert [row[0] for row in table[1:]] == [f"metrics/test/{model}.json" for model in MODELS]
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    for row in table[1:]:
        tested = summary["models"][Path(row[0]).stem]
        assert row[3] == tested["task"] and float(row[4]) == pytest.approx(tested["test_accuracy"], abs=1e-5)


def test_after_dvc_repro_kdflow_run_runs_nothing(dvc_repo, prefect_server):
    """The other order of issue 9's promise: what `dvc repro` recorded, the flow takes from DVC's record."""
    repo, _ = dvc_repo
    output = run([KDFLOW, "run"], repo)  # the repository's copy of the code, which its dvc.yaml names
    assert f"stages run: none; from DVC's record: {', '.join(graph.STAGES)}" in output
    assert "Data and pipelines are up to date" in run([sys.executable, "-m", "dvc", "status"], repo)


def test_the_flow_writes_the_same_files_and_numbers_as_dvc(dvc_repo, flowed_project):
    """One logic, two runners: the test run's cold flow run (stages in Dask worker processes) and `dvc repro`
    (each stage a `kdflow stage` process) on the same params write the same Parquet bytes, the same checkpoints
    and the same test metrics (latency aside)."""
    repo, _ = dvc_repo
    flowed, _ = flowed_project
    assert yaml.safe_load((repo / "params.yaml").read_text()) == yaml.safe_load((flowed / "params.yaml").read_text())
    for split in SPLITS:
        relative = Path("data", "prepared", f"{split}.parquet")
        assert (flowed / relative).read_bytes() == (repo / relative).read_bytes(), split
    for name in ("transfer", "source_train"):
        relative = Path("artifacts", "soft_labels", f"{name}.parquet")
        assert (flowed / relative).read_bytes() == (repo / relative).read_bytes(), name
    for model in MODELS:
        relative = ProjectPaths(Path(".")).checkpoint(model)
        assert (flowed / relative).read_bytes() == (repo / relative).read_bytes(), model
    flow_summary = json.loads((flowed / "metrics" / "summary.json").read_text())
    dvc_summary = json.loads((repo / "metrics" / "summary.json").read_text())
    for model, metrics in dvc_summary["models"].items():
        for key in ("test_accuracy", "test_macro_f1", "test_nll", "test_ece", "parameters"):
            assert flow_summary["models"][model][key] == metrics[key], (model, key)


def test_exp_run_shows_the_new_temperature_in_exp_show_metrics_diff_and_plots(dvc_repo, tmp_path):
    repo, _ = dvc_repo
    output = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "distill.temperature=8"], repo)
    assert stages_run(output) == ["distill", "finetune", "evaluate"]
    try:
        shown = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo))
        temperatures = [rev["data"]["params"]["params.yaml"]["data"]["distill"]["temperature"]
                        for baseline in shown for rev in [baseline, *(e["revs"][0] for e in baseline.get("experiments") or [])]]
        assert 4.0 in temperatures and 8 in temperatures, temperatures

        diff = json.loads(run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], repo))
        assert diff["metrics/test/student_distilled.json"]["test_nll"]["diff"] != 0
        teacher_changes = set(diff.get("metrics/test/teacher.json", {}))
        assert teacher_changes <= {"latency_ms"}, "the teacher did not change, only its timing may"
        readable = run([sys.executable, "-m", "dvc", "metrics", "diff"], repo)
        assert re.search(r"metrics/test/student_distilled.json +test_nll ", readable), readable

        run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
        html = (tmp_path / "plots" / "index.html").read_text()
        curve = (repo / "plots" / "curves" / "student_distilled.csv").read_text().splitlines()
        last_val_accuracy = curve[-1].split(",")[3]
        assert "Validation accuracy" in html and "student_distilled.csv" in html
        assert last_val_accuracy in html, "the curve's data is not in the page"
        for chart in ("Training and validation loss", "Reliability (accuracy per confidence bin)",
                      "Confusion matrix of target_finetuned on the target task", "confusion_target.png",
                      "reliability.png", "accuracy_cost.png"):
            assert chart in html, chart
    finally:  # back to the committed baseline for the tests below
        run(["git", "reset", "-q", "--hard"], repo)
        run([sys.executable, "-m", "dvc", "checkout", "--force"], repo)


def test_push_then_pull_into_a_fresh_clone_restores_every_output_byte_for_byte(dvc_repo, tmp_path):
    repo, _ = dvc_repo
    remote = tmp_path / "remote"
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], repo)
    run(["git", "commit", "-qam", "local DVC remote"], repo)
    run([sys.executable, "-m", "dvc", "push"], repo)
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data" / "prepared").exists()
    run([sys.executable, "-m", "dvc", "pull"], clone)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    assert {"data/prepared", "artifacts/teacher/teacher.pt", "artifacts/soft_labels", "reports",
            *(f"artifacts/students/{model}.pt" for model in models_of("student"))} <= outs  # one out per model
    for out in outs:
        files = sorted(p.relative_to(repo) for p in (repo / out).rglob("*") if p.is_file()) \
            if (repo / out).is_dir() else [Path(out)]
        assert files, out
        for relative in files:
            assert (clone / relative).read_bytes() == (repo / relative).read_bytes(), relative
        pulled = sorted(p.relative_to(clone) for p in (clone / out).rglob("*") if p.is_file()) \
            if (clone / out).is_dir() else [Path(out)]
        assert pulled == files, out
    assert "Data and pipelines are up to date" in run([sys.executable, "-m", "dvc", "status"], clone)


def test_changing_temperature_reruns_distill_and_downstream_only(dvc_repo):
    repo, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["distill"]["temperature"] = 8.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "distill:" in status and "train_teacher:" not in status and "prepare:" not in status

    output = run([sys.executable, "-m", "dvc", "repro"], repo)
    # The experiment above trained these very students (T=8), and equal weights are equal checkpoint bytes: DVC's
    # run cache restores what finetune and evaluate made from them rather than running them again.
    assert stages_run(output) == ["distill"]
    for stage in ("finetune", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    metrics = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo)
    assert "student_distilled" in metrics
