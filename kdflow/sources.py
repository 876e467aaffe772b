"""The user's own data: a CSV, Parquet or .npz file read into checked arrays, and its stratified splits.

Every check runs before `prepare` writes anything. An error names the file, the column, how many rows are
affected and the fix. Labels are read as class names (an integer label 3 is the class "3"); a task's labels
are the indices of its classes in `data.source_classes` / `data.target_classes`, the order the dataset card keeps.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdflow.config import ConfigError, FileColumns, LabelledFile

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
NPZ_SUFFIXES = (".npz",)


class DataError(ConfigError):
    """A data file that cannot become the pipeline's splits; reported like a bad params file, before any write."""


@dataclass
class Rows:
    """One file's rows: ids, features shaped (rows, *sample shape), labels as class names (None: unlabelled)."""

    path: str
    sample_id: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.sample_id)


def resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else Path(root) / path


def _plural(count: int, noun: str = "row") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _read_table(path: Path, shown: str, where: str) -> pd.DataFrame | dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{shown} ({where}.path): no such file; fix: put the file there (under data/raw, then "
                        f"`dvc add {shown}`) or correct {where}.path")
    if path.stat().st_size == 0:
        raise DataError(f"{shown} ({where}.path): the file is empty (0 rows); fix: write the data to it, with a header row")
    if suffix in NPZ_SUFFIXES:
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except Exception as exc:  # numpy raises zipfile, OSError or ValueError for files that are not .npz
            raise DataError(f"{shown} ({where}.path): not a readable .npz archive ({type(exc).__name__}); "
                            "fix: save it with numpy.savez(path, x=features, y=labels)") from None
    if suffix in PARQUET_SUFFIXES:
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{shown} ({where}.path): not a Parquet file ({str(exc).splitlines()[0]}); "
                            "fix: write it with pandas.DataFrame.to_parquet, or give a CSV file") from None
    if suffix not in CSV_SUFFIXES:
        raise DataError(f"{shown} ({where}.path): '{suffix or 'no suffix'}' is not a format kdflow reads; "
                        "fix: give a .csv, .parquet or .npz file")
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1") or b"\0" in head:
        raise DataError(f"{shown} ({where}.path): a binary file, not CSV text; fix: export it as CSV with a header "
                        "row (or, if it is Parquet, name it .parquet)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{shown} ({where}.path): the file is empty (0 rows, no header); "
                        "fix: write the data to it, with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{shown} ({where}.path): not a CSV file ({str(exc).splitlines()[0]}); fix: export it as "
                        "comma-separated text with a header row, or as Parquet") from None
    return frame


def _missing_column(shown: str, where: str, field: str, name: str, columns: list[str]) -> DataError:
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listed = ", ".join(columns[:12]) + (f", ... ({len(columns)} in all)" if len(columns) > 12 else "")
    return DataError(f"{shown}: no column '{name}' ({where}.{field}); {hint}its columns are: {listed}; "
                     f"fix: correct {where}.{field} or rename the column")


def _feature_names(frame: pd.DataFrame, spec: FileColumns, shown: str, where: str, not_features: set[str]) -> list[str]:
    columns = [str(c) for c in frame.columns]
    if spec.features is not None:
        for name in spec.features:
            if name not in columns:
                raise _missing_column(shown, where, "features", name, columns)
        return list(spec.features)
    if spec.feature_prefix is not None:
        names = [c for c in columns if c.startswith(spec.feature_prefix) and c not in not_features]
        if not names:
            raise DataError(f"{shown}: no column starts with '{spec.feature_prefix}' ({where}.feature_prefix); "
                            f"its columns are: {', '.join(columns[:12])}; fix: correct {where}.feature_prefix")
        return names
    names = [c for c in columns if c not in not_features]
    if not names:
        raise DataError(f"{shown}: no feature columns besides {sorted(not_features)}; fix: add feature columns")
    return names


