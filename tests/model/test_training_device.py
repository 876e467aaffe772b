"""`fit` on a chosen device: the setting is validated, the model comes back where it was, bf16 autocast trains."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kdflow.config import TrainSpec
from kdflow.training import fit, resolve_device


def two_blobs(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    return torch.randn(n, 2, generator=g) * 0.5 + (y.float() * 4 - 2).unsqueeze(1), y


def test_auto_is_the_cpu_without_a_gpu_and_cuda_without_one_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto picks it")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="train.device is 'cuda' but no CUDA device is available"):
        resolve_device("cuda")


def test_a_gpu_index_or_mps_that_is_not_there_is_an_error_naming_the_setting():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="train.device is 'cuda:1' but no CUDA device is available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="train.device is 'mps' but MPS \\(Apple silicon\\) is not available"):
        resolve_device("mps")
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_device_setting_takes_mps_and_a_gpu_index_and_nothing_else():
    assert [TrainSpec(device=d).device for d in ("mps", "cuda:0", "cuda:12")] == ["mps", "cuda:0", "cuda:12"]
    for wrong in ("gpu", "cuda:", "cuda:-1", "CPU"):
        with pytest.raises(ValidationError, match="String should match pattern"):
            TrainSpec(device=wrong)


def test_bf16_autocast_trains_and_leaves_float32_weights_on_the_cpu():
    x, y = two_blobs()
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    result = fit(model, x, [y], TrainSpec(epochs=20, batch_size=16, lr=0.05, bf16=True, device="cpu"), seed=0)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (model(x).argmax(1) == y).float().mean().item() == 1.0
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_bf16_changes_the_arithmetic_not_the_default():
    x, y = two_blobs()
    weights = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(2, 2)
        fit(model, x, [y], TrainSpec(epochs=2, batch_size=16, lr=0.05, bf16=bf16), seed=0)
        weights[bf16] = model.weight.detach().clone()
    assert not torch.equal(weights[False], weights[True])
    assert torch.allclose(weights[False], weights[True], atol=0.05)
