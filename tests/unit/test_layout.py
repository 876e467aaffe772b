"""The typed contracts strings used to stand for: the model catalogue."""

from __future__ import annotations

import pytest

from kdflow.layout import CATALOGUE, MODELS, ProjectPaths, models_of


def test_the_catalogue_places_each_checkpoint_by_its_role_and_measures_each_model_on_its_task(tmp_path):
    paths = ProjectPaths.at(tmp_path)
    assert {name: paths.checkpoint(name).relative_to(tmp_path).as_posix() for name in MODELS} == {
        "teacher": "artifacts/teacher/teacher.pt",
        "student_distilled": "artifacts/students/student_distilled.pt",
        "student_hard_labels": "artifacts/students/student_hard_labels.pt",
        "student_scratch": "artifacts/students/student_scratch.pt",
        "target_finetuned": "artifacts/target/target_finetuned.pt",
        "target_scratch": "artifacts/target/target_scratch.pt",
    }
    # Each role's technique model first, then its baselines: the registry's candidates in its tie-break order.
    assert [models_of(role) for role in ("teacher", "student", "target")] == [
        ("teacher",), ("student_distilled", "student_hard_labels", "student_scratch"),
        ("target_finetuned", "target_scratch")]
    assert [m.name for m in CATALOGUE.values() if m.task == "target"] == ["target_finetuned", "target_scratch"]
    with pytest.raises(KeyError):
        paths.checkpoint("student_tiny")  # a name no stage trains has no place
