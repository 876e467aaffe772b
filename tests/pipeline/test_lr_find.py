"""`kdflow lr-find STAGE` on the tiny trained project: the plot, the suggestion and the MLflow run."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow

STEPS = 40


@pytest.mark.parametrize(("stage", "overrides", "scale"), [
    ("train_teacher", [], 1.0),
    ("distill", [], 1.0),
    # 25 target samples in one batch against a reference of 5: linear scaling multiplies every rate by 5.
    ("finetune", ["-S", "+finetune.train.lr_scaling=linear", "-S", "+finetune.train.reference_batch_size=5"], 5.0),
])
def test_lr_find_plots_suggests_and_logs(project_copy, monkeypatch, stage, overrides, scale) -> None:
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from cli.main import app

    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    root = project_copy()
    result = CliRunner().invoke(app, ["lr-find", stage, "--root", str(root), "--params", str(root / "params.yaml"),
                                      "--steps", str(STEPS), "--min-lr", "1e-5", "--max-lr", "10", *overrides])
    assert result.exit_code == 0, result.output
    plot = root / "plots" / "lr_find" / f"{stage}.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((root / "plots" / "lr_find" / f"{stage}.json").read_text())
    assert curve["lrs"][0] == pytest.approx(1e-5) and 2 <= len(curve["lrs"]) <= STEPS
    assert curve["suggested_lr"] in curve["lrs"] and curve["min_loss_lr"] in curve["lrs"]
    assert curve["suggested_lr"] <= curve["min_loss_lr"]
    assert curve["suggested_train_lr"] == pytest.approx(curve["suggested_lr"] / scale)
    assert f"{stage}: suggested learning rate {curve['suggested_lr']:.3g}" in result.output
    assert (f"train.lr = {curve['suggested_train_lr']:.3g}" in result.output) == (scale != 1.0)

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id],
                             filter_string=f"attributes.run_name = 'lr_find:{stage}'")[0]
    assert run.data.metrics["suggested_lr"] == pytest.approx(curve["suggested_lr"])
    history = client.get_metric_history(run.info.run_id, "lr_find_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(curve["losses"], nan_ok=True)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "lr_find")} == {
        f"lr_find/{stage}.png", f"lr_find/{stage}.json"}


def test_lr_find_refuses_soft_labels_of_another_teacher(project_copy) -> None:
    """lr-find trains on the stage's inputs as the stage would: stale ones stop it the same way."""
    from click.testing import CliRunner

    from kdflow.artifacts import file_digest, load_checkpoint, save_checkpoint
    from cli.main import app
    from kdflow.layout import ProjectPaths

    root = project_copy()
    paths = ProjectPaths.at(root)
    old_teacher = file_digest(paths.checkpoint("teacher"))
    payload = load_checkpoint(paths.checkpoint("teacher"))
    payload["state_dict"] = {name: tensor + 1 for name, tensor in payload["state_dict"].items()}  # retrained
    save_checkpoint(paths.checkpoint("teacher"), payload)
    result = CliRunner().invoke(app, ["lr-find", "distill", "--root", str(root), "--params", str(root / "params.yaml"),
                                      "--offline"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: {paths.soft_labels_manifest}: made from artifacts/teacher/teacher.pt md5 {old_teacher}, which is now "
        f"md5 {file_digest(paths.checkpoint('teacher'))}: stale; fix: rerun the stage 'soft_labels', which writes it "
        "(`dvc repro soft_labels` or `kdflow run`)")
    assert not (root / "plots" / "lr_find").exists()


class Stop(Exception):
    """Raised once what a training starts from is captured: nothing needs to train."""


def optimised(spec, params) -> dict:
    """What an optimiser is made for: its settings, its parameters (initial values, whether they train in the first
    epoch) and each group's learning rate."""
    groups = [group if isinstance(group, dict) else {"params": [group]} for group in params]
    tensors = [p for group in groups for p in group["params"]]
    return {"train": spec.model_dump(), "values": [p.detach().clone() for p in tensors],
            "trainable": [p.requires_grad for p in tensors], "group_lrs": [g.get("lr", spec.lr) for g in groups]}


@pytest.mark.parametrize(("stage", "model"), [("train_teacher", "teacher"), ("distill", "student_distilled"),
                                              ("student_hard_labels", "student_hard_labels"),
                                              ("student_scratch", "student_scratch"),
                                              ("finetune", "target_finetuned"), ("target_scratch", "target_scratch")])
def test_lr_find_sweeps_what_the_stage_trains(project_copy, monkeypatch, stage, model) -> None:
    """The first model the stage trains, as `fit` receives it, and the one lr-find's range test makes its optimiser
    for: same initial weights (finetune's transferred from the student), first-epoch trainable layers, param groups,
    optimiser settings, data and loss."""
    import importlib

    import kdflow.lr_finder
    import kdflow.stage
    from click.testing import CliRunner

    from cli.main import app
    from kdflow.config import load_params
    from kdflow.layout import ProjectPaths

    monkeypatch.setenv("KDFLOW_OFFLINE", "1")
    root = project_copy()
    captured = {}

    def stage_fit(net, data, spec, *, loss_fn, param_groups, before_epoch, description, **_):
        assert description == model
        if before_epoch is not None:
            before_epoch(1)
        captured["stage"] = {**optimised(spec, param_groups or net.parameters()), "x": data.x, "targets": data.targets,
                             "loss_fn": loss_fn, "net": net}
        raise Stop

    monkeypatch.setattr(kdflow.stage, "fit_batches", stage_fit)
    with pytest.raises(Stop):
        importlib.import_module(f"tasks.{stage}").run(load_params(root / "params.yaml"), ProjectPaths.at(root))

    range_test = kdflow.lr_finder.range_test

    def sweep(training, *args, **kwargs):
        captured["lr_find"] = {"x": training.data.x, "targets": training.data.targets, "loss_fn": training.loss_fn}
        return range_test(training, *args, **kwargs)

    def make_optimizer(spec, params):
        captured["lr_find"].update(optimised(spec, params))
        raise Stop

    monkeypatch.setattr(kdflow.lr_finder, "range_test", sweep)
    monkeypatch.setattr(kdflow.lr_finder, "make_optimizer", make_optimizer)
    result = CliRunner().invoke(app, ["lr-find", stage, "--root", str(root), "--params", str(root / "params.yaml")])
    assert isinstance(result.exception, Stop), result.output

    ours, theirs = captured["stage"], captured["lr_find"]
    assert ours["train"] == theirs["train"] and ours["group_lrs"] == theirs["group_lrs"]
    assert len(ours["values"]) == len(theirs["values"]) and ours["trainable"] == theirs["trainable"]
    assert all(torch.equal(a, b) for a, b in zip(ours["values"], theirs["values"]))
    assert torch.equal(ours["x"], theirs["x"]) and len(ours["targets"]) == len(theirs["targets"])
    assert all(torch.equal(a, b) for a, b in zip(ours["targets"], theirs["targets"]))
    logits = ours["net"](ours["x"][:16]).detach()
    batch = [t[:16] for t in ours["targets"]]
    assert ours["loss_fn"](logits, batch).item() == theirs["loss_fn"](logits, batch).item()
