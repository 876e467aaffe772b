"""Each model family's head and blocks (models.adapters), and transfer, linear probe and gradual unfreezing on them.

Hugging Face models are built from tiny random configurations; timm and torchvision ones where those packages
import (timm needs a torchvision built for the installed torch, which a CPU-only torch wheel lacks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdflow.config import FinetuneSpec, TrainSpec
from kdflow.transfer import copy_matching_layers, head_and_backbone, set_trainable_blocks
from kdflow.zoo_specs import HFSpec, TimmSpec, TorchvisionSpec
from models import build_model
from models.adapters import Layout, layout
from models.mlp import MLP
from tasks.finetune import block_schedule, unfreeze_schedule


def tiny_bert(hidden: int = 16, layers: int = 2) -> HFSpec:
    return HFSpec(arch="hf", config={"model_type": "bert", "vocab_size": 40, "hidden_size": hidden,
                                     "num_hidden_layers": layers, "num_attention_heads": 2,
                                     "intermediate_size": 2 * hidden, "max_position_embeddings": 16})


class ResNetLike(nn.Module):
    """A ResNet's top level, as torchvision names it: stages side by side, the final layer `fc`."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
        self.layer2 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)


class ViTLike(nn.Module):
    """A timm ViT's top level: a class token on the model itself, one stack of blocks, `get_classifier()`."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = nn.Conv2d(3, 4, 4)
        self.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
        self.norm, self.head = nn.LayerNorm(4), nn.Linear(4, 3)

    def get_classifier(self) -> nn.Module:
        return self.head


def test_own_architecture_head_and_blocks():
    found = layout(MLP(input_shape=(40,), num_classes=3, hidden=[8, 8]))
    assert found.head == ("head",) and found.blocks == ("backbone.0", "backbone.1")


def test_stages_side_by_side_stay_whole_and_the_last_linear_is_the_head():
    assert layout(ResNetLike()) == Layout(("fc",), ("conv1", "bn1", "layer1", "layer2"))


def test_one_stack_is_split_into_its_blocks_and_a_token_goes_with_the_lowest():
    found = layout(ViTLike())
    assert found.head == ("head",)
    assert found.blocks == ("patch_embed", "blocks.0", "blocks.1", "blocks.2", "norm")
    assert [found.block_of(name) for name in ("cls_token", "blocks.2.weight", "norm.bias", "head.weight")] == [0, 3, 4, None]


def test_hf_head_is_the_classifier_beside_the_base_model_and_blocks_are_its_layers():
    torch.manual_seed(0)
    found = layout(build_model(tiny_bert(), (8,), 3))
    assert found.head == ("model.classifier",)
    assert found.blocks == ("model.bert.embeddings", "model.bert.encoder.layer.0", "model.bert.encoder.layer.1",
                            "model.bert.pooler")


def test_hf_reads_token_ids_as_floats_and_masks_the_padding():
    torch.manual_seed(0)
    model = build_model(tiny_bert(), (6,), 3).eval()
    ids = torch.tensor([[2.0, 7, 9, 3, 0, 0]])
    with torch.no_grad():
        logits = model(ids)
        # BERT's pad id is 0: the padded positions are masked, so the logits are the unpadded sentence's
        unpadded = model.model(input_ids=ids[:, :4].long()).logits
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits, unpadded)


def test_hf_transfer_reinitialises_the_head_of_another_label_count_and_copies_the_rest():
    torch.manual_seed(0)
    source = build_model(tiny_bert(), (8,), 5)
    target = build_model(tiny_bert(), (8,), 2)
    report = copy_matching_layers(source.state_dict(), target, ["head"])
    assert set(report.reinitialised) == {"model.classifier.weight", "model.classifier.bias"}
    assert set(report.copied) == set(source.state_dict()) - set(report.reinitialised)
    torch.testing.assert_close(target.state_dict()["model.bert.pooler.dense.weight"],
                               source.state_dict()["model.bert.pooler.dense.weight"])


def trainable(model: nn.Module) -> dict[str, bool]:
    found = layout(model)
    blocks = {name: [] for name in (*found.blocks, "head")}
    for name, parameter in model.named_parameters():
        index = found.block_of(name)
        blocks["head" if index is None else found.blocks[index]].append(parameter.requires_grad)
    assert all(len(set(flags)) == 1 for flags in blocks.values()), "a block is partly frozen"
    return {name: flags[0] for name, flags in blocks.items()}


def test_gradual_unfreezing_of_bert_trains_the_blocks_the_schedule_reports():
    torch.manual_seed(0)
    model = build_model(tiny_bert(), (8,), 3)
    spec = FinetuneSpec(strategy="gradual_unfreeze", unfreeze_every=2, train=TrainSpec(epochs=6))
    schedule = block_schedule(model, spec)
    assert schedule["trainable_blocks_by_epoch"] == {
        "1": [], "2": [], "3": ["model.bert.pooler"], "4": ["model.bert.pooler"],
        "5": ["model.bert.encoder.layer.1", "model.bert.pooler"],
        "6": ["model.bert.encoder.layer.1", "model.bert.pooler"]}
    hook = unfreeze_schedule(model, spec)
    for epoch, names in schedule["trainable_blocks_by_epoch"].items():
        hook(int(epoch))
        flags = trainable(model)
        assert flags.pop("head") is True
        assert [name for name, on in flags.items() if on] == names


def test_head_and_backbone_split_every_parameter_once():
    model = ViTLike()
    head, backbone = head_and_backbone(model)
    assert [id(p) for p in head] == [id(model.head.weight), id(model.head.bias)]
    assert len(head) + len(backbone) == len(list(model.parameters()))


@pytest.mark.zoo
def test_linear_probe_on_a_timm_resnet_freezes_every_block_but_the_classifier(zoo_or_skip):
    zoo_or_skip("timm")
    torch.manual_seed(0)
    model = build_model(TimmSpec(arch="timm", name="resnet10t"), (3, 16, 16), 4)
    found = layout(model)
    assert found.head == ("fc",) and found.blocks[-1] == "layer4"
    set_trainable_blocks(model, 0)
    assert [name for name, on in trainable(model).items() if on] == ["head"]
    assert set_trainable_blocks(model, 2) == list(found.blocks[-2:])


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "options", "blocks", "unfrozen"), [
    ("resnet10t", {}, ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"), ["layer3", "layer4"]),
    ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8, "depth": 2}, ("patch_embed", "blocks.0", "blocks.1",
                                                                            "norm"), ["blocks.1", "norm"])])
def test_gradual_unfreezing_of_a_timm_model_trains_the_blocks_the_schedule_reports(name, options, blocks, unfrozen,
                                                                                   zoo_or_skip):
    zoo_or_skip("timm")
    torch.manual_seed(0)
    model = build_model(TimmSpec(arch="timm", name=name, options=options), (3, 16, 16), 4)
    spec = FinetuneSpec(strategy="gradual_unfreeze", unfreeze_every=2, train=TrainSpec(epochs=6))
    schedule = block_schedule(model, spec)
    assert schedule["blocks"] == list(blocks)
    by_epoch = schedule["trainable_blocks_by_epoch"]
    assert by_epoch == {"1": [], "2": [], "3": unfrozen[1:], "4": unfrozen[1:], "5": unfrozen, "6": unfrozen}
    hook = unfreeze_schedule(model, spec)
    for epoch, names in by_epoch.items():
        hook(int(epoch))
        flags = trainable(model)
        assert flags.pop("head") is True
        # `trainable` counts a ViT's cls_token and pos_embed, in no block, with the lowest one: frozen with it
        assert [block for block, on in flags.items() if on] == names


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "final_layer"), [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_a_torchvision_model_gets_a_final_layer_for_the_task(name, final_layer, zoo_or_skip):
    zoo_or_skip("torchvision")
    model = build_model(TorchvisionSpec(arch="torchvision", name=name), (3, 32, 32), 4)
    assert layout(model).head == (final_layer,) and model.get_submodule(final_layer).out_features == 4


def test_a_saved_hf_model_loads_its_weights_and_gets_a_new_head_for_another_label_count(tmp_path):
    torch.manual_seed(0)
    saved = build_model(tiny_bert(), (8,), 5)
    saved.model.save_pretrained(tmp_path / "bert")
    torch.manual_seed(1)
    loaded = build_model(HFSpec(arch="hf", name=str(tmp_path / "bert"), pretrained=True), (8,), 2)
    for name, tensor in saved.state_dict().items():
        if not name.startswith("model.classifier"):
            assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.model.classifier.out_features == 2