def _numeric_features(frame: pd.DataFrame, names: list[str], shown: str, where: str) -> np.ndarray:
    for name in names:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column):
            continue
        text = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        first = int(np.flatnonzero(text.to_numpy())[0]) if text.any() else 0
        raise DataError(
            f"{shown}: feature column '{name}' is not numeric: {_plural(int(text.sum()))} hold text such as "
            f"{column.iloc[first]!r} (first at data row {first + 1}); fix: encode it as numbers, or leave it out "
            f"of {where}.features")
    values = frame[names].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        per_column = [f"'{names[j]}' ({_plural(int(n))})" for j, n in enumerate(bad.sum(axis=0)) if n]
        raise DataError(
            f"{shown}: {_plural(len(rows))} have NaN or infinite features, in column {', '.join(per_column[:5])}"
            f"{' and more' if len(per_column) > 5 else ''} (first at data row {rows[0] + 1}); "
            "fix: drop or impute those rows before prepare")
    return values.astype(np.float32)


def _label_names(column: pd.Series, shown: str, where: str, name: str) -> np.ndarray:
    """Class names as strings: integer labels (also written as 3.0) become '3'."""
    empty = column.isna().to_numpy()
    if empty.any():
        raise DataError(f"{shown}: label column '{name}' ({where}.label) is empty in {_plural(int(empty.sum()))} "
                        f"(first at data row {int(np.flatnonzero(empty)[0]) + 1}); fix: label them or drop them")
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        fractional = values != np.round(values)
        if fractional.any():
            raise DataError(f"{shown}: label column '{name}' holds {_plural(int(fractional.sum()))} of non-integer "
                            f"numbers such as {values[fractional][0]}; fix: labels are class names or integers")
        return np.array([str(int(v)) for v in values])
    return column.astype(str).to_numpy(dtype=str)


def _sample_ids(frame_ids: pd.Series | None, count: int, path: Path, shown: str, name: str | None) -> np.ndarray:
    ids = frame_ids.astype(str).to_numpy(dtype=str) if frame_ids is not None else np.array(
        [f"{path.stem}-{row:06d}" for row in range(count)])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{shown}: sample_id column '{name}' repeats {_plural(int((counts > 1).sum()), 'id')} over "
                        f"{_plural(int(counts[counts > 1].sum()))}, e.g. '{unique[counts > 1][0]}'; "
                        "fix: make the ids unique, or drop the sample_id setting to number the rows")
    return ids


def _check_tracked(root: Path, shown: str, where: str) -> None:
    """A data file must lie under the project's data/raw, prepare's dependency in dvc.yaml: a change to a file
    anywhere else would not rerun prepare, and the pipeline would go on with the old data (lexical: a link placed
    in data/raw counts as there)."""
    raw = os.path.normpath(Path(root) / "data" / "raw")
    if os.path.commonpath([raw, os.path.normpath(resolve(root, shown))]) != raw:
        raise DataError(f"{shown} ({where}.path): outside the project's data/raw, which DVC tracks for prepare, so a "
                        f"change to it would go unnoticed; fix: copy it under data/raw/, `dvc add` it there and "
                        f"set {where}.path to data/raw/<its name>")


