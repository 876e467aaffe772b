"""`kdflow.transfer`: layers copied by name and shape, the rest re-initialised with a reason."""

from __future__ import annotations

import numpy as np
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
    assert lines[len(BACKBONE) + 1] == "re-initialised  head.bias  (shape mismatch: source (5,), target (3,))"
    assert lines[-1] == "skipped         head.bias  (the target's layer is re-initialised)"
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


def test_report_names_the_skipped_source_layers() -> None:
    source = mlp(5, seed=0, hidden=(8, 6, 4))
    report = copy_matching_layers(source.state_dict(), mlp(3, seed=1), reinit=["head"])
    assert report.copied == BACKBONE
    assert report.skipped == {
        "backbone.2.0.weight": "no layer of this name in the target",
        "backbone.2.0.bias": "no layer of this name in the target",
        "head.weight": "the target's layer is re-initialised",
        "head.bias": "the target's layer is re-initialised",
    }
    assert report.lines()[-1] == "skipped         head.bias  (the target's layer is re-initialised)"
    assert report.as_dict()["skipped"] == report.skipped


def test_finetune_refuses_a_target_that_shares_no_layer(tmp_path, capsys) -> None:
    """A linear student has only a head; with the head re-initialised nothing would transfer: finetune says so,
    naming itself, the source and the target architectures, and writes no target model."""
    from kdflow.artifacts import file_digest, write_json, write_parquet
    from kdflow.checkpoints import save_model
    from kdflow.config import LinearSpec, validate
    from kdflow.datasets import to_frame
    from kdflow.layout import SPLITS, ProjectPaths
    from tasks import finetune

    paths = ProjectPaths.at(tmp_path)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        write_parquet(paths.split(split), to_frame(np.array(["a", "b"]), rng.random((2, 40)), np.array([0, 1])))
    write_json(paths.dataset_card, {"input_shape": [40], "source_classes": ["0", "1"], "target_classes": ["2", "3"],
                                    "splits": {split: {"md5": file_digest(paths.split(split))} for split in SPLITS}})
    linear = LinearSpec(arch="linear")
    save_model(paths.checkpoint("student_distilled"), build_model(linear, INPUT_SHAPE, 2), linear, INPUT_SHAPE, ["0", "1"])

    with pytest.raises(TransferError) as caught:
        finetune.run(validate({"distill": {"student": {"arch": "linear"}}, "finetune": {"reinit": ["head"]}}), paths)
    assert str(caught.value) == (
        "finetune: the target model shares no layer (same name and shape) with the source model: source "
        f"student_distilled (linear, {paths.checkpoint('student_distilled')}), target model (linear, finetune.reinit "
        "['head']); fix: re-initialise fewer layers (take backbone prefixes out of finetune.reinit), or distil a "
        "student with a backbone (arch linear has only a head), rather than fine-tune a model that learnt nothing "
        "from the source")
    assert not paths.target_dir.exists()
