"""`fit` with a resume file: an interrupted run continued from its saved state ends where an uninterrupted one does.

The model has dropout (torch's global RNG), trains with Adam under a cosine schedule and early stopping, and
unfreezes its first layer only from epoch 3 (a `before_epoch` hook, as gradual unfreezing does), so every piece of
the saved state matters. The interruption here is an exception from `on_epoch`; tests/pipeline/test_faults.py
kills a real stage process with SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from kdflow.artifacts import ArtifactError, load_checkpoint
from kdflow.checkpoints import save_model
from kdflow.config import MLPSpec, TrainSpec
from kdflow.resume import ResumeFile, training_fingerprint
from kdflow.training import fit
from tests.conftest import REPO_ROOT

SPEC = TrainSpec(epochs=8, batch_size=16, optimizer="adam", lr=0.01, schedule="cosine", monitor="val_loss", patience=6)


class Interrupted(Exception):
    pass


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x[:64], y[:64], x[64:], y[64:]


def fresh_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def unfreeze_first_layer_from_epoch_3(model: nn.Module):
    def hook(epoch: int) -> None:
        for parameter in model[0].parameters():
            parameter.requires_grad_(epoch >= 3)
    return hook


def train(resume: ResumeFile | None, stop_after: int | None = None, spec: TrainSpec = SPEC):
    x, y, vx, vy = problem()
    model = fresh_model()
    seen: list[int] = []

    def on_epoch(epoch: int, record: dict) -> None:
        seen.append(epoch)
        if epoch == stop_after:
            raise Interrupted

    result = fit(model, x, [y], spec, seed=5, val=(vx, vy), before_epoch=unfreeze_first_layer_from_epoch_3(model),
                 on_epoch=on_epoch, resume=resume)
    return model, result, seen


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in history]


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    reference_model, reference, _ = train(None)
    assert reference.best_epoch > 3  # the resumed part must matter for the kept weights

    resume = ResumeFile(tmp_path / "state.pt", "fingerprint-a")
    with pytest.raises(Interrupted):
        train(resume, stop_after=4)
    saved = load_checkpoint(resume.path)  # interrupted while finishing epoch 4: the last saved state is epoch 3's
    assert saved["epoch"] == 3 and len(saved["history"]) == 3
    assert saved["requires_grad"]["0.weight"] is True  # the hook unfroze it for epoch 3

    model, result, seen = train(resume)
    assert result.resumed_from_epoch == 3
    assert seen == list(range(1, 9))  # epochs 1-3 replayed to on_epoch, 4-8 trained
    assert without_timings(result.history) == without_timings(reference.history)
    assert result.best_epoch == reference.best_epoch
    for name, tensor in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_frozen_flags_are_restored_without_the_hook(tmp_path) -> None:
    """The saved requires_grad flags come back even when nothing reapplies them."""
    resume = ResumeFile(tmp_path / "state.pt", "fp")
    with pytest.raises(Interrupted):
        train(resume, stop_after=2)  # epoch 1's state saved
    assert load_checkpoint(resume.path)["requires_grad"]["0.weight"] is False
    x, y, vx, vy = problem()
    model = fresh_model()
    fit(model, x, [y], SPEC.model_copy(update={"epochs": 2}), seed=5, val=(vx, vy), resume=resume)
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad


def test_a_state_with_another_fingerprint_is_not_resumed(tmp_path, capsys) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        train(ResumeFile(path, "old-settings"), stop_after=4)
    _, result, seen = train(ResumeFile(path, "new-settings"))
    assert result.resumed_from_epoch == 0 and seen == list(range(1, 9))
    assert f"not resuming: {path} was saved for other params or inputs" in capsys.readouterr().out


def test_a_tampered_state_is_refused_and_training_starts_afresh(tmp_path, capsys) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(Interrupted):
        train(ResumeFile(path, "fp"), stop_after=4)
    path.write_bytes(path.read_bytes()[:500])
    _, result, _ = train(ResumeFile(path, "fp"))
    assert result.resumed_from_epoch == 0
    assert f"not resuming: {path}: refused to load" in capsys.readouterr().out


def test_saving_every_n_epochs_and_after_an_early_stop(tmp_path) -> None:
    resume = ResumeFile(tmp_path / "state.pt", "fp", every=3)
    with pytest.raises(Interrupted):
        train(resume, stop_after=5)
    assert load_checkpoint(resume.path)["epoch"] == 3
    stopping = SPEC.model_copy(update={"patience": 1, "min_delta": 100.0})  # no epoch after the first counts
    _, result, _ = train(ResumeFile(tmp_path / "stop.pt", "fp", every=5), spec=stopping)
    assert result.stopped_early and len(result.history) == 2
    saved = load_checkpoint(tmp_path / "stop.pt")
    assert saved["epoch"] == 2 and saved["stopped_early"] is True
    _, again, seen = train(ResumeFile(tmp_path / "stop.pt", "fp", every=5), spec=stopping)
    assert again.resumed_from_epoch == 2 and seen == [1, 2] and again.best_epoch == 1


def test_fingerprint_follows_settings_weights_and_data() -> None:
    x, y, _, _ = problem()
    base = training_fingerprint({"lr": 0.1}, fresh_model(), [x, y])
    assert base == training_fingerprint({"lr": 0.1}, fresh_model(), [x, y])
    assert base != training_fingerprint({"lr": 0.2}, fresh_model(), [x, y])
    assert base != training_fingerprint({"lr": 0.1}, fresh_model(), [x, y.flip(0)])
    other = fresh_model()
    with torch.no_grad():
        other[0].bias[0] += 1e-6
    assert base != training_fingerprint({"lr": 0.1}, other, [x, y])


def test_a_batchnorm_models_fingerprint_covers_its_0_dim_step_counter() -> None:
    # BatchNorm's num_batches_tracked has no dimensions: every ResNet crashed on it before its first resumable epoch.
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    base = training_fingerprint({}, model, [])
    model[1].num_batches_tracked += 1
    assert training_fingerprint({}, model, []) != base
    by_hand = hashlib.sha256(b"{}" + b"torch.int64()" + (7).to_bytes(8, "little")).hexdigest()
    assert training_fingerprint({}, nn.Module(), [torch.tensor(7)]) == by_hand


def test_a_resumed_model_is_saved_to_the_same_bytes_as_an_uninterrupted_one(tmp_path) -> None:
    """DVC compares checkpoints by md5: the same weights must give the same file, however they were reached."""
    reference_model, _, _ = train(None)
    resume = ResumeFile(tmp_path / "state.pt", "fp")
    with pytest.raises(Interrupted):
        train(resume, stop_after=4)
    resumed_model, result, _ = train(resume)
    assert result.resumed_from_epoch == 3
    spec = MLPSpec(arch="mlp")
    straight = save_model(tmp_path / "straight" / "model.pt", reference_model, spec, (6,), ["a", "b"])
    resumed = save_model(tmp_path / "resumed" / "model.pt", resumed_model, spec, (6,), ["a", "b"])
    assert straight.read_bytes() == resumed.read_bytes()


HOLDER = """
import sys, time
from pathlib import Path
from kdflow.resume import ResumeFile
with ResumeFile(Path(sys.argv[1]), "fp").held():
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_state_a_live_process_holds_is_neither_resumed_nor_touched(tmp_path) -> None:
    resume = ResumeFile(tmp_path / "state.pt", "fp")
    with pytest.raises(Interrupted):
        train(resume, stop_after=4)
    saved = resume.path.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(resume.path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(ArtifactError) as caught:
            with resume.held():
                pytest.fail("took a state a live process holds")
        assert str(caught.value) == (f"{resume.path}: in use by a training that is still running (pid {holder.pid} on "
                                     f"{socket.gethostname()}); not resumed from, nor touched")
        assert caught.value.fix == "wait for that run to finish (or stop it) before running the stage again"
        assert resume.path.read_bytes() == saved
    finally:
        holder.kill()
        holder.wait()
    with resume.held():  # the kernel released the dead holder's lock: its state is resumable again
        _, result, _ = train(resume)
    assert result.resumed_from_epoch == 3
