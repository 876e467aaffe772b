"""Stage `prepare`: the source, transfer and target data as Parquet splits plus a dataset card.

The default scenario (`kind: mnist1d`):
- source: the generator's train part, source classes, split per class into train and validation; its test part
  gives source_test. With seed 42 and 5,000 samples these are the published MNIST-1D train/test samples.
- transfer: the generator under another seed, source classes only, labels dropped.
- target: the same generator output's target classes; a few labelled samples per class for training and for
  validation, the whole test part for testing.
A user's file (`kind: file`, read and checked by kdflow.sources): the source classes' rows split per class into
train, validation and test; the target task from the same file's target classes or from `data.target`'s file;
the transfer set from `data.transfer`'s file, labels dropped.
Labels are re-indexed 0..K-1 within each task; the card maps them back to class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow import media, sources
from kdflow.artifacts import file_digest, write_json, write_parquet
from kdflow.config import Params
from kdflow.datasets import DatasetCard, SplitRecord, to_frame
from kdflow.layout import SPLIT_TASK, SPLITS, ProjectPaths
from kdflow.mnist1d_fast import make_dataset
from kdflow.progress import progress
from kdflow.stage import stage_run


def _generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All samples (train part first, then test part), their digits, their ids, and where the test part starts."""
    generated = make_dataset(num_samples=num_samples, seed=seed)
    features = np.concatenate([generated["x"], generated["x_test"]]).astype(np.float32)
    digits = np.concatenate([generated["y"], generated["y_test"]])
    sample_ids = np.array([f"mnist1d-s{seed}-{i:06d}" for i in range(len(digits))])
    return features, digits, sample_ids, len(generated["y"])


