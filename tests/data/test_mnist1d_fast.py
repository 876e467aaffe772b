"""`kdflow.mnist1d_fast.make_dataset` must reproduce `mnist1d.data.make_dataset` exactly, without touching
the global random state."""

from __future__ import annotations

import random

import numpy as np
import pytest
from mnist1d.data import get_dataset_args
from mnist1d.data import make_dataset as reference_make_dataset

from kdflow.mnist1d_fast import make_dataset

KEYS = ("x", "y", "x_test", "y_test")


def reference(num_samples: int, seed: int, train_split: float = 0.8) -> dict[str, np.ndarray]:
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    return reference_make_dataset(args)


def assert_same_dataset(fast: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(fast) == set(KEYS)
    for key in ("x", "x_test"):
        assert fast[key].dtype == np.float64
        np.testing.assert_array_equal(fast[key], expected[key])  # bit for bit, as the module claims
    for key in ("y", "y_test"):
        assert fast[key].dtype.kind == "i"
        np.testing.assert_array_equal(fast[key], expected[key])


@pytest.mark.parametrize(
    ("num_samples", "seed", "train_split"),
    [(500, 42, 0.8), (1000, 7, 0.8), (505, 3, 0.5)],  # 505: mnist1d drops the remainder of num_samples // 10
)
def test_matches_mnist1d(num_samples: int, seed: int, train_split: float) -> None:
    expected = reference(num_samples, seed, train_split)
    assert_same_dataset(make_dataset(num_samples, seed, train_split), expected)


def test_matches_mnist1d_at_defaults() -> None:
    assert_same_dataset(make_dataset(), reference(5000, 42))


def test_leaves_global_random_state_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    python_state_before = random.getstate()
    state_before = np.random.get_state()
    make_dataset(200, 42)
    state_after = np.random.get_state()
    assert random.getstate() == python_state_before
    assert state_before[0] == state_after[0]
    np.testing.assert_array_equal(state_before[1], state_after[1])
    assert state_before[2:] == state_after[2:]


def test_private_stream_equals_seeded_global_stream() -> None:
    """The premise: mnist1d seeds the global legacy generator, which is a RandomState with the same stream."""
    np.random.seed(42)
    global_draws = (np.random.rand(3), np.random.choice(48), np.random.randn(5), np.random.permutation(10))
    private = np.random.RandomState(42)
    private_draws = (private.rand(3), private.choice(48), private.randn(5), private.permutation(10))
    for global_draw, private_draw in zip(global_draws, private_draws):
        np.testing.assert_array_equal(global_draw, private_draw)