def read_rows(spec: FileColumns, root: Path, where: str, labelled: bool) -> Rows:
    """Read and check one file; `where` is its params key (`data.source`), named in every error."""
    _check_tracked(root, spec.path, where)
    path = resolve(root, spec.path)
    table = _read_table(path, spec.path, where)
    label_name = getattr(spec, "label", "label")
    if isinstance(table, dict):
        return _npz_rows(table, spec, path, where, labelled)
    if len(table) == 0:
        raise DataError(f"{spec.path} ({where}.path): a header but 0 rows; fix: write the data rows to it")
    columns = [str(c) for c in table.columns]
    table.columns = columns
    if labelled and label_name not in columns:
        raise _missing_column(spec.path, where, "label", label_name, columns)
    if spec.sample_id is not None and spec.sample_id not in columns:
        raise _missing_column(spec.path, where, "sample_id", spec.sample_id, columns)
    not_features = {label_name} | ({spec.sample_id} if spec.sample_id else set())
    media = spec.image_column or spec.text_column  # decoded by kdflow.media
    if media is not None and media not in columns:
        field = "image_column" if spec.image_column else "text_column"
        raise _missing_column(spec.path, where, field, media, columns)
    features = (table[media].to_numpy(dtype=object) if media is not None else
                _numeric_features(table, _feature_names(table, spec, spec.path, where, not_features), spec.path, where))
    labels = _label_names(table[label_name], spec.path, where, label_name) if labelled else None
    ids = _sample_ids(table[spec.sample_id] if spec.sample_id else None, len(table), path, spec.path, spec.sample_id)
    return Rows(spec.path, ids, features, labels)


def _npz_rows(arrays: dict[str, np.ndarray], spec: FileColumns, path: Path, where: str, labelled: bool) -> Rows:
    shown = spec.path
    if any(v is not None for v in (spec.features, spec.feature_prefix, spec.sample_id, spec.image_column, spec.text_column)):
        raise DataError(f"{shown}: an .npz holds arrays, not columns; fix: drop {where}.features, feature_prefix, "
                        "sample_id, image_column and text_column (features are `x`, labels `y`)")
    for key in ("x", "y") if labelled else ("x",):
        if key not in arrays:
            raise DataError(f"{shown}: no array '{key}' in the .npz (it holds {sorted(arrays) or 'nothing'}); "
                            f"fix: save it with numpy.savez(path, x=features{', y=labels' if labelled else ''})")
    x = arrays["x"]
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{shown}: array 'x' has shape {x.shape}; fix: one row per sample, shape (rows, features...)")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{shown}: array 'x' holds {x.dtype}, not numbers; fix: save the features as floats")
    bad = ~np.isfinite(x.reshape(len(x), -1).astype(np.float64))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(f"{shown}: array 'x' has NaN or infinity in {_plural(len(rows))} (first at row {rows[0]}); "
                        "fix: drop or impute those rows")
    labels = None
    if labelled:
        y = arrays["y"]
        if y.shape != (len(x),):
            raise DataError(f"{shown}: array 'y' has shape {y.shape} for {_plural(len(x))} of 'x'; "
                            "fix: one label per row of x")
        labels = _label_names(pd.Series(y), shown, where, "y")
    return Rows(shown, _sample_ids(None, len(x), path, shown, None), x.astype(np.float32), labels)


def shape_rows(rows: Rows, sample_shape: tuple[int, ...], where: str, source_where: str) -> Rows:
    """Give every row the source's sample shape; a file whose feature count differs is an error."""
    features = int(np.prod(rows.features.shape[1:]))
    expected = int(np.prod(sample_shape))
    if features != expected:
        raise DataError(f"{rows.path} ({where}): {features} features per row, but {source_where} has {expected} "
                        f"(sample shape {list(sample_shape)}); fix: give both the same feature columns")
    return Rows(rows.path, rows.sample_id, rows.features.reshape(len(rows), *sample_shape), rows.labels)


def reshaped(rows: Rows, reshape: list[int] | None, where: str) -> Rows:
    """Apply `reshape` (e.g. [1, 8, 8]) to every row; the feature count must match."""
    if reshape is None:
        return rows
    features = int(np.prod(rows.features.shape[1:]))
    if features != int(np.prod(reshape)):
        raise DataError(f"{rows.path} ({where}.reshape): {features} features per row cannot take the shape "
                        f"{list(reshape)} ({int(np.prod(reshape))} values); fix: correct {where}.reshape or the "
                        "feature columns")
    return Rows(rows.path, rows.sample_id, rows.features.reshape(len(rows), *reshape), rows.labels)


