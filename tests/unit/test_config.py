"""`kdflow.config`: the repo's params.yaml validates, and every kind of bad input is a ConfigError that names
the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdflow.config import (STAGE_SECTIONS, ConfigError, Params, apply_overrides, dump_params, format_override,
                           load_params, read_yaml, validate)

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


def test_override_values_are_read_in_hydras_grammar_as_dvc_reads_them(raw: dict) -> None:
    raw = apply_overrides(raw, ["distill.temperature=8", "finetune.reinit=[head, backbone.2]",
                                "distill.student.hidden=[]", "train_teacher.train.lr=1e-3", "finetune.strategy=yes"])
    assert raw["distill"]["temperature"] == 8 and type(raw["distill"]["temperature"]) is int
    assert raw["finetune"]["reinit"] == ["head", "backbone.2"]
    assert raw["distill"]["student"]["hidden"] == []
    assert raw["train_teacher"]["train"]["lr"] == 0.001  # YAML 1.1 would have read the string '1e-3'
    assert raw["finetune"]["strategy"] == "yes"  # a string, not YAML 1.1's True


def test_override_adds_changes_and_deletes_keys_as_hydra_does(raw: dict) -> None:
    raw = apply_overrides(raw, ["+finetune.train.lr_scaling=linear", "++finetune.train.momentum=0.5",
                                "++seed=3", "~finetune.reinit"])
    assert raw["finetune"]["train"]["lr_scaling"] == "linear" and raw["finetune"]["train"]["momentum"] == 0.5
    assert raw["seed"] == 3 and "reinit" not in raw["finetune"]


def test_no_overrides_leave_the_params_as_they_are(raw: dict) -> None:
    assert apply_overrides(raw, []) is raw


@pytest.mark.parametrize(("override", "expected"), [
    ("seed=[1", "override 'seed=[1' does not parse: '[' is never closed; -S takes KEY=VALUE in Hydra's override "
                "grammar, as dvc exp run -S does (quote strings with special characters)"),
    ("distill.temperature", "override 'distill.temperature' does not parse: there is no '='; -S takes KEY=VALUE in "
                            "Hydra's override grammar, as dvc exp run -S does (quote strings with special characters)"),
    ("seed='7", "override 'seed='7' does not parse: a ' quote is never closed; -S takes KEY=VALUE in Hydra's "
                "override grammar, as dvc exp run -S does (quote strings with special characters)"),
    ("distill.student.hidden=[8]]", "override 'distill.student.hidden=[8]]' does not parse: ']' closes nothing; -S "
     "takes KEY=VALUE in Hydra's override grammar, as dvc exp run -S does (quote strings with special characters)"),
    ("dis till=1", "override 'dis till=1' does not parse: unexpected ' ' at character 4; -S takes KEY=VALUE in "
                   "Hydra's override grammar, as dvc exp run -S does (quote strings with special characters)"),
    ("=3", "override '=3' names no key; -S takes KEY=VALUE, e.g. distill.temperature=8"),
    ("seed=1,2", "override 'seed=1,2' gives several values; -S sets one: write a list in brackets ('seed=[...]'), "
                 "or vary the key with kdflow sweep --grid"),
    ("distill@pkg.alpha=1", "override 'distill@pkg.alpha=1': '@' names a Hydra config group package; params files "
                            "have none, write KEY=VALUE"),
    ("distill.temprature=8", "params.yaml: unknown key 'distill.temprature'; allowed keys here: alpha, "
                             "max_param_ratio, student, temperature, train"),
    ("distill.trian.lr=1", "params.yaml: unknown key 'distill.trian'; allowed keys here: alpha, max_param_ratio, "
                           "student, temperature, train"),
    ("distill.student={width: 8}", "params.yaml: unknown key 'distill.student.width'; allowed keys here: arch, "
                                   "dropout, hidden"),
    ("finetune.train.lr_scaling=linear",
     "override 'finetune.train.lr_scaling=linear': params.yaml has no key 'finetune.train.lr_scaling', so -S cannot "
     "change it (nor can dvc exp run -S); add it with +finetune.train.lr_scaling=linear"),
    ("+seed=3", "override '+seed=3': params.yaml already sets 'seed'; drop the + to change it (seed=3), or write ++ "
                "to set it either way (++seed=3)"),
    ("~distill.temprature", "override '~distill.temprature': params.yaml has no 'distill.temprature' to delete"),
    ("~seed=3", "override '~seed=3': 'seed' is 42, not 3; write ~seed to delete it whatever its value"),
    ("seed.x=2", "override 'seed.x=2': 'seed' holds a value, not a section"),
    ("data.source_classes.7=1", "override 'data.source_classes.7=1': list index out of range"),
])
def test_bad_override_is_one_line_naming_it_and_the_fix(raw: dict, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(raw, [override])
    assert str(caught.value) == expected


def test_an_interpolation_that_does_not_resolve(raw: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(raw, ["distill.temperature=${distill.nope}"])
    assert str(caught.value) == ("params.yaml: Interpolation key 'distill.nope' not found "
                                 "(with overrides distill.temperature=${distill.nope})")


@pytest.mark.parametrize("value", [8, 0.25, 1e-05, float("inf"), True, None, "adam", "backbone.2", "yes", "True",
                                   "1e-3", "a b", "it's", "back\\slash", "end\\", "", [16, 8], [[32], [64, 64]],
                                   {"width": 8, "names": ["a", "b c"]}])
def test_format_override_reads_back_as_the_same_value(raw: dict, value) -> None:
    raw["distill"]["student"] = {"arch": "custom", "factory": "m:f", "options": {"x": 0}}
    result = apply_overrides(raw, [format_override("distill.student.options.x", value)])
    assert result["distill"]["student"]["options"]["x"] == value
    assert type(result["distill"]["student"]["options"]["x"]) is type(value)


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


@pytest.mark.parametrize(("text", "expected"), [
    # libyaml's words: ruamel parses with its C parser (ruamel.yaml.clib), as DVC's reader then does too
    ("seed: [1, 2\n", "not valid YAML at line 2, column 1: did not find expected ',' or ']'"),
    ("seed: 1\nseed: 2\n", 'not valid YAML at line 2, column 1: found duplicate key "seed" with value "2" '
                           '(original value: "1")'),
])
def test_invalid_yaml_is_one_line_with_its_place(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: {expected}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: no such file; run from the project root or pass --params"


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_is_an_error_not_the_defaults(tmp_path: Path, text: str) -> None:
    """An empty params.yaml would otherwise run the whole default pipeline over the project's outputs."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == (f"{path}: the file is empty; a run needs the sections seed, data, train_teacher, "
                                 "soft_labels, distill, finetune, evaluate")


