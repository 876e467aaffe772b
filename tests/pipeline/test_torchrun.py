"""`distill` under torchrun with two CPU processes (gloo): the one-process loss curve at the same global batch,
a run killed mid-training resumes from rank 0's state and ends where the uninterrupted run does, and `kdflow run`
launches the ranks itself when the stage's params ask for them."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdflow.config import load_params
from kdflow.layout import ProjectPaths
from tasks import distill

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small batches make each epoch long enough to kill the run inside one; the global batch is 8 rows either way.
OVERRIDES = ["distill.train.epochs=3", "distill.train.batch_size=8"]
# DDP sums the two ranks' gradients in another order than one process does; the losses agree to float32 rounding.
RELATIVE_TOLERANCE = 1e-4


def train_losses(paths: ProjectPaths, model: str) -> list[float]:
    with open(paths.curve(model)) as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


def saved_epoch(paths: ProjectPaths, model: str) -> int:
    """The epoch of the model's resume state, 0 when there is none (or it is being replaced)."""
    try:
        return torch.load(paths.resume_state(model), weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


def family(pid: int) -> list[int]:
    """`pid` and every process under it (torchrun starts its ranks in sessions of their own)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [pid] + [member for child in children for member in family(child)]


def test_two_processes_follow_the_one_process_curve_and_resume_after_a_kill(project_copy):
    alone, ranks = ProjectPaths.at(project_copy("alone")), ProjectPaths.at(project_copy("ranks"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each rank; a model this small trains fastest so
    try:
        distill.run(load_params(alone.root / "params.yaml", OVERRIDES), alone)
    finally:
        torch.set_num_threads(threads)

    command = [sys.executable, "-m", "cli.main", "stage", "distill", "--root", str(ranks.root),
               "-S", "distill.train.nproc_per_node=2",
               *[arg for override in OVERRIDES for arg in ("-S", override)]]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Killed, torchrun and all its ranks at once (as when the machine fails), once student_distilled has saved its
    # state after an epoch.
    run = subprocess.Popen(command, cwd=ranks.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while saved_epoch(ranks, "student_distilled") < 1 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before it could be killed; raise the epochs"
    for pid in family(run.pid):
        os.kill(pid, signal.SIGKILL)
    run.wait()
    killed_at = saved_epoch(ranks, "student_distilled")
    assert 1 <= killed_at < 3

    rerun = subprocess.run(command, cwd=ranks.root, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"student_distilled: resuming after epoch {killed_at}" in rerun.stdout
    assert not ranks.resume_state("student_distilled").exists()
    expected, measured = train_losses(alone, "student_distilled"), train_losses(ranks, "student_distilled")
    assert len(measured) == len(expected) == 3
    assert measured == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_kdflow_run_launches_a_stage_as_torchrun_ranks_when_its_params_ask(copy_flowed, flowed_project, tmp_path):
    """`kdflow run -S distill.train.nproc_per_node=2`: the flow runs distill as two torchrun ranks (processes of
    their own, not the flow's), to the one-process curve of the test run's shared cold run at the same global batch;
    the stages after it run as usual."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from cli.main import app
    from kdflow.tracking import local_uri

    root = copy_flowed(tmp_path / "project")
    result = CliRunner().invoke(app, ["run", "--serial", "--root", str(root), "--params", str(root / "params.yaml"),
                                      "-S", "distill.train.nproc_per_node=2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    # The students from hard labels and from scratch train with distill's settings, so they rerun as ranks too.
    assert "stages run: distill, student_hard_labels, student_scratch, finetune, evaluate;" in result.output

    client = MlflowClient(tracking_uri=local_uri(root))
    experiment = client.get_experiment_by_name("kdflow").experiment_id
    (distill_run,) = client.search_runs([experiment], filter_string="tags.`kdflow.stage` = 'distill'")
    assert distill_run.data.tags["kdflow.pid"] != str(os.getpid()), "distill ran in the flow's own process"
    shared = ProjectPaths.at(flowed_project[0])
    expected, measured = train_losses(shared, "student_distilled"), train_losses(ProjectPaths.at(root),
                                                                                 "student_distilled")
    assert len(measured) == len(expected) and measured == pytest.approx(expected, rel=RELATIVE_TOLERANCE)