def check_labels(rows: Rows, declared: list[str], where: str, declared_key: str) -> None:
    """Every label must be a declared class; a label outside them is a typo or a class the user forgot."""
    outside = ~np.isin(rows.labels, declared)
    if outside.any():
        found = sorted(set(rows.labels[outside].tolist()))
        raise DataError(
            f"{rows.path} ({where}.label): {_plural(int(outside.sum()))} have labels outside the declared classes "
            f"{declared}: {found[:5]}{' and more' if len(found) > 5 else ''} (first at data row "
            f"{int(np.flatnonzero(outside)[0]) + 1}); fix: add them to {declared_key} (rows of classes that no "
            "task uses are then left out), or drop those rows")


def _members(rows: Rows, name: str) -> np.ndarray:
    return np.flatnonzero(rows.labels == name)


def split_source(rows: Rows, classes: list[str], val_fraction: float, test_fraction: float,
                 rng: np.random.Generator, where: str) -> list[np.ndarray]:
    """Row indices of train, validation and test: per class, shares of `test_fraction` and `val_fraction`."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for name in classes:
        members = rng.permutation(_members(rows, name))
        test, val = round(test_fraction * len(members)), round(val_fraction * len(members))
        if min(test, val, len(members) - test - val) < 1:
            needed = next(n for n in range(3, 10_000) if min(round(test_fraction * n), round(val_fraction * n),
                                                              n - round(test_fraction * n) - round(val_fraction * n)) >= 1)
            raise DataError(
                f"{rows.path} ({where}.label): class '{name}' has {_plural(len(members))}, too few for a stratified "
                f"split with at least one row each in train, validation (data.val_fraction {val_fraction}) and test "
                f"({where}.test_fraction {test_fraction}): it needs {needed}; fix: add rows of that class, or "
                "leave it out of data.source_classes")
        for part, chosen in zip(parts, (members[test + val :], members[test : test + val], members[:test])):
            part.append(chosen)
    return [np.sort(np.concatenate(part)) for part in parts]


def split_target(rows: Rows, classes: list[str], labels_per_class: int, val_per_class: int, test_fraction: float,
                 rng: np.random.Generator, where: str) -> list[np.ndarray]:
    """Row indices of train, validation and test: per class, a `test_fraction` share for testing, then exactly
    `labels_per_class` and `val_per_class` rows; the class's other rows stay unused, as few labels are the point."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for name in classes:
        members = rng.permutation(_members(rows, name))
        test = max(round(test_fraction * len(members)), 1)
        needed = labels_per_class + val_per_class
        if len(members) - test < needed:
            raise DataError(
                f"{rows.path} ({where}.label): target class '{name}' has {_plural(len(members))}; it needs "
                f"{needed} besides its {test} test rows (data.target_labels_per_class {labels_per_class} + "
                f"data.target_val_per_class {val_per_class}); fix: lower those two, or add rows of that class")
        chosen = (members[test : test + labels_per_class], members[test + labels_per_class : test + needed],
                  members[:test])
        for part, indices in zip(parts, chosen):
            part.append(indices)
    return [np.sort(np.concatenate(part)) for part in parts]


def task_labels(rows: Rows, indices: np.ndarray, classes: list[str]) -> np.ndarray:
    index_of = {name: i for i, name in enumerate(classes)}
    return np.array([index_of[name] for name in rows.labels[indices]], dtype=np.int64)


def declared_classes(spec: LabelledFile, task_classes: list) -> list[str]:
    return [str(c) for c in (spec.classes if spec.classes is not None else task_classes)]


def raw_files(data) -> list[str]:
    """The files and image folders `data` (a DataSpec) reads, as written in params.yaml: what `prepare` depends on
    besides code."""
    return [spec.path for spec in (data.source, data.transfer, data.target) if spec is not None and spec.kind != "mnist1d"]
