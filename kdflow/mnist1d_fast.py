"""MNIST-1D, generated the same as `mnist1d.data.make_dataset` but vectorised across samples.

`mnist1d.data.make_dataset` builds each sample with its own scipy `interp1d` and `gaussian_filter` calls,
which takes about 3 s for the default 5,000 samples and a minute for 100,000. This module draws the same
random numbers in the same order from a private `np.random.RandomState(seed)` (the legacy global
`np.random` functions are methods of one such object, and `mnist1d` seeds it with `np.random.seed`), then
does the padding, interpolation, noise and shear for all samples at once with numpy, repeating the same
floating-point operations, so the arrays equal mnist1d's bit for bit. The global random state is left alone.

Only the arguments a caller would vary are exposed; the rest are fixed at `get_dataset_args()` defaults.
"""

from __future__ import annotations

import numpy as np

TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_SEQ_LENGTH = 40
DILATED_LEN = TEMPLATE_LEN + PADDING[1]
# mnist1d adds this before padding so that the signal differs from the zero padding, which later marks
# where the correlated noise goes.
EPS = 1e-8


def _interp_rows(values: np.ndarray, dst_len: int) -> np.ndarray:
    """Resample every row of `values` from linspace(0, 1, width) to linspace(0, 1, dst_len).

    Follows `np.interp` (which `interp1d(kind="linear")` delegates to for 1-D float input) step for step,
    so each value is computed by the same floating-point operations.
    """
    src_len = values.shape[1]
    src = np.linspace(0, 1, src_len)
    dst = np.linspace(0, 1, dst_len)
    below = np.searchsorted(src, dst, side="right") - 1
    # Clamped so that the last point, which lands on src[-1], still has a segment; its 0/0 slope would
    # otherwise warn. Its value is replaced below anyway.
    lo = np.minimum(below, src_len - 2)
    slope = (values[:, lo + 1] - values[:, lo]) / (src[lo + 1] - src[lo])
    interpolated = slope * (dst - src[lo]) + values[:, lo]
    # np.interp returns the sample itself on an exact grid hit rather than interpolating.
    on_grid = src[below] == dst
    interpolated[:, on_grid] = values[:, below[on_grid]]
    return interpolated


def make_dataset(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> dict[str, np.ndarray]:
    """Same keys and values as mnist1d.data.make_dataset(args) with get_dataset_args() defaults
    except num_samples/seed/train_split: 'x', 'y', 'x_test', 'y_test' (float64 x, int y)."""
    # Imported here: mnist1d.data imports matplotlib, scipy.interpolate and requests (about 0.9 s), and every run
    # imports this module, also when DVC's record answers prepare.
    from mnist1d.data import get_templates
    from scipy.ndimage import gaussian_filter1d

    templates = get_templates()
    num_classes = len(templates["y"])
    samples_per_class = num_samples // num_classes
    labels = np.repeat(templates["y"], samples_per_class)
    num_total = len(labels)

    # Draw per sample in mnist1d's order: pad, scale, translation, correlated noise, iid noise, shear.
    # rand(2) and randn(2 * DILATED_LEN) consume the stream exactly as two consecutive calls do (the
    # Gaussian cache is empty after an even count), and choice(n) on an int is randint(0, n) inside.
    rng = np.random.RandomState(seed)
    pad_scale_draws = np.empty((num_total, 2))
    shifts = np.empty(num_total, dtype=np.intp)
    noise_draws = np.empty((num_total, 2 * DILATED_LEN))
    shear_draws = np.empty(num_total)
    for sample_ix in range(num_total):
        pad_scale_draws[sample_ix] = rng.rand(2)
        shifts[sample_ix] = rng.randint(0, MAX_TRANSLATION)
        noise_draws[sample_ix] = rng.randn(2 * DILATED_LEN)
        shear_draws[sample_ix] = rng.rand()
    batch_shuffle = rng.permutation(num_total)

    # Pad and dilate. The padded width varies per sample, so interpolate each width's group together.
    pad_lens = PADDING[0] + (pad_scale_draws[:, 0] * (PADDING[1] - PADDING[0] + 1)).astype(int)
    signals = templates["x"][labels] + EPS
    dilated = np.empty((num_total, DILATED_LEN))
    for pad_len in np.unique(pad_lens):
        in_group = pad_lens == pad_len
        padded = np.concatenate([signals[in_group], np.zeros((in_group.sum(), pad_len))], axis=1)
        dilated[in_group] = _interp_rows(padded, DILATED_LEN)

    dilated *= 1 + SCALE_COEFF * (pad_scale_draws[:, 1:] - 0.5)

    # mnist1d's concatenate([x[-k:], x[:-k]]) is a right roll by k (k = 0 leaves x as is).
    positions = np.arange(DILATED_LEN)
    translated = np.take_along_axis(dilated, (positions - shifts[:, None]) % DILATED_LEN, axis=1)

    # gaussian_filter on a 1-D array is gaussian_filter1d with mode "reflect", applied here row by row.
    corr_noise = gaussian_filter1d(CORR_NOISE_SCALE * noise_draws[:, :DILATED_LEN], 2, axis=1)
    iid_noise = IID_NOISE_SCALE * noise_draws[:, DILATED_LEN:]
    # Picks the same values as mnist1d's mask * x + (1 - mask) * noise: the term masked off adds a zero.
    noisy = np.where(translated != 0, translated, corr_noise) + iid_noise

    shear_coeffs = SHEAR_SCALE * (shear_draws - 0.5)
    sheared = noisy - shear_coeffs[:, None] * np.linspace(-0.5, 0.5, DILATED_LEN)
    xs = _interp_rows(sheared, FINAL_SEQ_LENGTH)[batch_shuffle]
    ys = labels[batch_shuffle]

    xs = (xs - xs.mean()) / xs.std()
    split_ix = int(num_total * train_split)
    return {"x": xs[:split_ix], "x_test": xs[split_ix:], "y": ys[:split_ix], "y_test": ys[split_ix:]}
