"""`kdflow run --force` through click, and the stage retry policy, on the tiny config with the real flow."""

from __future__ import annotations

import errno
import re

import pytest
from click.testing import CliRunner

from kdflow import graph
from kdflow.config import ConfigError

pytestmark = pytest.mark.slow

STAGE_ORDER = list(graph.STAGES)


@pytest.fixture(scope="module")
def project(copy_flowed, tmp_path_factory):
    """A copy of the test run's cold flow run of the tiny config, so every stage is cached."""
    root = copy_flowed(tmp_path_factory.mktemp("force") / "project")
    return root, root / "params.yaml"


def kdflow_run(root, params_path, *options) -> tuple[list[str], list[str]]:
    """`kdflow run` through click's parser; the stages it ran and those DVC's record had, as its last lines say."""
    from cli.main import app

    # --serial: which stages rerun is the subject, not where they run (no worker processes to start)
    result = CliRunner().invoke(app, ["run", "--params", str(params_path), "--root", str(root), "--serial", *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    line = re.search(r"^stages run: (.*); from DVC's record: (.*)$", result.output, re.MULTILINE)
    return [s for s in line.group(1).split(", ") if s != "none"], [s for s in line.group(2).split(", ") if s != "none"]


def test_run_without_force_takes_every_stage_from_cache(project):
    assert kdflow_run(*project) == ([], STAGE_ORDER)


def test_force_with_stage_names_reruns_those_and_takes_upstream_from_cache(project):
    ran, cached = kdflow_run(*project, "--force", "distill", "--force", "finetune")
    assert ran[:2] == ["distill", "finetune"]
    assert cached[:3] == ["prepare", "train_teacher", "soft_labels"]
    # evaluate reruns only if the retrained checkpoints differ in their bytes (cache keys hash them).
    assert ran in (["distill", "finetune", "evaluate"], ["distill", "finetune"])
    assert sorted(ran + cached) == sorted(STAGE_ORDER)


def test_force_without_a_value_reruns_every_stage(project):
    # A bare --force followed by another option takes the flag value "all" instead of swallowing "-S".
    assert kdflow_run(*project, "--force", "-S", "seed=42") == (STAGE_ORDER, [])


def test_force_of_an_unknown_stage_is_an_error_naming_it(project):
    from cli.main import app

    root, params_path = project
    result = CliRunner().invoke(app, ["run", "--params", str(params_path), "--root", str(root), "--force", "distil"])
    assert result.exit_code == 2  # refused before anything starts
    assert "Invalid value for '--force': 'distil' is not one of 'all', 'prepare', 'train_teacher'" in result.output


def failing(stage_fn, errors: list[BaseException]):
    """The stage function, raising `errors` one per call before it runs for real; counts its calls. The flows below
    run `serial`: the patched function lives in this process, not in worker processes."""

    def run(params, paths, parent_run_id):
        run.calls += 1
        if errors:
            raise errors.pop(0)
        return stage_fn(params, paths, parent_run_id)

    run.calls = 0
    return run


def task_run_counts(flow_run_id) -> dict[str, int]:
    """How many times Prefect ran each task of the flow run, as the server recorded it."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return {run.name: run.run_count for run in runs}


def test_a_transient_io_error_is_retried_and_the_flow_completes(project, monkeypatch, tmp_path):
    """The retry runs the stage again: no result record is written, nor read back in its place, even where
    Prefect is told to persist results (a record names its own serializer)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    from flows import pipeline as pipeline_module

    root, params_path = project
    stage = failing(pipeline_module.STAGES["evaluate"], [OSError(errno.EIO, "Input/output error", "summary.json")])
    monkeypatch.setitem(pipeline_module.STAGES, "evaluate", stage)
    storage = tmp_path / "prefect-results"
    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: storage}):
        state = pipeline_module.pipeline(params_path=str(params_path), root=str(root), force=["evaluate"],
                                         serial=True, return_state=True)
    assert not storage.exists() or not any(storage.iterdir())
    assert state.is_completed()
    assert state.result()["ran"] == ["evaluate"]
    assert stage.calls == 2
    assert task_run_counts(state.state_details.flow_run_id)["evaluate"] == 2


def test_a_lasting_io_error_fails_the_flow_naming_the_stage_after_the_retries(project, monkeypatch):
    from flows import pipeline as pipeline_module
    from flows.retries import STAGE_RETRIES

    root, params_path = project
    errors = [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer") for _ in range(STAGE_RETRIES + 1)]
    stage = failing(pipeline_module.STAGES["evaluate"], errors)
    monkeypatch.setitem(pipeline_module.STAGES, "evaluate", stage)
    with pytest.raises(pipeline_module.StageFailed, match=r"stage 'evaluate' failed: ConnectionResetError: .*reset"):
        pipeline_module.pipeline(params_path=str(params_path), root=str(root), force=["evaluate"], serial=True)
    assert stage.calls == STAGE_RETRIES + 1


@pytest.mark.parametrize("error", [ConfigError("params.yaml: bad key"), ValueError("bad data"),
                                   FileNotFoundError(errno.ENOENT, "No such file", "teacher.pt")])
def test_a_deterministic_error_fails_at_once(project, monkeypatch, error):
    from flows import pipeline as pipeline_module

    root, params_path = project
    stage = failing(pipeline_module.STAGES["distill"], [error])
    monkeypatch.setitem(pipeline_module.STAGES, "distill", stage)
    with pytest.raises(pipeline_module.StageFailed, match=f"stage 'distill' failed: {type(error).__name__}"):
        pipeline_module.pipeline(params_path=str(params_path), root=str(root), force=["distill"], serial=True)
    assert stage.calls == 1


def test_a_finished_stage_is_recorded_when_deciding_the_next_one_fails(copy_flowed, tmp_path, monkeypatch):
    """In worker processes a finished stage is recorded once the stages it made ready have started; when deciding
    one of them fails (DVC's lock held by another process), it is recorded all the same: nothing done is lost."""
    import yaml

    from flows import pipeline as pipeline_module
    from kdflow import record

    root = copy_flowed(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"]["temperature"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    decide = record.begin_stage

    def busy_at_finetune(project, name, force=False):
        if name == "finetune":
            raise record.RecordError(f"{project}: dvc.lock is being written by another run")
        return decide(project, name, force)

    monkeypatch.setattr(record, "begin_stage", busy_at_finetune)
    with pytest.raises(record.RecordError, match="being written by another run"):
        pipeline_module.pipeline(params_path=str(root / "params.yaml"), root=str(root), workers=2)
    assert record.stale_stages(root) == ["finetune", "evaluate"]  # distill ran and is in dvc.lock
