"""A teacher's starting weights: a local state dict (`.pt`/`.pth`, a kdflow checkpoint too), a `.safetensors`
file, or a registered MLflow model (`models:/kdflow-teacher@champion`, `models:/NAME/3`).

Nothing is unpickled: `.pt` files load with `weights_only=True`, and a registered model is read from the kdflow
checkpoint its run logged, not from the pickled or exported model. The origin (path and md5, or URI, version and
md5) goes into the teacher's lineage and MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdflow.artifacts import file_digest
from kdflow.config import ConfigError
from kdflow.transfer import TransferReport, copy_matching_layers

KEY = "train_teacher.weights"


class WeightsError(ConfigError):
    """Weights that cannot be read or do not fit the teacher: one line naming the file and the fix."""


@dataclass(frozen=True)
class Weights:
    state_dict: dict[str, torch.Tensor]
    origin: dict[str, str]  # kdflow.teacher_weights.* tags: path or uri, md5, version


def _tensors(payload, shown: str) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # a kdflow checkpoint
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise WeightsError(f"{shown} ({KEY}): not a state dict (a mapping of parameter names to tensors); fix: save "
                           "it with torch.save(model.state_dict(), path) or safetensors.torch.save_file")
    return payload


def read_file(path: Path, shown: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{shown} ({KEY}): no such file; fix: put the weights there or correct {KEY}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{shown} ({KEY}): reading .safetensors needs the safetensors package; "
                               "fix: pip install -e \".[zoo]\"") from None
        try:
            return _tensors(load_file(path, device="cpu"), shown)
        except SafetensorError as exc:
            raise WeightsError(f"{shown} ({KEY}): not a readable .safetensors file ({exc}); fix: save it again") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe (code-running) files
        raise WeightsError(f"{shown} ({KEY}): refused to load ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                           "fix: save a plain state dict, torch.save(model.state_dict(), path)") from None
    return _tensors(payload, shown)


def _registered(uri: str, root: Path, scratch: Path) -> Weights:
    from mlflow.exceptions import MlflowException

    from kdflow.tracking import project_client

    client, _ = project_client(root)
    name, _, which = uri.removeprefix("models:/").replace("@", "/@", 1).partition("/")
    try:
        version = (client.get_model_version_by_alias(name, which[1:]) if which.startswith("@")
                   else client.get_model_version(name, which))
        run = client.get_run(version.run_id)
        folder = Path(client.download_artifacts(version.run_id, "checkpoint", str(scratch)))
    except MlflowException as exc:
        raise WeightsError(f"{uri} ({KEY}): no such registered model version, or its run has no checkpoint "
                           f"({exc.message.splitlines()[0]}); fix: name a version kdflow registered") from None
    checkpoints = sorted(folder.glob("*.pt"))
    if len(checkpoints) != 1:
        raise WeightsError(f"{uri} ({KEY}): its run {run.info.run_id} logged {len(checkpoints)} checkpoints, not one")
    md5 = file_digest(checkpoints[0])
    expected = version.tags.get("kdflow.checkpoint_md5")
    if expected and expected != md5:
        raise WeightsError(f"{uri} ({KEY}): the checkpoint's md5 {md5} is not the {expected} the version recorded; "
                           "the artifact store was changed")
    origin = {"uri": uri, "version": str(version.version), "run_id": run.info.run_id, "md5": md5}
    return Weights(read_file(checkpoints[0], uri), origin)


def read_weights(ref: str, root: Path, scratch: Path) -> Weights:
    """The state dict `ref` names; a registered model's checkpoint is downloaded into `scratch`."""
    if ref.startswith("models:/"):
        return _registered(ref, Path(root), Path(scratch))
    path = Path(ref) if Path(ref).is_absolute() else Path(root) / ref
    state = read_file(path, ref)
    return Weights(state, {"path": ref, "md5": file_digest(path)})


def load_into(model: nn.Module, weights: Weights, ref: str, whole: bool) -> TransferReport:
    """Copy every layer of the weights whose name and shape match the model. With `whole` (a teacher that only
    labels, `epochs: 0`), a layer the weights do not give is an error: it would label with random weights."""
    try:
        report = copy_matching_layers(weights.state_dict, model)
    except ValueError:
        report = TransferReport(reinitialised=dict.fromkeys(model.state_dict(), "not in the weights"))
    if not report.copied or (whole and report.reinitialised):
        missing = list(report.reinitialised)
        raise WeightsError(
            f"{ref} ({KEY}): the weights do not give {len(missing)} of the teacher's tensors, e.g. "
            f"'{missing[0]}' ({report.reinitialised[missing[0]]}); fix: give weights saved from the model "
            "train_teacher.model builds" + (" (or train: epochs > 0 to train what they lack)" if whole else ""))
    return report
