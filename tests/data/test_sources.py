"""A user's own data file through `prepare`'s `build_splits`: CSV, Parquet and .npz; labels by name; stratified
splits; and every kind of bad file stopped with a message naming the file, the column, the rows and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdflow.config import validate
from kdflow.layout import ProjectPaths
from kdflow.sources import DataError
from tasks import prepare
from tasks.prepare import build_splits

RAW = "data/raw/digits.csv"
SOURCE = {"kind": "file", "path": RAW, "feature_prefix": "pixel_", "label": "digit", "reshape": [1, 8, 8]}


def params(seed: int = 42, **data):
    return validate({"seed": seed, "data": {"source": SOURCE, "transfer": {"kind": "mnist1d", "size": 0},
                                            "target_labels_per_class": 5, "target_val_per_class": 5, **data}})


def write(root: Path, frame: pd.DataFrame, name: str = RAW) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture
def root(tmp_path: Path, image_frame) -> Path:
    write(tmp_path, image_frame())
    return tmp_path


def test_csv_source_gives_stratified_image_shaped_splits(root: Path, image_frame) -> None:
    splits = build_splits(params(), root)
    frame = image_frame()
    # 40 rows per digit: test 20 % = 8, validation 10 % = 4, train 28; target: 8 test, 5 train, 5 validation.
    for name, per_class in {"source_train": 28, "source_val": 4, "source_test": 8,
                            "target_train": 5, "target_val": 5, "target_test": 8}.items():
        sample_ids, features, labels = splits[name]
        assert features.shape == (5 * per_class, 1, 8, 8) and features.dtype == np.float32, name
        np.testing.assert_array_equal(np.bincount(labels, minlength=5), [per_class] * 5, err_msg=name)
        rows = np.array([int(s.rsplit("-", 1)[1]) for s in sample_ids])
        assert all(s.startswith("digits-") for s in sample_ids)
        # Labels are indices into the task's classes: source 0-4 keep their digit, target 5-9 become 0-4.
        offset = 5 if name.startswith("target") else 0
        np.testing.assert_array_equal(frame["digit"].to_numpy()[rows], labels + offset)
        np.testing.assert_array_equal(features.reshape(len(rows), 64),
                                      frame.iloc[rows, :64].to_numpy(np.float32))
    every_id = np.concatenate([ids for ids, _, _ in splits.values()])
    assert len(every_id) == len(set(every_id))
    assert len(splits["transfer"][0]) == 0 and splits["transfer"][1].shape == (0, 1, 8, 8)


def test_same_seed_same_splits_another_seed_others(root: Path) -> None:
    first, again, other = build_splits(params(), root), build_splits(params(), root), build_splits(params(7), root)
    for name in first:
        np.testing.assert_array_equal(first[name][0], again[name][0])
    assert not np.array_equal(first["source_val"][0], other["source_val"][0])


def test_string_labels_map_to_indices_and_the_card_keeps_the_map(tmp_path: Path, image_frame) -> None:
    frame = image_frame(rows_per_class=20, classes=4)
    frame["digit"] = np.array(["cat", "dog", "owl", "yak"])[frame["digit"]]
    write(tmp_path, frame, "data/raw/animals.parquet")
    spec = params(source={**SOURCE, "path": "data/raw/animals.parquet", "reshape": None},
                  source_classes=["owl", "cat"], target_classes=["yak", "dog"], target_labels_per_class=3,
                  target_val_per_class=3)
    paths = ProjectPaths.at(tmp_path)
    prepare.run(spec, paths)
    card = json.loads(paths.dataset_card.read_text())
    assert card["source_classes"] == ["owl", "cat"] and card["target_classes"] == ["yak", "dog"]
    assert card["input_shape"] == [64]
    assert card["raw_files_md5"] == {"data/raw/animals.parquet": prepare.file_digest(tmp_path / "data/raw/animals.parquet")}
    stored = pd.read_parquet(paths.split("source_train"))
    names = np.array(["owl", "cat"])[stored["label"]]
    by_id = frame.set_index(pd.Series([f"animals-{i:06d}" for i in range(len(frame))]))
    np.testing.assert_array_equal(names, by_id.loc[stored["sample_id"], "digit"].to_numpy())
    assert card["splits"]["source_train"]["class_counts"] == {"owl": 14, "cat": 14}  # 20 rows: 4 test, 2 validation


def test_class_subsets_leave_other_declared_classes_out(root: Path, image_frame) -> None:
    splits = build_splits(params(source={**SOURCE, "classes": list(range(10))}, source_classes=[0, 1],
                                 target_classes=[7, 9]), root)
    rows = np.concatenate([[int(s.rsplit("-", 1)[1]) for s in ids] for ids, _, _ in splits.values()]).astype(int)
    assert set(image_frame()["digit"].to_numpy()[rows]) == {0, 1, 7, 9}


def test_target_and_transfer_from_their_own_files(root: Path, image_frame) -> None:
    target = image_frame(rows_per_class=30, classes=3, seed=5)
    target["digit"] = np.array(["a", "b", "c"])[target["digit"]]
    target.insert(0, "id", [f"t{i}" for i in range(len(target))])
    write(root, target, "data/raw/target.csv")
    unlabelled = image_frame(rows_per_class=10, seed=9).drop(columns="digit")
    write(root, unlabelled, "data/raw/unlabelled.parquet")
    splits = build_splits(params(
        target={"kind": "file", "path": "data/raw/target.csv", "feature_prefix": "pixel_", "label": "digit",
                "sample_id": "id", "test_fraction": 0.1},
        target_classes=["a", "b", "c"], source_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        transfer={"kind": "file", "path": "data/raw/unlabelled.parquet"}), root)
    assert splits["target_test"][1].shape == (9, 1, 8, 8)  # 10 % of 30 per class
    assert all(s.startswith("t") for s in splits["target_train"][0])
    assert splits["transfer"][2] is None and splits["transfer"][1].shape == (100, 1, 8, 8)
    np.testing.assert_array_equal(splits["transfer"][1].reshape(100, 64), unlabelled.to_numpy(np.float32))


def test_transfer_from_the_source_file_drops_labels_and_held_out_rows(root: Path) -> None:
    splits = build_splits(params(transfer={"kind": "file", "path": RAW, "feature_prefix": "pixel_",
                                           "label": "digit"}), root)
    labelled = np.concatenate([ids for name, (ids, _, _) in splits.items() if name != "transfer"])
    assert splits["transfer"][2] is None
    assert not set(splits["transfer"][0]) & set(labelled)
    assert len(splits["transfer"][0]) == 400 - len(labelled)


def test_npz_with_x_and_y_keeps_its_sample_shape(tmp_path: Path, image_frame) -> None:
    frame = image_frame(rows_per_class=30, classes=4)
    path = tmp_path / "data/raw/images.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, x=frame.iloc[:, :64].to_numpy().reshape(-1, 8, 8), y=frame["digit"].to_numpy())
    splits = build_splits(params(source={"kind": "file", "path": "data/raw/images.npz"}, source_classes=[0, 1],
                                 target_classes=[2, 3]), tmp_path)
    assert splits["source_train"][1].shape[1:] == (8, 8)


# --- bad input: each names the file, the column, how many rows, and the fix -----------------------------------


def error_of(root: Path, **data) -> str:
    with pytest.raises(DataError) as caught:
        build_splits(params(**data), root)
    return str(caught.value)


def test_misspelt_label_column(root: Path) -> None:
    assert error_of(root, source={**SOURCE, "label": "digt"}) == (
        f"{RAW}: no column 'digt' (data.source.label); did you mean 'digit'? its columns are: pixel_0, pixel_1, "
        "pixel_2, pixel_3, pixel_4, pixel_5, pixel_6, pixel_7, pixel_8, pixel_9, pixel_10, pixel_11, ... (65 in all); "
        "fix: correct data.source.label or rename the column")


def test_missing_feature_column(root: Path) -> None:
    message = error_of(root, source={**SOURCE, "feature_prefix": None, "features": ["pixel_0", "pixel_64"],
                                     "reshape": None})
    assert message.startswith(f"{RAW}: no column 'pixel_64' (data.source.features); did you mean 'pixel_6")
    assert message.endswith("fix: correct data.source.features or rename the column")


def test_feature_prefix_matching_nothing(root: Path) -> None:
    assert error_of(root, source={**SOURCE, "feature_prefix": "px"}).startswith(
        f"{RAW}: no column starts with 'px' (data.source.feature_prefix); its columns are: pixel_0,")


def test_nan_and_infinity(root: Path, image_frame) -> None:
    frame = image_frame()
    frame.loc[[3, 17], "pixel_5"] = np.nan
    frame.loc[17, "pixel_9"] = np.inf
    write(root, frame)
    assert error_of(root) == (f"{RAW}: 2 rows have NaN or infinite features, in column 'pixel_5' (2 rows), "
                              "'pixel_9' (1 row) (first at data row 4); fix: drop or impute those rows before prepare")


def test_non_numeric_feature(root: Path, image_frame) -> None:
    frame = image_frame()
    frame["pixel_2"] = frame["pixel_2"].astype(object)
    frame.loc[[5, 6, 7], "pixel_2"] = "dark"
    write(root, frame)
    assert error_of(root) == (f"{RAW}: feature column 'pixel_2' is not numeric: 3 rows hold text such as 'dark' "
                              "(first at data row 6); fix: encode it as numbers, or leave it out of data.source.features")


def test_label_outside_the_declared_classes(root: Path, image_frame) -> None:
    frame = image_frame()
    frame.loc[[0, 50], "digit"] = 11
    write(root, frame)
    assert error_of(root) == (
        f"{RAW} (data.source.label): 2 rows have labels outside the declared classes ['0', '1', '2', '3', '4', '5', "
        "'6', '7', '8', '9']: ['11'] (first at data row 1); fix: add them to data.source.classes or "
        "data.source_classes / target_classes (rows of classes that no task uses are then left out), or drop those rows")


def test_class_with_too_few_samples_for_the_split(root: Path, image_frame) -> None:
    frame = image_frame()
    frame = frame[(frame["digit"] != 3) | (frame.index % 40 < 2)]  # digit 3 keeps 2 rows
    write(root, frame)
    assert error_of(root) == (
        f"{RAW} (data.source.label): class '3' has 2 rows, too few for a stratified split with at least one row each "
        "in train, validation (data.val_fraction 0.1) and test (data.source.test_fraction 0.2): it needs 6; "
        "fix: add rows of that class, or leave it out of data.source_classes")


def test_target_class_with_too_few_samples(root: Path) -> None:
    assert error_of(root, target_labels_per_class=30) == (
        f"{RAW} (data.source.label): target class '5' has 40 rows; it needs 35 besides its 8 test rows "
        "(data.target_labels_per_class 30 + data.target_val_per_class 5); fix: lower those two, or add rows of that class")


def test_feature_counts_disagree_between_source_and_target(root: Path, image_frame) -> None:
    target = image_frame(classes=3).drop(columns=["pixel_63"])
    write(root, target, "data/raw/target.csv")
    assert error_of(root, target={"kind": "file", "path": "data/raw/target.csv", "label": "digit"},
                    source_classes=list(range(10)), target_classes=[0, 1, 2]) == (
        "data/raw/target.csv (data.target): 63 features per row, but data.source has 64 (sample shape [1, 8, 8]); "
        "fix: give both the same feature columns")


def test_feature_counts_disagree_between_source_and_transfer(root: Path) -> None:
    write(root, pd.DataFrame(np.ones((4, 40)), columns=[f"f{i}" for i in range(40)]), "data/raw/unlabelled.csv")
    assert error_of(root, transfer={"kind": "file", "path": "data/raw/unlabelled.csv"}) == (
        "data/raw/unlabelled.csv (data.transfer): 40 features per row, but data.source has 64 (sample shape "
        "[1, 8, 8]); fix: give both the same feature columns")


def test_mnist1d_transfer_for_a_file_source(root: Path) -> None:
    assert error_of(root, transfer={"kind": "mnist1d", "size": 100}).startswith(
        "data.transfer: the MNIST-1D generator makes 40-feature digits 0-9, not rows like the file")


@pytest.mark.parametrize(("content", "expected"), [
    (b"", f"{RAW} (data.source.path): the file is empty (0 rows); fix: write the data to it, with a header row"),
    (b"pixel_0,digit\n", f"{RAW} (data.source.path): a header but 0 rows; fix: write the data rows to it"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", f"{RAW} (data.source.path): a binary file, not CSV text; fix: export it as "
                                       "CSV with a header row (or, if it is Parquet, name it .parquet)"),
    (b'a,b\n1,"2\n', f"{RAW} (data.source.path): not a CSV file (Error tokenizing data. C error: EOF inside string "
                     "starting at row 1); fix: export it as comma-separated text with a header row, or as Parquet"),
])
def test_empty_or_not_csv(root: Path, content: bytes, expected: str) -> None:
    (root / RAW).write_bytes(content)
    assert error_of(root) == expected


def test_not_parquet_and_unknown_format(root: Path) -> None:
    (root / "data/raw/digits.parquet").write_text("pixel_0,digit\n1,2\n")
    assert error_of(root, source={**SOURCE, "path": "data/raw/digits.parquet"}).startswith(
        "data/raw/digits.parquet (data.source.path): not a Parquet file (")
    (root / "data/raw/digits.xlsx").write_bytes(b"PK")
    assert error_of(root, source={**SOURCE, "path": "data/raw/digits.xlsx"}) == (
        "data/raw/digits.xlsx (data.source.path): '.xlsx' is not a format kdflow reads; "
        "fix: give a .csv, .parquet or .npz file")


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path) == (f"{RAW} (data.source.path): no such file; fix: put the file there (under "
                                  f"data/raw, then `dvc add {RAW}`) or correct data.source.path")


def test_a_bad_file_stops_prepare_before_anything_is_written(root: Path, image_frame) -> None:
    frame = image_frame()
    frame.loc[9, "pixel_0"] = np.nan
    write(root, frame)
    with pytest.raises(DataError, match="NaN or infinite"):
        prepare.run(params(), ProjectPaths.at(root))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["data", "data/raw", RAW]
