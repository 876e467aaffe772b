"""The typed contracts strings used to stand for: the model catalogue and the dataset card."""

from __future__ import annotations

import json

import pytest

from kdflow.artifacts import ArtifactError
from kdflow.datasets import DatasetCard, read_dataset_card
from kdflow.layout import CATALOGUE, MODELS, SPLITS, ProjectPaths, models_of


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


def card(**changes) -> dict:
    written = {"input_shape": [1, 40], "source_classes": ["0", "1"], "target_classes": ["5", "6"],
               "splits": {name: {"md5": f"{i:032x}", "rows": 10 + i, "labelled": name != "transfer",
                                 "class_counts": {}} for i, name in enumerate(SPLITS)}}
    return {**written, **changes}


def test_the_card_reads_into_its_type_and_writes_back_the_same_json(tmp_path):
    path = tmp_path / "dataset_card.json"
    path.write_text(json.dumps(card()))
    read = read_dataset_card(path)
    assert read.input_shape == (1, 40) and read.target_classes == ["5", "6"]
    assert read.splits["target_test"].md5 == f"{SPLITS.index('target_test'):032x}"
    assert read.as_json() == card()  # no raw_files_md5 key for the default data
    own = card(raw_files_md5={"data/raw/digits.csv": "0" * 32})
    assert DatasetCard.model_validate(own).as_json() == own
    assert DatasetCard.model_validate(read.as_json()) == read


@pytest.mark.parametrize("changes", [
    {"input_shape": [1, 0]}, {"input_shape": [1, 40.0]}, {"input_shape": "forty"}, {"source_classes": [0, 1]},
    {"splits": {name: {"md5": "x"} for name in SPLITS[:-1]}},  # target_test missing
    {"splits": {name: {"rows": 3} for name in SPLITS}},  # no md5
])
def test_a_malformed_card_is_one_error_naming_the_file(tmp_path, changes):
    path = tmp_path / "dataset_card.json"
    path.write_text(json.dumps(card(**changes)))
    with pytest.raises(ArtifactError) as caught:
        read_dataset_card(path)
    assert str(caught.value) == (f"{path}: not a dataset card (input_shape, source_classes, target_classes and every "
                                 "split's md5 are missing or malformed)")
