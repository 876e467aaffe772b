"""`kdflow.transfer`: layers copied by name and shape, the rest re-initialised with a reason."""

from __future__ import annotations

import pytest
import torch

from kdflow.config import CNN1DSpec, MLPSpec
from kdflow.transfer import TransferError, copy_matching_layers, set_trainable_blocks
from models import build_model

INPUT_SHAPE = (40,)
BACKBONE = ["backbone.0.0.weight", "backbone.0.0.bias", "backbone.1.0.weight", "backbone.1.0.bias"]
HEAD = ["head.weight", "head.bias"]


def mlp(num_classes: int, seed: int, hidden=(8, 6)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(MLPSpec(arch="mlp", hidden=list(hidden)), INPUT_SHAPE, num_classes)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_backbone_copied_and_mismatched_head_kept() -> None:
    source = mlp(5, seed=0)
    target = mlp(3, seed=1)
    target_init = snapshot(target)
    report = copy_matching_layers(source.state_dict(), target)

    assert report.copied == BACKBONE
    state = target.state_dict()
    for name in BACKBONE:
        assert torch.equal(state[name], source.state_dict()[name])
        assert not torch.equal(state[name], target_init[name])  # the seeds differ, so copying changed something
    assert report.reinitialised == {
        "head.weight": "shape mismatch: source (5, 6), target (3, 6)",
        "head.bias": "shape mismatch: source (5,), target (3,)",
    }
    for name in HEAD:
        assert "shape mismatch" in report.reinitialised[name]
        assert torch.equal(state[name], target_init[name])


def test_copied_tensors_are_not_shared_with_the_source() -> None:
    source = mlp(5, seed=0)
    target = mlp(3, seed=1)
    copy_matching_layers(source.state_dict(), target)
    with torch.no_grad():
        target.backbone[0][0].weight.add_(1.0)
    assert not torch.equal(target.backbone[0][0].weight, source.backbone[0][0].weight)


def test_reinit_by_request_on_a_same_shape_head() -> None:
    source = mlp(5, seed=0)
    target = mlp(5, seed=1)
    target_init = snapshot(target)
    report = copy_matching_layers(source.state_dict(), target, reinit=["head"])

    assert report.copied == BACKBONE
    assert set(report.reinitialised) == set(HEAD)
    for name in HEAD:
        assert "by request" in report.reinitialised[name]
        assert report.reinitialised[name] == "re-initialised by request (finetune.reinit)"
        assert torch.equal(target.state_dict()[name], target_init[name])
        assert not torch.equal(target.state_dict()[name], source.state_dict()[name])


def test_same_shape_without_reinit_copies_everything() -> None:
    source = mlp(5, seed=0)
    target = mlp(5, seed=1)
    report = copy_matching_layers(source.state_dict(), target)
    assert report.copied == BACKBONE + HEAD
    assert report.reinitialised == {}
    x = torch.randn(4, 40)
    assert torch.equal(target(x), source(x))


def test_reinit_prefix_matches_whole_name_parts() -> None:
    source = mlp(5, seed=0)
    target = mlp(5, seed=1)
    # "backbone.1" re-initialises the second block only; "back" and "hea" are not name parts and match nothing.
    report = copy_matching_layers(source.state_dict(), target, reinit=["backbone.1", "back", "hea"])
    assert report.copied == ["backbone.0.0.weight", "backbone.0.0.bias", *HEAD]
    assert list(report.reinitialised) == ["backbone.1.0.weight", "backbone.1.0.bias"]


def test_layer_missing_from_source() -> None:
    source = mlp(5, seed=0, hidden=(8,))
    target = mlp(5, seed=1, hidden=(8, 6))
    report = copy_matching_layers(source.state_dict(), target, reinit=["head"])
    assert report.copied == ["backbone.0.0.weight", "backbone.0.0.bias"]
    assert report.reinitialised == {
        "backbone.1.0.weight": "not in the source model",
        "backbone.1.0.bias": "not in the source model",
        "head.weight": "re-initialised by request (finetune.reinit)",
        "head.bias": "re-initialised by request (finetune.reinit)",
    }


def test_reinit_takes_precedence_over_a_shape_mismatch() -> None:
    report = copy_matching_layers(mlp(5, seed=0).state_dict(), mlp(3, seed=1), reinit=["head"])
    assert report.reinitialised == {name: "re-initialised by request (finetune.reinit)" for name in HEAD}


def test_report_lines() -> None:
    report = copy_matching_layers(mlp(5, seed=0).state_dict(), mlp(3, seed=1))
    lines = report.lines()
    assert lines[0] == "copied          backbone.0.0.weight"
    assert lines[-1] == "re-initialised  head.bias  (shape mismatch: source (5,), target (3,))"
    assert report.as_dict()["copied"] == BACKBONE


def test_no_shared_layer_raises() -> None:
    torch.manual_seed(0)
    cnn = build_model(CNN1DSpec(arch="cnn1d", channels=[4], pool="max"), INPUT_SHAPE, 5)
    target = mlp(3, seed=1)
    target_init = snapshot(target)
    with pytest.raises(TransferError) as caught:
        copy_matching_layers(cnn.state_dict(), target)
    assert str(caught.value) == "the target model shares no layer (same name and shape) with the source model"
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, target_init[name])


def test_half_a_layer_is_not_a_shared_layer() -> None:
    torch.manual_seed(0)
    cnn = build_model(CNN1DSpec(arch="cnn1d", channels=[4], pool="max"), INPUT_SHAPE, 5)
    with pytest.raises(TransferError):
        copy_matching_layers(cnn.state_dict(), mlp(5, seed=1))


def test_everything_reinitialised_by_request_raises() -> None:
    with pytest.raises(TransferError):
        copy_matching_layers(mlp(5, seed=0).state_dict(), mlp(5, seed=1), reinit=["backbone", "head"])


def trainable(model: torch.nn.Module) -> list[bool]:
    """Per backbone block, whether all of its parameters train, then the head's."""
    blocks = [all(p.requires_grad for p in block.parameters()) for block in model.backbone]
    frozen = [not any(p.requires_grad for p in block.parameters()) for block in model.backbone]
    assert all(a != b for a, b in zip(blocks, frozen))  # a block is either wholly frozen or wholly trainable
    return blocks + [all(p.requires_grad for p in model.head.parameters())]


@pytest.mark.parametrize(
    ("from_top", "expected"),
    [
        (0, [False, False, False, True]),  # linear probe: the head alone
        (1, [False, False, True, True]),
        (2, [False, True, True, True]),
        (3, [True, True, True, True]),
        (10, [True, True, True, True]),
    ],
)
def test_set_trainable_blocks_freezes_the_lower_blocks(from_top: int, expected: list[bool]) -> None:
    model = mlp(3, seed=0, hidden=(8, 6, 4))
    assert len(model.backbone) == 3
    set_trainable_blocks(model, from_top)
    assert trainable(model) == expected


def test_set_trainable_blocks_can_unfreeze_again() -> None:
    model = mlp(3, seed=0, hidden=(8, 6, 4))
    set_trainable_blocks(model, 0)
    set_trainable_blocks(model, 2)
    assert trainable(model) == [False, True, True, True]


def test_frozen_blocks_get_no_gradient() -> None:
    model = mlp(3, seed=0, hidden=(8, 6, 4))
    set_trainable_blocks(model, 1)
    model(torch.randn(5, 40)).sum().backward()
    assert model.backbone[0][0].weight.grad is None
    assert model.backbone[1][0].weight.grad is None
    assert model.backbone[2][0].weight.grad is not None
    assert model.head.weight.grad is not None