def test_missing_sections_are_named_with_the_other_errors(tmp_path: Path, raw: dict) -> None:
    del raw["seed"], raw["evaluate"]
    raw["distill"]["alpha"] = 2
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value).splitlines() == [
        f"{path}: missing sections 'seed', 'evaluate'; a run needs every one of seed, data, train_teacher, "
        "soft_labels, distill, finetune, evaluate",
        f"{path}: 'distill.alpha' input should be less than or equal to 1 (got 2)",
    ]


def test_deleting_a_section_by_override_is_caught_too(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_params(path, ["~evaluate"])
    assert str(caught.value) == (f"{path}: missing section 'evaluate'; a run needs every one of seed, data, "
                                 "train_teacher, soft_labels, distill, finetune, evaluate")


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train_teacher.train", "epochs", True, "'train_teacher.train.epochs' input should be a valid integer (got True)"),
    ("train_teacher.train", "epochs", 2.0, "'train_teacher.train.epochs' input should be a valid integer (got 2.0)"),
    ("train_teacher.train", "epochs", "3", "'train_teacher.train.epochs' input should be a valid integer (got '3')"),
    ("distill.train", "lr", "1e-3", "'distill.train.lr' input should be a valid number (got '1e-3')"),
    ("distill", "temperature", False, "'distill.temperature' input should be a valid number (got False)"),
    ("distill.train", "bf16", "yes", "'distill.train.bf16' input should be a valid boolean (got 'yes')"),
    ("distill.train", "bf16", 1, "'distill.train.bf16' input should be a valid boolean (got 1)"),
    ("finetune", "reinit", [0], "'finetune.reinit[0]' input should be a valid string (got 0)"),
    ("distill.student", "hidden", [True], "'distill.student.hidden[0]' input should be a valid integer (got True)"),
    ("distill.train", "batch_size", True,
     "'distill.train.batch_size' input should be a valid integer or input should be 'full' (got True)"),
])
def test_types_are_strict(raw: dict, section: str, key: str, value, expected: str) -> None:
    """A boolean is not a number and a string is not one either: `epochs: true` used to train one epoch."""
    node = raw
    for part in section.split("."):
        node = node[part]
    node[key] = value
    assert error_of(raw) == f"params.yaml: {expected}"


def test_a_float_still_takes_an_int(raw: dict) -> None:
    raw["distill"]["train"]["lr"] = 1
    raw["distill"]["temperature"] = 8
    params = validate(raw)
    assert params.distill.train.lr == 1.0 and type(params.distill.train.lr) is float
    assert params.distill.temperature == 8.0 and type(params.distill.temperature) is float


def test_the_file_is_read_as_yaml_1_2_as_dvc_reads_it(tmp_path: Path) -> None:
    """`lr: 3e-3` is a number for DVC (ruamel, YAML 1.2), so it is one for kdflow too; `yes` is a string."""
    path = tmp_path / "params.yaml"
    path.write_text(REPO_PARAMS.read_text().replace("    lr: 0.003", "    lr: 3e-3"))
    assert load_params(path).train_teacher.train.lr == 0.003
    path.write_text(path.read_text().replace("    lr: 3e-3", "    lr: 3e-3\n    bf16: yes"))
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: 'train_teacher.train.bf16' input should be a valid boolean (got 'yes')"


def test_dump_params_reads_back_as_the_same_params(tmp_path: Path, raw: dict) -> None:
    raw["data"].update({"source": {"kind": "file", "path": "data/raw/a.csv", "features": ["1e3", "yes", "x"]},
                        "source_classes": ["no", "on"], "target_classes": ["1e-3", 7]})
    params = validate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(dump_params(params))
    assert load_params(path) == params


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
    ("source", {"kind": "csv"}, "params.yaml: 'data.source' has an unknown kind 'csv'; allowed: 'mnist1d', 'file', 'images'"),
    ("source", {"kind": "file", "path": "a.csv", "lable": "y"},
     "params.yaml: unknown key 'data.source.lable'; allowed keys here: classes, feature_prefix, features, "
     "image_column, kind, label, path, reshape, sample_id, test_fraction, text_column"),
    ("transfer", {"kind": "file"}, "params.yaml: 'data.transfer.path' field required (got {'kind': 'file'})"),
    ("source", {"kind": "file", "path": "a.csv", "features": ["a"], "feature_prefix": "f"},
     "params.yaml: 'data.source': give one of features, feature_prefix, image_column, text_column, not features "
     "and feature_prefix"),
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
