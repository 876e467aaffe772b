"""`kdflow.config`: the repo's params.yaml validates, and every kind of bad input is a ConfigError that names
the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdflow.config import STAGE_SECTIONS, ConfigError, Params, apply_override, load_params, validate

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text())


def error_of(raw: dict, source: str = "params.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        validate(raw, source=source)
    return str(caught.value)


def write(tmp_path: Path, raw, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_validate() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert params.seed == 42
    assert params.distill.temperature == 4.0
    assert params.distill.alpha == 1.0
    assert params.distill.student.arch == "mlp"
    assert params.train_teacher.model.arch == "cnn1d"
    assert params.data.source_classes == [0, 1, 2, 3, 4]
    assert params.data.target_classes == [5, 6, 7, 8, 9]


def test_every_stage_section_is_in_the_repo_params(raw: dict) -> None:
    assert set(STAGE_SECTIONS) <= set(raw)
    assert set(raw) == set(STAGE_SECTIONS) | {"seed"}


def test_misspelt_key_names_the_key_and_the_allowed_keys(raw: dict) -> None:
    raw["distill"]["temprature"] = 8
    message = error_of(raw)
    assert message == (
        "params.yaml: unknown key 'distill.temprature'; "
        "allowed keys here: alpha, max_param_ratio, student, temperature, train"
    )


def test_misspelt_key_names_the_file(raw: dict, tmp_path: Path) -> None:
    raw["data"]["source"]["sed"] = 3
    path = write(tmp_path, raw, "my_params.yaml")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: unknown key 'data.source.sed'; allowed keys here: kind, num_samples, seed"


def test_misspelt_top_level_key(raw: dict) -> None:
    raw["sed"] = 1
    assert error_of(raw) == (
        "params.yaml: unknown key 'sed'; "
        "allowed keys here: data, distill, evaluate, finetune, seed, soft_labels, train_teacher"
    )


def test_misspelt_key_inside_a_model_spec(raw: dict) -> None:
    raw["distill"]["student"]["hiden"] = [8]
    message = error_of(raw)
    assert "'distill.student.hiden'" in message
    assert "allowed keys here: arch, dropout, hidden" in message


def test_wrong_type_names_the_key(raw: dict) -> None:
    raw["distill"]["temperature"] = "hot"
    message = error_of(raw)
    assert message.startswith("params.yaml: 'distill.temperature' input should be a valid number")
    assert message.endswith("(got 'hot')")


def test_wrong_batch_size_names_the_key_once(raw: dict) -> None:
    raw["distill"]["train"]["batch_size"] = "half"
    message = error_of(raw)
    assert "'distill.train.batch_size'" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("distill", "alpha", 1.5, "params.yaml: 'distill.alpha' input should be less than or equal to 1 (got 1.5)"),
        ("distill", "alpha", -0.1,
         "params.yaml: 'distill.alpha' input should be greater than or equal to 0 (got -0.1)"),
        ("data", "val_fraction", 0.9, "params.yaml: 'data.val_fraction' input should be less than 0.5 (got 0.9)"),
        ("distill", "temperature", 0, "params.yaml: 'distill.temperature' input should be greater than 0 (got 0)"),
    ],
)
def test_out_of_range_names_the_key_and_the_bound(raw: dict, section, key, value, expected) -> None:
    raw[section][key] = value
    assert error_of(raw) == expected


def test_seed_out_of_range(raw: dict) -> None:
    raw["seed"] = -1
    assert error_of(raw) == "params.yaml: 'seed': seed must be in [0, 2**32) (got -1)"


def test_unknown_arch_lists_the_architectures(raw: dict) -> None:
    raw["distill"]["student"] = {"arch": "gru"}
    message = error_of(raw)
    assert message.startswith("params.yaml: 'distill.student' has an unknown arch 'gru'; allowed: ")
    for arch in ("cnn1d", "linear", "mlp"):
        assert f"'{arch}'" in message


def test_literal_field_lists_allowed_values(raw: dict) -> None:
    raw["finetune"]["strategy"] = "foo"
    assert error_of(raw) == (
        "params.yaml: 'finetune.strategy' is 'foo'; allowed values: 'full', 'linear_probe' or 'gradual_unfreeze'"
    )


def test_all_errors_are_reported_together(raw: dict) -> None:
    raw["distill"]["alpha"] = 2
    raw["finetune"]["strategy"] = "foo"
    lines = error_of(raw).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("params.yaml: 'distill.alpha'")
    assert lines[1].startswith("params.yaml: 'finetune.strategy'")


def test_overlapping_classes(raw: dict) -> None:
    raw["data"]["target_classes"] = [4, 5, 6]
    message = error_of(raw)
    assert message.startswith("params.yaml: 'data': source_classes and target_classes share [4]; "
                              "the target task needs new classes")


def test_transfer_seed_equal_to_source_seed(raw: dict) -> None:
    raw["data"]["transfer"]["seed"] = raw["data"]["source"]["seed"]
    message = error_of(raw)
    assert message.startswith("params.yaml: 'data': transfer.seed equals source.seed, "
                              "so the transfer set would repeat the source samples")


def test_transfer_seed_may_equal_source_seed_without_a_transfer_set(raw: dict) -> None:
    raw["data"]["transfer"] = {"seed": raw["data"]["source"]["seed"], "size": 0}
    assert validate(raw).data.transfer.size == 0


def test_override_parses_the_value_as_yaml(raw: dict) -> None:
    apply_override(raw, "distill.temperature=8")
    assert raw["distill"]["temperature"] == 8 and type(raw["distill"]["temperature"]) is int
    apply_override(raw, "finetune.reinit=[head, backbone.2]")
    assert raw["finetune"]["reinit"] == ["head", "backbone.2"]
    apply_override(raw, "distill.student.hidden=[]")
    assert raw["distill"]["student"]["hidden"] == []
    assert validate(raw).distill.temperature == 8.0


def test_override_creates_nested_new_keys() -> None:
    raw: dict = {}
    apply_override(raw, "a.b.c=1.5")
    assert raw == {"a": {"b": {"c": 1.5}}}
    apply_override(raw, "a.b.d=x")
    assert raw == {"a": {"b": {"c": 1.5, "d": "x"}}}


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_override({}, "distill.temperature")
    assert str(caught.value) == "override 'distill.temperature' is not of the form key.path=value"


def test_override_through_a_value() -> None:
    raw = {"seed": 1}
    with pytest.raises(ConfigError) as caught:
        apply_override(raw, "seed.x=2")
    assert str(caught.value) == "override 'seed.x=2': 'seed' holds a value, not a section"


def test_load_params_applies_overrides(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, raw)
    params = load_params(path, overrides=["distill.temperature=8", "seed=7"])
    assert params.distill.temperature == 8.0
    assert params.seed == 7
    assert yaml.safe_load(path.read_text()) == raw  # the file itself is untouched


def test_override_typo_is_an_error_too(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"unknown key 'distill\.temprature'"):
        load_params(path, overrides=["distill.temprature=8"])


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: the top level must be a mapping of sections"


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: not valid YAML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: no such file; run from the project root or pass --params"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_params(path) == Params()


def test_repeated_classes_are_an_error(raw: dict) -> None:
    raw["data"]["source_classes"] = [0, 0, 1]
    with pytest.raises(ConfigError, match="source_classes"):
        validate(raw)


def test_data_sections_without_kind_are_the_generator(raw: dict) -> None:
    del raw["data"]["source"]["kind"], raw["data"]["transfer"]["kind"]
    assert validate(raw).data == load_params(REPO_PARAMS).data


def test_file_source_target_and_transfer_validate(raw: dict) -> None:
    raw["data"].update({
        "source": {"kind": "file", "path": "data/raw/digits.csv", "feature_prefix": "pixel_", "label": "digit",
                   "reshape": [1, 8, 8]},
        "transfer": {"kind": "file", "path": "data/raw/unlabelled.parquet"},
        "target": {"kind": "file", "path": "data/raw/target.npz", "classes": ["cat", "dog", 3]},
        "source_classes": ["zero", 1], "target_classes": ["cat", "dog"],
    })
    data = validate(raw).data
    assert data.source.reshape == [1, 8, 8] and data.transfer.label == "label"
    assert data.target.classes == ["cat", "dog", 3] and data.source_classes == ["zero", 1]


@pytest.mark.parametrize(("section", "change", "expected"), [
    ("source", {"kind": "csv"}, "params.yaml: 'data.source' has an unknown kind 'csv'; allowed: 'mnist1d', 'file'"),
    ("source", {"kind": "file", "path": "a.csv", "lable": "y"},
     "params.yaml: unknown key 'data.source.lable'; allowed keys here: classes, feature_prefix, features, kind, "
     "label, path, reshape, sample_id, test_fraction"),
    ("transfer", {"kind": "file"}, "params.yaml: 'data.transfer.path' field required (got {'kind': 'file'})"),
    ("source", {"kind": "file", "path": "a.csv", "features": ["a"], "feature_prefix": "f"},
     "params.yaml: 'data.source': give features or feature_prefix, not both"),
])
def test_bad_file_sections(raw: dict, section: str, change: dict, expected: str) -> None:
    raw["data"][section] = change
    assert error_of(raw) == expected


def test_generator_classes_must_be_digits(raw: dict) -> None:
    raw["data"]["source_classes"] = [0, "one"]
    assert error_of(raw) == "params.yaml: 'data': source_classes must be MNIST-1D digits 0-9 (got [0, 'one'])"


def test_custom_arch_needs_an_import_path(raw: dict) -> None:
    raw["distill"]["student"] = {"arch": "custom", "factory": "my_pkg.nets.make_student"}
    assert error_of(raw) == (
        "params.yaml: 'distill.student.factory': must be an import path 'module.submodule:function', e.g. "
        "'my_pkg.nets:make_student' (got 'my_pkg.nets.make_student')")
