"""`models.build_model`: every architecture is a Sequential backbone plus a Linear head, with the right shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdflow.config import CNN1DSpec, LinearSpec, MLPSpec
from models import ARCHITECTURES, build_model, count_parameters

SPECS = {
    "mlp": MLPSpec(arch="mlp", hidden=[16, 8]),
    "mlp_dropout": MLPSpec(arch="mlp", hidden=[16], dropout=0.2),
    "cnn1d_flatten": CNN1DSpec(arch="cnn1d", channels=[4, 4], kernel_size=5, stride=2),
    "cnn1d_max": CNN1DSpec(arch="cnn1d", channels=[4, 4], kernel_size=5, stride=1, padding_mode="circular", pool="max"),
    "cnn1d_avg_hidden": CNN1DSpec(arch="cnn1d", channels=[3], pool="avg", hidden=6, dropout=0.1),
    "linear": LinearSpec(arch="linear"),
}


def test_registry_names() -> None:
    assert sorted(ARCHITECTURES) == ["cnn1d", "cnn2d", "linear", "mlp"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_output_shape_and_structure(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(SPECS[name], (40,), 5)
    assert isinstance(model.backbone, nn.Sequential)
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == 5
    model.eval()
    assert model(torch.randn(3, 40)).shape == (3, 5)
    assert model(torch.randn(1, 40)).shape == (1, 5)


def test_linear_has_an_empty_backbone() -> None:
    model = build_model(LinearSpec(arch="linear"), (40,), 5)
    assert len(model.backbone) == 0
    assert count_parameters(model) == 40 * 5 + 5


def test_mlp_blocks_and_parameter_count() -> None:
    model = build_model(MLPSpec(arch="mlp", hidden=[64, 64]), (40,), 5)
    assert len(model.backbone) == 2
    expected = 40 * 64 + 64 + 64 * 64 + 64 + 64 * 5 + 5
    assert expected == 7109
    assert count_parameters(model) == expected


def test_cnn1d_flatten_width_and_parameter_count() -> None:
    # Length 40, kernel 5, padding 2, stride 2: (40 + 4 - 5) // 2 + 1 = 20, then (20 + 4 - 5) // 2 + 1 = 10.
    model = build_model(SPECS["cnn1d_flatten"], (40,), 5)
    assert len(model.backbone) == 3  # two conv blocks and the flatten block
    assert model.head.in_features == 4 * 10
    expected = (1 * 4 * 5 + 4) + (4 * 4 * 5 + 4) + (40 * 5 + 5)
    assert count_parameters(model) == expected


def test_cnn1d_accepts_a_channel_axis() -> None:
    torch.manual_seed(0)
    model = build_model(SPECS["cnn1d_flatten"], (40,), 5).eval()
    x = torch.randn(2, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))
    two_channels = build_model(CNN1DSpec(arch="cnn1d", channels=[4]), (2, 40), 3)
    assert two_channels(torch.randn(2, 2, 40)).shape == (2, 3)


def test_circular_max_pool_cnn_is_invariant_to_a_circular_shift() -> None:
    # Stride 1 with circular padding makes every conv layer shift-equivariant, ReLU is pointwise and the global
    # max is order-free, so shifting the input round by any number of steps leaves the logits unchanged.
    torch.manual_seed(0)
    model = build_model(SPECS["cnn1d_max"], (40,), 5).eval()
    x = torch.randn(4, 40)
    with torch.no_grad():
        reference = model(x)
        for shift in (1, 7, -3):
            torch.testing.assert_close(model(torch.roll(x, shift, dims=1)), reference, rtol=0, atol=1e-6)


def test_strided_or_zero_padded_cnn_is_not_shift_invariant() -> None:
    # The property above is the padding and stride's doing, not a test that cannot fail.
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    for spec in (
        CNN1DSpec(arch="cnn1d", channels=[4, 4], stride=2, padding_mode="circular", pool="max"),
        CNN1DSpec(arch="cnn1d", channels=[4, 4], stride=1, padding_mode="zeros", pool="max"),
    ):
        torch.manual_seed(0)
        model = build_model(spec, (40,), 5).eval()
        with torch.no_grad():
            assert (model(torch.roll(x, 1, dims=1)) - model(x)).abs().max() > 1e-3


def test_unknown_arch_in_build_model() -> None:
    class Fake:
        arch = "gru"

        def model_dump(self, exclude):
            return {}

    with pytest.raises(ValueError, match=r"unknown arch 'gru'; allowed: cnn1d, cnn2d, linear, mlp, custom"):
        build_model(Fake(), (40,), 5)
