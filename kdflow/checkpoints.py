"""A model checkpoint: its architecture spec, input shape, classes and weights, loadable with weights_only=True.

The stored spec is a record, never an instruction: a model is rebuilt from the spec the caller holds from
params.yaml, and a checkpoint whose spec differs is refused. A `custom` spec names a factory that building the
model imports and calls, so a file that chose it could run any function with any keywords.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import nn

from kdflow.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from kdflow.config import ModelSpec, Params
from kdflow.layout import CATALOGUE
from models import build_model

_MODEL_SPEC = TypeAdapter(ModelSpec)


def expected_spec(params: Params, model: str):
    """The architecture params.yaml gives the pipeline model `model`: the teacher's, or the student's for the
    students and for the target models (fine-tuned from the distilled student)."""
    return params.train_teacher.model if CATALOGUE[model].role == "teacher" else params.distill.student


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


def load_model(path: str | Path, spec) -> tuple[nn.Module, dict[str, Any]]:
    """The model, built from `spec` (the architecture params.yaml gives it) and in eval mode, and the checkpoint's
    other entries. A checkpoint saved with another spec is a CheckpointError: its weights would not fit, and its
    spec is not built."""
    payload = load_checkpoint(path)
    try:
        stored = _MODEL_SPEC.validate_python(payload["spec"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise CheckpointError(f"{path}: not a kdflow model checkpoint (no valid spec: {str(exc).splitlines()[0]}); "
                              "rerun the stage that writes it", path) from None
    if stored != spec:
        raise CheckpointError(f"{path}: saved for the architecture {stored.model_dump(mode='json')}, but params.yaml "
                              f"gives {spec.model_dump(mode='json')}; it is not loaded (nor its spec built)", path)
    try:
        model = build_model(spec, tuple(payload["input_shape"]), len(payload["class_names"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a kdflow model checkpoint ({exc}); rerun the stage that writes it",
                              path) from None
    model.eval()
    payload["spec"] = spec
    return model, payload
