"""The params sections a stage logs to MLflow are the ones dvc.yaml (and so Prefect's cache key) tracks for it."""

from __future__ import annotations

import yaml

from kdflow.stage import STAGE_PARAMS
from tests.conftest import REPO_ROOT


def test_each_stage_logs_the_params_sections_dvc_tracks_for_it() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGE_PARAMS)
    for name, stage in stages.items():
        assert set(stage["params"]) - {"seed"} == set(STAGE_PARAMS[name]), name
