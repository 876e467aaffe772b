"""Stage `prepare`: the default scenario as Parquet splits plus a dataset card.

- source: the generator's train part, source classes, split per class into train and validation; its test part
  gives source_test. With seed 42 and 5,000 samples these are the published MNIST-1D train/test samples.
- transfer: the generator under another seed, source classes only, labels dropped.
- target: the same generator output's target classes; a few labelled samples per class for training and for
  validation, the whole test part for testing.
Labels are re-indexed 0..K-1 within each task; the card maps them back to digits.
"""

from __future__ import annotations

import numpy as np

from kdflow.artifacts import file_digest, write_json, write_parquet
from kdflow.config import Params
from kdflow.datasets import to_frame
from kdflow.layout import SPLITS, ProjectPaths
from kdflow.mnist1d_fast import make_dataset
from kdflow.stage import record_outputs, stage_main, stage_run


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


def build_splits(params: Params) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Each split as (sample_id, features, labels or None)."""
    spec = params.data
    rng = np.random.default_rng(params.seed)
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
    target_train, target_val = _per_class_take(
        digits, train_part, spec.target_classes, [spec.target_labels_per_class, spec.target_val_per_class], rng
    )
    splits = {
        "source_train": labelled(source_train, spec.source_classes),
        "source_val": labelled(source_val, spec.source_classes),
        "source_test": labelled(test_part[np.isin(digits[test_part], spec.source_classes)], spec.source_classes),
        "target_train": labelled(target_train, spec.target_classes),
        "target_val": labelled(target_val, spec.target_classes),
        "target_test": labelled(test_part[np.isin(digits[test_part], spec.target_classes)], spec.target_classes),
    }
    splits["transfer"] = _transfer(params)
    return splits


def _transfer(params: Params) -> tuple[np.ndarray, np.ndarray, None]:
    spec = params.data
    if spec.transfer.size == 0:
        return np.array([], dtype=str), np.zeros((0, 40), np.float32), None
    # The generator makes equal counts of all ten digits; ask for enough to keep `size` source-class samples.
    per_class = -(-spec.transfer.size // len(spec.source_classes))
    features, digits, sample_ids, _ = _generate(spec.transfer.seed, per_class * 10 + 10)
    keep = np.flatnonzero(np.isin(digits, spec.source_classes))[: spec.transfer.size]
    return sample_ids[keep], features[keep], None


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.data
    with stage_run(paths, "prepare", params, parent_run_id, inputs=[]) as tracked:
        splits = build_splits(params)
        card: dict = {
            "input_shape": [int(splits["source_train"][1].shape[1])],
            "source_classes": [str(d) for d in spec.source_classes],
            "target_classes": [str(d) for d in spec.target_classes],
            "splits": {},
        }
        for name in SPLITS:
            sample_ids, features, labels = splits[name]
            path = write_parquet(paths.split(name), to_frame(sample_ids, features, labels))
            classes = card["target_classes" if name.startswith("target") else "source_classes"]
            card["splits"][name] = {
                "rows": int(len(sample_ids)),
                "labelled": labels is not None,
                "class_counts": {classes[i]: int(n) for i, n in enumerate(np.bincount(labels, minlength=len(classes)))}
                if labels is not None else {},
                "md5": file_digest(path),
            }
        write_json(paths.dataset_card, card)
        metrics = {f"rows_{name}": card["splits"][name]["rows"] for name in SPLITS}
        tracked.log_metrics(metrics)
        tracked.set_tags({f"kdflow.data.{name}.md5": card["splits"][name]["md5"] for name in SPLITS})
        tracked.log_artifact(paths.dataset_card)
        record_outputs(tracked, paths, [paths.split(name) for name in SPLITS] + [paths.dataset_card])
    return metrics


if __name__ == "__main__":
    stage_main("prepare", run)
