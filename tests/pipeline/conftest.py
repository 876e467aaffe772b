from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for the session, its database under a temporary PREFECT_HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, tiny_params, write_params):
    """The tiny config through prepare, train_teacher, soft_labels and the three students, in-process. Copy it before
    changing it."""
    from kdflow.config import load_params
    from kdflow.layout import ProjectPaths
    from tasks import distill, prepare, soft_labels, student_hard_labels, student_scratch, train_teacher

    root = tmp_path_factory.mktemp("trained-project")
    params = load_params(write_params(root, tiny_params))
    (root / "data" / "raw").mkdir(parents=True)  # as record.ensure_project makes it: train_teacher's dep (its weights)
    for stage in (prepare, train_teacher, soft_labels, distill, student_hard_labels, student_scratch):
        stage.run(params, ProjectPaths.at(root))
    return root


@pytest.fixture
def project_copy(trained_project, tmp_path):
    """A fresh copy of `trained_project` (without its MLflow store, whose artifact paths point at the original)."""

    def copy(name: str = "project") -> Path:
        ignore = shutil.ignore_patterns("mlflow.db", "mlartifacts")
        return Path(shutil.copytree(trained_project, tmp_path / name, ignore=ignore))

    return copy


@pytest.fixture(scope="session")
def constant_predictor():
    """Overwrite a model's checkpoint with one that always predicts class `index` (zero weights, one bias): on a
    balanced set it scores exactly one over the number of classes."""
    import torch

    from kdflow.checkpoints import expected_spec, load_model, save_model

    def overwrite(params, paths, model_name: str, index: int = 0) -> None:
        model, meta = load_model(paths.checkpoint(model_name), expected_spec(params, model_name))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
            model.head.bias[index] = 1.0
        save_model(paths.checkpoint(model_name), model, meta["spec"], tuple(meta["input_shape"]), meta["class_names"])

    return overwrite
