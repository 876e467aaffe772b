"""A model checkpoint: its architecture spec, input shape, classes and weights, loadable with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from torch import nn

from kdflow.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from kdflow.config import ModelSpec
from models import build_model

_MODEL_SPEC = TypeAdapter(ModelSpec)


def save_model(path: str | Path, model: nn.Module, spec, input_shape: tuple[int, ...], class_names: list[str],
               extra: dict[str, Any] | None = None) -> Path:
    payload = {
        "spec": spec.model_dump(mode="json"),
        "input_shape": list(input_shape),
        "class_names": list(class_names),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    return save_checkpoint(path, payload)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model, rebuilt from its spec and in eval mode, and the checkpoint's other entries."""
    payload = load_checkpoint(path)
    try:
        spec = _MODEL_SPEC.validate_python(payload["spec"])
        model = build_model(spec, tuple(payload["input_shape"]), len(payload["class_names"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a kdflow model checkpoint ({exc}); rerun the stage that writes it",
                              path) from None
    model.eval()
    payload["spec"] = spec
    return model, payload
