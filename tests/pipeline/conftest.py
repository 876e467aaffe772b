from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_server(fresh_prefect_home):
    """One temporary Prefect server for the session, started as `kdflow run` starts its own (flows.server), on a
    database of its own: the in-process flows of the tests talk to it."""
    from flows.server import PrefectApi

    home = pytest.MonkeyPatch()
    home.setenv("PREFECT_HOME", str(fresh_prefect_home("prefect-server-home")))
    api = PrefectApi.start()  # the server process takes the environment as it is now
    home.undo()
    with api.settings():
        yield


@pytest.fixture(scope="session")
def trained_project(build_once, tiny_params, write_params):
    """The tiny config through prepare, train_teacher, soft_labels and the three students, in-process, once for the
    test run. Copy it before changing it (`project_copy`)."""

    def train(root: Path) -> dict:
        from kdflow.config import load_params
        from kdflow.layout import ProjectPaths
        from tasks import distill, prepare, soft_labels, student_hard_labels, student_scratch, train_teacher

        params = load_params(write_params(root, tiny_params))
        (root / "data" / "raw").mkdir(parents=True)  # as record.ensure_project makes it: train_teacher's dep
        for stage in (prepare, train_teacher, soft_labels, distill, student_hard_labels, student_scratch):
            stage.run(params, ProjectPaths.at(root))
        return {}

    return build_once("trained-project", train)[0]


@pytest.fixture(scope="session")
def flowed_project(build_once, tiny_params, write_params, prefect_server):
    """The tiny config through one cold run of the Prefect flow, on a local Dask cluster of two worker processes
    reached by its address (`--dask-address`), once for the test run: (root, the flow's result). Read it, never
    write to it: `copy_flowed` gives a copy."""

    def flow(root: Path) -> dict:
        from distributed import LocalCluster

        from flows.pipeline import pipeline

        params_path = write_params(root, tiny_params)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            return pipeline(params_path=str(params_path), root=str(root), dask_address=cluster.scheduler_address,
                            workers=2)

    return build_once("flowed-project", flow)


@pytest.fixture(scope="session")
def copy_flowed(flowed_project):
    """Copy `flowed_project` to a new folder, where a test may run the flow again: DVC's record and cache come along;
    its MLflow store does not, as its artifact paths point at the original (a run in the copy makes a new one)."""

    def copy(target: Path) -> Path:
        ignore = shutil.ignore_patterns("mlflow.db", "mlartifacts")
        return Path(shutil.copytree(flowed_project[0], target, ignore=ignore))

    return copy


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
