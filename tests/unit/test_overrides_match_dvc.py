"""`kdflow run -S` reads an override exactly as `dvc exp run -S` does: the params kdflow runs with are the params
DVC writes to params.yaml for the same overrides (`dvc.utils.hydra.apply_overrides`, DVC's own code), read back
as a stage run by `dvc exp run` reads them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dvc.exceptions import InvalidArgumentError
from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

from kdflow.config import ConfigError, apply_overrides, load_params, read_yaml

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

ACCEPTED = [
    ["finetune.reinit=[head,backbone.2]"],
    ["train_teacher.model.channels=[8, 8]", "+distill.student.options.widths=[[1, 2], []]"],
    ["distill.student.options.width=yes"],
    ["distill.student.options.width=on", "distill.student.options.scale=NO"],
    ["train_teacher.train.lr=1e-3", "distill.temperature=.5", "distill.train.lr=1"],
    ["data.transfer.size=1_000", "data.source.num_samples=1000"],
    ["distill.student.options.width=null"],
    ["distill.student.options.width='8'", "distill.student.options.scale=\"true\""],
    ["distill.student.options.width='it\\'s'", "finetune.strategy=linear_probe"],
    ["+distill.student.options.new.key=1"],
    ["+distill.student.options.tags={a: 1, b: [x, 'y z']}"],
    ["+finetune.train.lr_scaling=linear", "++finetune.train.momentum=0.9", "++seed=7"],
    ["~finetune.reinit", "~distill.student.options.scale=2"],
    ["distill.temperature=${distill.alpha}"],
    ["distill.student.options.width=int(3.7)"],
]

REJECTED = [
    "distill.temprature=8",  # a typo
    "finetune.train.lr_scaling=linear",  # a key the file does not set: + adds it
    "seed=[1",
    "seed=1,2",
    "+seed=3",
    "~distill.temprature",
    "~seed=3",
    "seed.x=2",
    "data.source_classes.7=1",
]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The repository's params with a custom student, whose free-form `options` take any new key."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["distill"]["student"] = {"arch": "custom", "factory": "my_pkg.nets:make_student",
                                 "options": {"width": 8, "scale": 2}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def dvc_writes(base: Path, overrides: list[str]) -> Path:
    """A copy of `base` as `dvc exp run -S ...` leaves it."""
    path = base.with_name("dvc_params.yaml")
    shutil.copy(base, path)
    dvc_apply_overrides(str(path), overrides)
    return path


@pytest.mark.parametrize("overrides", ACCEPTED, ids=" ".join)
def test_kdflow_applies_overrides_as_dvc_writes_them(base: Path, overrides: list[str]) -> None:
    written = dvc_writes(base, overrides)
    # Read back through kdflow's reader, which is how a stage under `dvc exp run` sees them (and DVC's own way:
    # ruamel writes `yes` unquoted, a string in YAML 1.2 and a boolean in PyYAML's YAML 1.1).
    assert apply_overrides(read_yaml(base), overrides) == read_yaml(written)
    assert load_params(base, overrides) == load_params(written)


@pytest.mark.parametrize("override", REJECTED)
def test_kdflow_rejects_what_dvc_rejects(base: Path, override: str) -> None:
    with pytest.raises(InvalidArgumentError):
        dvc_writes(base, [override])
    with pytest.raises(ConfigError) as caught:
        load_params(base, [override])
    assert len(str(caught.value).splitlines()) == 1


def test_a_key_dvc_adds_but_the_schema_refuses_fails_both_runners_alike(base: Path) -> None:
    written = dvc_writes(base, ["+distill.temprature=8"])
    with pytest.raises(ConfigError) as by_kdflow:
        load_params(base, ["+distill.temprature=8"])
    with pytest.raises(ConfigError) as by_dvc_stage:
        load_params(written)
    expected = "unknown key 'distill.temprature'; allowed keys here: alpha, max_param_ratio, student, temperature, train"
    assert str(by_kdflow.value) == f"{base}: {expected}"
    assert str(by_dvc_stage.value) == f"{written}: {expected}"
