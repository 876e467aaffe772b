"""docs/image-model.md's worked example: its params change validates and prepares a folder laid out as it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdflow.config import validate
from tasks.prepare import build_splits

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = REPO_ROOT / "docs/image-model.md"


def example_params() -> tuple[dict, list[str]]:
    """The repository's params with the page's first YAML block applied, as the page says; and the page's blocks."""
    blocks = re.findall(r"```yaml\n(.+?)\n```", PAGE.read_text(), re.S)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params.update(yaml.safe_load(blocks[0]))
    return params, blocks


def test_the_image_example_prepares_a_folder_of_four_classes(tmp_path, image_folder):
    params, blocks = example_params()
    spec = validate(params)
    assert spec.train_teacher.model.arch == spec.distill.student.arch == "timm"
    assert validate({**params, "train_teacher": yaml.safe_load(blocks[1])["train_teacher"]}).train_teacher.weights

    image_folder(tmp_path / "data/raw/images", ["cat", "dog", "fox", "owl"], 40, size=16)
    splits = build_splits(spec, tmp_path)
    assert splits["source_train"][1].shape[1:] == (3, 64, 64)
    # per target class: 8 test images, then the example's 20 labelled and 10 for validation
    np.testing.assert_array_equal(np.bincount(splits["target_train"][2]), [20, 20])
    np.testing.assert_array_equal(np.bincount(splits["target_val"][2]), [10, 10])
    # the transfer set: the images no labelled split holds, 2 of fox's and 2 of owl's (cat and dog are all split)
    assert len(splits["transfer"][0]) == 160 - 80 - 2 * (8 + 20 + 10)


@pytest.mark.zoo
def test_the_image_examples_student_is_the_share_of_its_teacher_the_page_says(zoo_or_skip):
    zoo_or_skip("timm")
    from models import build_model

    spec = validate(example_params()[0])
    teacher, student = (sum(p.numel() for p in build_model(model, (3, 64, 64), 2).parameters())
                        for model in (spec.train_teacher.model, spec.distill.student))
    share = re.search(r"max_param_ratio: ([\d.]+) .*\(this student: (\d+)%\)", PAGE.read_text())
    assert student / teacher <= float(share[1]) and round(100 * student / teacher) == int(share[2])
