"""`models.build_model`: every architecture is a Sequential backbone plus a Linear head, with the right shapes."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from kdflow.checkpoints import load_model, save_model
from kdflow.config import CNN1DSpec, CNN2DSpec, CustomSpec, LinearSpec, MLPSpec
from models import ARCHITECTURES, ModelError, build_model, count_parameters
from models.adapters import Layout, layout

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


def test_cnn2d_shapes_blocks_and_parameter_count() -> None:
    spec = CNN2DSpec(arch="cnn2d", channels=[4, 6], kernel_size=3, pool="flatten")
    model = build_model(spec, (1, 8, 8), 5)
    assert isinstance(model.backbone, nn.Sequential) and isinstance(model.head, nn.Linear)
    assert len(model.backbone) == 3  # two conv blocks and the flatten block
    # Kernel 3, padding 1, stride 1 keeps 8x8: the head sees 6 channels x 64 positions.
    assert model.head.in_features == 6 * 64
    assert count_parameters(model) == (1 * 4 * 9 + 4) + (4 * 6 * 9 + 6) + (6 * 64 * 5 + 5)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 5)


def test_cnn2d_adds_a_missing_channel_axis_and_pools_globally() -> None:
    torch.manual_seed(0)
    model = build_model(CNN2DSpec(arch="cnn2d", channels=[4], stride=2, pool="avg", hidden=7), (8, 8), 3).eval()
    x = torch.randn(2, 8, 8)
    assert torch.equal(model(x), model(x.unsqueeze(1)))
    assert model.head.in_features == 7


def test_cnn2d_needs_an_image_shape() -> None:
    with pytest.raises(ValueError, match=r"cnn2d needs an image-like input .* got \[64\]; set data.source.reshape"):
        build_model(CNN2DSpec(arch="cnn2d"), (64,), 3)


FACTORIES = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width, num_classes):
        super().__init__()
        self.backbone = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(width, 8), nn.Tanh()))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def make_student(input_shape, num_classes, scale=1):
    width = 1
    for size in input_shape:
        width *= size
    net = Net(width, num_classes)
    net.received = (tuple(input_shape), num_classes, scale)
    return net


def headless(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 8), nn.Tanh(), nn.Linear(8, num_classes))


def no_classifier(input_shape, num_classes):
    return nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, num_classes, 40), nn.Flatten())


def not_a_module(input_shape, num_classes):
    return "a model"
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_pkg.nets"
    for name in ("my_pkg.nets", "my_pkg"):
        sys.modules.pop(name, None)


def test_custom_factory_gets_the_input_shape_class_count_and_options(user_nets) -> None:
    spec = CustomSpec(arch="custom", factory=f"{user_nets}:make_student", options={"scale": 3})
    model = build_model(spec, (1, 8, 8), 4)
    assert model.received == ((1, 8, 8), 4, 3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize(("factory", "message"), [
    ("no_classifier", r"arch custom: factory 'my_pkg.nets:no_classifier' built a Sequential with no classifier "
                      r"layer to find: .*; give the module a `head`"),
    ("not_a_module", r"arch custom: factory 'my_pkg.nets:not_a_module' returned str, not a torch.nn.Module"),
    ("missing", r"arch custom: 'my_pkg.nets' has no function 'missing' \(factory 'my_pkg.nets:missing'\)"),
])
def test_custom_factory_errors(user_nets, factory: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_model(CustomSpec(arch="custom", factory=f"{user_nets}:{factory}"), (40,), 3)


def test_a_custom_model_without_head_attributes_has_its_last_linear_as_head(user_nets) -> None:
    model = build_model(CustomSpec(arch="custom", factory=f"{user_nets}:headless"), (40,), 3)
    assert layout(model) == Layout(("3",), ("1",))


def test_custom_factory_module_not_importable() -> None:
    with pytest.raises(ModelError, match=r"cannot import 'no_such_pkg.nets' of factory 'no_such_pkg.nets:f'"):
        build_model(CustomSpec(arch="custom", factory="no_such_pkg.nets:f"), (40,), 3)


@pytest.mark.parametrize("spec", [
    CNN2DSpec(arch="cnn2d", channels=[3], pool="max"),
    CustomSpec(arch="custom", factory="my_pkg.nets:make_student", options={"scale": 2}),
], ids=["cnn2d", "custom"])
def test_checkpoint_rebuilds_the_model(spec, user_nets, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(spec, (1, 8, 8), 4).eval()
    path = save_model(tmp_path / "model.pt", model, spec, (1, 8, 8), ["a", "b", "c", "d"])
    loaded, meta = load_model(path, spec)
    assert meta["spec"] == spec and type(loaded).__name__ == type(model).__name__
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