def _per_class_take(digits: np.ndarray, candidates: np.ndarray, classes: list[int], counts: list[int],
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Split `candidates` (indices) per class into consecutive shuffled parts of the given sizes (-1: the rest)."""
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for digit in classes:
        members = rng.permutation(candidates[digits[candidates] == digit])
        start = 0
        for part, count in zip(parts, counts):
            stop = len(members) if count < 0 else start + count
            if stop > len(members):
                raise ValueError(f"digit {digit} has {len(members)} samples, fewer than the {stop} requested; "
                                 "lower data.target_labels_per_class or target_val_per_class, or raise source.num_samples")
            part.append(members[start:stop])
            start = stop
    return [np.sort(np.concatenate(part)) for part in parts]


Split = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def build_splits(params: Params, root: Path = Path(".")) -> dict[str, Split]:
    """Each split as (sample_id, features shaped (rows, *sample shape), labels or None). Files are read relative
    to `root` and checked completely before this returns, so a bad file stops `prepare` before any write."""
    spec = params.data
    rng = np.random.default_rng(params.seed)
    if spec.source.kind == "mnist1d":
        splits = _generated_splits(params, rng, with_target=spec.target is None)
    else:
        splits = _file_source_splits(params, root, rng)
    sample_shape = splits["source_train"][1].shape[1:]
    if spec.target is not None:
        target = sources.shape_rows(media.read(spec.target, root, "data.target", True, spec),
                                    sample_shape, "data.target", "data.source")
        classes = [str(c) for c in spec.target_classes]
        sources.check_labels(target, sources.declared_classes(spec.target, spec.target_classes), "data.target",
                             "data.target.classes or data.target_classes")
        parts = sources.split_target(target, classes, spec.target_labels_per_class, spec.target_val_per_class,
                                     spec.target.test_fraction, rng, "data.target")
        splits.update(_labelled(target, parts, classes, ("target_train", "target_val", "target_test")))
    splits["transfer"] = _transfer(params, root, sample_shape, splits)
    return splits


def _generated_splits(params: Params, rng: np.random.Generator, with_target: bool) -> dict[str, Split]:
    spec = params.data
    features, digits, sample_ids, test_start = _generate(spec.source.seed, spec.source.num_samples)
    train_part, test_part = np.arange(test_start), np.arange(test_start, len(digits))

    def labelled(indices: np.ndarray, classes: list[int]):
        index_of = {digit: i for i, digit in enumerate(classes)}
        return sample_ids[indices], features[indices], np.array([index_of[d] for d in digits[indices]])

    source_pool = train_part[np.isin(digits[train_part], spec.source_classes)]
    source_val = np.sort(np.concatenate([
        members[: round(spec.val_fraction * len(members))]
        for members in (rng.permutation(source_pool[digits[source_pool] == d]) for d in spec.source_classes)
    ]))
    source_train = np.setdiff1d(source_pool, source_val)
    splits = {
        "source_train": labelled(source_train, spec.source_classes),
        "source_val": labelled(source_val, spec.source_classes),
        "source_test": labelled(test_part[np.isin(digits[test_part], spec.source_classes)], spec.source_classes),
    }
    if with_target:
        target_train, target_val = _per_class_take(
            digits, train_part, spec.target_classes, [spec.target_labels_per_class, spec.target_val_per_class], rng
        )
        splits.update({
            "target_train": labelled(target_train, spec.target_classes),
            "target_val": labelled(target_val, spec.target_classes),
            "target_test": labelled(test_part[np.isin(digits[test_part], spec.target_classes)], spec.target_classes),
        })
    return splits


def _labelled(rows: sources.Rows, parts: list[np.ndarray], classes: list[str], names: tuple[str, ...]) -> dict[str, Split]:
    return {name: (rows.sample_id[indices], rows.features[indices], sources.task_labels(rows, indices, classes))
            for name, indices in zip(names, parts)}


def _file_source_splits(params: Params, root: Path, rng: np.random.Generator) -> dict[str, Split]:
    """The source task, and the target task too when it has no file of its own (other classes, same file)."""
    spec = params.data
    rows = sources.reshaped(media.read(spec.source, root, "data.source", True, spec),
                            getattr(spec.source, "reshape", None), "data.source")
    task_classes = spec.source_classes + (spec.target_classes if spec.target is None else [])
    sources.check_labels(rows, sources.declared_classes(spec.source, task_classes), "data.source",
                         "data.source.classes or data.source_classes" + (" / target_classes" if spec.target is None else ""))
    source_classes = [str(c) for c in spec.source_classes]
    parts = sources.split_source(rows, source_classes, spec.val_fraction, spec.source.test_fraction, rng, "data.source")
    splits = _labelled(rows, parts, source_classes, ("source_train", "source_val", "source_test"))
    if spec.target is None:
        target_classes = [str(c) for c in spec.target_classes]
        parts = sources.split_target(rows, target_classes, spec.target_labels_per_class, spec.target_val_per_class,
                                     spec.source.test_fraction, rng, "data.source")
        splits.update(_labelled(rows, parts, target_classes, ("target_train", "target_val", "target_test")))
    return splits


def _transfer(params: Params, root: Path, sample_shape: tuple[int, ...], labelled: dict[str, Split]) -> Split:
    spec = params.data
    if spec.transfer.kind != "mnist1d":
        rows = sources.shape_rows(media.read(spec.transfer, root, "data.transfer", False, spec),
                                  sample_shape, "data.transfer", "data.source")
        # The same rows (the source file with its labels dropped) must not leak evaluation samples into distillation.
        held = np.isin(rows.sample_id, np.concatenate([ids for ids, _, _ in labelled.values()]))
        labelled_files = {sources.resolve(root, f.path).resolve() for f in (spec.source, spec.target) if f and f.kind != "mnist1d"}
        if held.any() and sources.resolve(root, spec.transfer.path).resolve() not in labelled_files:
            raise sources.DataError(
                f"{spec.transfer.path} (data.transfer): {int(held.sum())} rows have the sample_id of a labelled row of "
                f"another file, e.g. '{rows.sample_id[held][0]}'; fix: give data.transfer.sample_id a column of ids "
                "that no labelled row has, or rename the file")
        return rows.sample_id[~held], rows.features[~held], None
    if spec.transfer.size == 0:
        return np.array([], dtype=str), np.zeros((0, *sample_shape), np.float32), None
    if spec.source.kind != "mnist1d":
        raise sources.DataError(
            f"data.transfer: the MNIST-1D generator makes 40-feature digits 0-9, not rows like the file "
            f"{spec.source.path} (data.source); fix: give data.transfer {{kind: file, path: ...}}, or set "
            "data.transfer.size: 0 for no transfer set")
    # The generator makes equal counts of all ten digits; ask for enough to keep `size` source-class samples.
    per_class = -(-spec.transfer.size // len(spec.source_classes))
    features, digits, sample_ids, _ = _generate(spec.transfer.seed, per_class * 10 + 10)
    keep = np.flatnonzero(np.isin(digits, spec.source_classes))[: spec.transfer.size]
    return sample_ids[keep], features[keep], None


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.data
    splits = build_splits(params, paths.root)  # every input checked before the stage writes or tracks anything
    located = {path: sources.resolve(paths.root, path) for path in sources.raw_files(spec)}
    raw = {path: media.folder_digest(at) if at.is_dir() else file_digest(at) for path, at in located.items()}
    inputs = [at for at in located.values() if at.is_file()]  # an image folder's digest is the card's
    with stage_run(paths, "prepare", params, parent_run_id, extra_inputs=inputs) as tracked:
        classes = {"source": [str(d) for d in spec.source_classes], "target": [str(d) for d in spec.target_classes]}
        records = {}
        for name in progress(SPLITS, "prepare: writing splits", unit="split"):
            sample_ids, features, labels = splits[name]
            path = write_parquet(paths.split(name), to_frame(sample_ids, features, labels))
            names = classes[SPLIT_TASK[name]]
            records[name] = SplitRecord(
                rows=len(sample_ids), labelled=labels is not None, md5=file_digest(path),
                class_counts={names[i]: int(n) for i, n in enumerate(np.bincount(labels, minlength=len(names)))}
                if labels is not None else {})
        card = DatasetCard(input_shape=tuple(int(n) for n in splits["source_train"][1].shape[1:]),
                           source_classes=classes["source"], target_classes=classes["target"], splits=records,
                           raw_files_md5=raw or None)
        write_json(paths.dataset_card, card.as_json())
        metrics = {f"rows_{name}": card.splits[name].rows for name in SPLITS}
        tracked.log_metrics(metrics)
        tracked.set_tags({f"kdflow.data.{name}.md5": card.splits[name].md5 for name in SPLITS})
        tracked.log_artifact(paths.dataset_card)
    return metrics
