"""`tasks.prepare.build_splits` on a small config: disjoint, complete, deterministic splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kdflow.config import Params, validate
from kdflow.mnist1d_fast import make_dataset
from tasks.prepare import build_splits

SOURCE_SPLITS = ("source_train", "source_val", "source_test")
TARGET_SPLITS = ("target_train", "target_val", "target_test")


def small(seed: int = 42, **data) -> Params:
    raw_data = {
        "source": {"num_samples": 1000},
        "transfer": {"size": 300},
        "target_labels_per_class": 5,
        "target_val_per_class": 5,
        **data,
    }
    return validate({"seed": seed, "data": raw_data})


@pytest.fixture(scope="module")
def params() -> Params:
    return small()


@pytest.fixture(scope="module")
def splits(params: Params) -> dict:
    return build_splits(params)


def test_all_splits_present(splits: dict) -> None:
    assert set(splits) == {*SOURCE_SPLITS, *TARGET_SPLITS, "transfer"}
    for name, (sample_ids, features, labels) in splits.items():
        assert features.shape == (len(sample_ids), 40), name
        assert features.dtype == np.float32
        if labels is not None:
            assert labels.shape == (len(sample_ids),)


def test_splits_are_pairwise_disjoint(splits: dict) -> None:
    for (a, (ids_a, _, _)), (b, (ids_b, _, _)) in itertools.combinations(splits.items(), 2):
        assert not set(ids_a) & set(ids_b), f"{a} and {b} share samples"
    for name, (sample_ids, _, _) in splits.items():
        assert len(set(sample_ids)) == len(sample_ids), f"{name} repeats a sample"


def test_labels_are_task_indices(params: Params, splits: dict) -> None:
    for name in SOURCE_SPLITS:
        assert set(splits[name][2]) <= set(range(len(params.data.source_classes))), name
    for name in TARGET_SPLITS:
        assert set(splits[name][2]) <= set(range(len(params.data.target_classes))), name


def test_labels_map_back_to_the_right_digits(params: Params, splits: dict) -> None:
    generated = make_dataset(num_samples=1000, seed=params.data.source.seed)
    digits = np.concatenate([generated["y"], generated["y_test"]])
    for name in (*SOURCE_SPLITS, *TARGET_SPLITS):
        classes = params.data.source_classes if name.startswith("source") else params.data.target_classes
        sample_ids, features, labels = splits[name]
        index = np.array([int(s.rsplit("-", 1)[1]) for s in sample_ids])
        assert all(s.startswith("mnist1d-s42-") for s in sample_ids)
        np.testing.assert_array_equal(np.array(classes)[labels], digits[index])
        train_part = len(generated["y"])
        assert (index >= train_part).all() if name.endswith("test") else (index < train_part).all()


def test_every_source_class_in_train_and_val(splits: dict) -> None:
    for name in ("source_train", "source_val"):
        assert set(splits[name][2]) == {0, 1, 2, 3, 4}, name
    # val_fraction 0.1 of each class's share of the 800 train-part samples, rounded.
    train_counts = np.bincount(splits["source_train"][2])
    val_counts = np.bincount(splits["source_val"][2])
    np.testing.assert_array_equal(val_counts, np.round(0.1 * (train_counts + val_counts)))


def test_target_train_and_val_have_exactly_the_requested_counts(splits: dict) -> None:
    np.testing.assert_array_equal(np.bincount(splits["target_train"][2], minlength=5), [5] * 5)
    np.testing.assert_array_equal(np.bincount(splits["target_val"][2], minlength=5), [5] * 5)


def test_transfer_set(params: Params, splits: dict) -> None:
    sample_ids, features, labels = splits["transfer"]
    assert len(sample_ids) == 300 and features.shape == (300, 40)
    assert labels is None
    # Another generator seed than the source: ids say which, and the data differ.
    assert params.data.transfer.seed != params.data.source.seed
    assert all(s.startswith(f"mnist1d-s{params.data.transfer.seed}-") for s in sample_ids)
    assert not any(s.startswith(f"mnist1d-s{params.data.source.seed}-") for s in sample_ids)
    # Only source-class digits are kept: regenerate the transfer seed's samples and look their digits up.
    generated = make_dataset(num_samples=60 * 10 + 10, seed=params.data.transfer.seed)
    digits = np.concatenate([generated["y"], generated["y_test"]])
    x = np.concatenate([generated["x"], generated["x_test"]]).astype(np.float32)
    index = np.array([int(s.rsplit("-", 1)[1]) for s in sample_ids])
    assert set(digits[index]) == set(params.data.source_classes)
    np.testing.assert_array_equal(features, x[index])


def test_same_params_same_splits(params: Params, splits: dict) -> None:
    again = build_splits(params)
    for name, (sample_ids, features, labels) in splits.items():
        np.testing.assert_array_equal(again[name][0], sample_ids)
        np.testing.assert_array_equal(again[name][1], features)
        if labels is None:
            assert again[name][2] is None
        else:
            np.testing.assert_array_equal(again[name][2], labels)


def test_another_seed_draws_another_validation_split(splits: dict) -> None:
    other = build_splits(small(seed=7))
    assert not np.array_equal(other["source_val"][0], splits["source_val"][0])
    assert not np.array_equal(other["target_train"][0], splits["target_train"][0])
    # The generated data are the same (data.source.seed did not change): the test parts do not move.
    np.testing.assert_array_equal(other["source_test"][0], splits["source_test"][0])
    np.testing.assert_array_equal(
        np.union1d(other["source_val"][0], other["source_train"][0]),
        np.union1d(splits["source_val"][0], splits["source_train"][0]),
    )


def test_too_many_target_labels_per_class() -> None:
    # 1,000 samples give 100 per digit, about 80 of them in the train part.
    with pytest.raises(ValueError, match="target_labels_per_class"):
        build_splits(small(target_labels_per_class=200))
