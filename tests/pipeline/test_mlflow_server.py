"""A real `mlflow server` (SQL backend, local artifact root) on 127.0.0.1: the tiny pipeline logs there through
MLFLOW_TRACKING_URI; the tests read it back over REST and in the UI, and check the registry and lineage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdflow import graph, record
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import load_params
from kdflow.datasets import load_split
from kdflow.layout import CATALOGUE, MODELS, ProjectPaths
from kdflow.lineage import INPUT_PREFIX, OUTPUT_PREFIX, tagged_files
from tasks import evaluate

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.name=kdflow tests", "-c", "user.email=tests@kdflow.invalid"]
STAGES = list(graph.STAGES)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free local port: SQLite backend (the command docs/tracking.md shows, run in its own
    folder), artifacts served from a local folder."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", "sqlite:///mlflow.db", "--artifacts-destination", str(home / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=home, start_new_session=True,  # its own group: it forks workers
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:  # a graceful stop can take 10 s on a busy machine; nothing is left to save
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_params, write_params, prefect_server, mlflow_server):
    """One cold run of the tiny pipeline (the Prefect flow) logging to the server, in a git repository."""
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("server-project")
    params_path = write_params(root, tiny_params)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    record.ensure_project(root)  # dvc init and dvc.yaml committed with the params: the runs' tree is clean
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny"], cwd=root, check=True)
    environment = pytest.MonkeyPatch()
    environment.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = pipeline(params_path=str(params_path), root=str(root), serial=True)  # what is tracked, not where
    yield root, load_params(params_path), ProjectPaths.at(root), result
    environment.undo()


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One MLflow REST call: GET with a query string, or POST with a JSON body."""
    address = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(address, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def client_for(url):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    return client, client.get_experiment_by_name("kdflow").experiment_id


def tagged_runs(client, experiment_id, tag: str, value: str):
    """Runs with `tag` = `value`, newest first: a stage and the model it trains may share a name, not a tag."""
    return client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"])


def model_runs(client, experiment_id, model):
    return tagged_runs(client, experiment_id, "kdflow.model", model)


def stage_runs(client, experiment_id, stage):
    return tagged_runs(client, experiment_id, "kdflow.stage", stage)


def chosen(result: dict) -> dict[str, str]:
    """Registered model -> the model the run put forward for it (its candidates' best on validation)."""
    return {name: selection["chosen"] for name, selection in result["summary"]["selection"].items()}


def test_the_pipeline_logs_to_the_server_and_rest_reads_it_back(project, mlflow_server):
    root, _, _, result = project
    assert not (root / "mlflow.db").exists(), "the run went to the local store, not the server"
    experiment = rest(mlflow_server, "experiments/get-by-name", experiment_name="kdflow")["experiment"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 500})["runs"]
    by_id = {run["info"]["run_id"]: run for run in runs}
    tags = {run_id: {t["key"]: t["value"] for t in run["data"].get("tags", [])} for run_id, run in by_id.items()}
    parent_id = result["mlflow_run_id"]
    assert by_id[parent_id]["info"]["run_name"] == "pipeline"
    stage_ids = {by_id[i]["info"]["run_name"]: i for i in by_id if tags[i].get("mlflow.parentRunId") == parent_id}
    assert set(stage_ids) == set(STAGES)
    model_ids = {tags[i]["kdflow.model"]: i for i in by_id if "kdflow.model" in tags[i]}
    assert set(model_ids) == set(MODELS)
    for name, run_id in model_ids.items():
        assert tags[run_id]["mlflow.parentRunId"] == stage_ids[
            graph.trainer(name)]
        metric_names = {m["key"] for m in by_id[run_id]["data"]["metrics"]}
        assert {"test_accuracy", "test_macro_f1", "test_nll", "test_ece", "parameters", "latency_ms",
                "train_loss", "val_loss", "val_accuracy"} <= metric_names, name
    for registered, model in chosen(result).items():
        described = rest(mlflow_server, "registered-models/get", name=registered)["registered_model"]
        assert {"alias": "champion", "version": "1"} in described["aliases"]
        version = rest(mlflow_server, "registered-models/alias", name=registered, alias="champion")["model_version"]
        assert version["run_id"] == model_ids[model] and version["source"].startswith("models:/")
    evaluate_tags = tags[stage_ids["evaluate"]]
    assert evaluate_tags["registry.kdflow-target.decision"] == "champion: no champion yet"


def test_logged_models_sit_in_the_kdflow_experiment_with_their_test_metrics_and_no_mlruns_folder(
        project, mlflow_server):
    from kdflow.artifacts import file_digest


    root, _, paths, result = project
    client, experiment_id = client_for(mlflow_server)
    logged = {model.name: model for model in client.search_logged_models(experiment_ids=[experiment_id])}
    assert set(logged) == set(chosen(result).values())
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_logged_models(experiment_ids=[default.experiment_id])
    for name in chosen(result).values():
        model, split = logged[name], f"{CATALOGUE[name].task}_test"
        assert model.source_run_id == model_runs(client, experiment_id, name)[-1].info.run_id
        metrics = {metric.key: metric for metric in model.metrics}
        assert {"test_accuracy", "test_macro_f1", "test_nll", "test_ece", "latency_ms"} <= set(metrics), name
        test_accuracy = metrics["test_accuracy"]
        assert (test_accuracy.dataset_name, test_accuracy.dataset_digest) == \
            (paths.split(split).relative_to(root).as_posix(), file_digest(paths.split(split)))
        assert model.artifact_location.startswith(client.get_experiment(experiment_id).artifact_location + "/")
    assert not (root / "mlruns").exists()


def rendered_dom(page: str, profile) -> str:
    """The page's DOM after headless Chromium has run the React UI for 20 s of virtual time."""
    chromium = shutil.which("chromium")
    if chromium is None and os.environ.get("CI") != "true":  # CI installs it and must run this test
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)")
    assert chromium, "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)"
    rendered = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--no-first-run",
         f"--user-data-dir={profile}", "--window-size=3840,2160", "--virtual-time-budget=20000", "--dump-dom", page],
        capture_output=True, text=True, timeout=240,
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    return rendered.stdout


@pytest.mark.browser
def test_the_ui_compare_page_shows_the_model_runs_and_their_test_accuracy(project, mlflow_server, tmp_path):
    """Headless Chromium renders the React UI's run-compare page for the pipeline's model runs."""
    client, experiment_id = client_for(mlflow_server)
    model_run_ids = {name: model_runs(client, experiment_id, name)[0].info.run_id for name in MODELS}
    page = (f"{mlflow_server}/#/compare-runs?runs={json.dumps(list(model_run_ids.values()))}"
            f"&experiments={json.dumps([experiment_id])}")
    dom = rendered_dom(page, tmp_path / "chromium")
    for name in MODELS:
        assert f">{name}<" in dom, f"run {name} is not on the compare page"
    assert "test_accuracy" in dom


class RunTable(HTMLParser):
    """The text of each cell of the UI's run table (an ag-grid): {run id: {column id: text}}."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, dom: str):
        super().__init__()
        self.cells: dict[str, dict[str, str]] = {}
        self.row = self.column = None
        self.depth, self.text = 0, []  # tags open inside the current cell; its text so far
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attrs = dict(attrs)
        if self.column is not None:
            self.depth += 1
        elif "row-id" in attrs:
            self.row = attrs["row-id"]
        elif self.row is not None and "col-id" in attrs:
            self.column, self.depth, self.text = attrs["col-id"], 0, []

    def handle_endtag(self, tag):
        if tag in self.VOID or self.column is None:
            return
        if self.depth:
            self.depth -= 1
            return
        self.cells.setdefault(self.row, {})[self.column] = " ".join(self.text)
        self.column = None

    def handle_data(self, data):
        if self.column is not None and data.strip():
            self.text.append(data.strip())


@pytest.mark.browser
def test_the_experiment_opens_on_its_runs_and_model_runs_show_their_datasets_source_and_model(project, mlflow_server,
                                                                                               tmp_path):
    """The link `kdflow run` prints opens the run table (not the GenAI overview); filtered to the model runs, their
    Dataset column names their test set by path and md5, Source names the stage's code, Models the registered
    version of the logged model."""
    from kdflow.artifacts import file_digest
    from kdflow.tracking import runs_page

    _, _, paths, result = project
    client, experiment_id = client_for(mlflow_server)
    opened = rendered_dom(runs_page(mlflow_server, experiment_id), tmp_path / "chromium-opened")
    assert "<title>Runs - Experiment" in opened and "Expand rows" in opened and "Token Usage" not in opened

    filtered = urllib.parse.urlencode({"searchFilter": "tags.`kdflow.model` != ''", "orderByKey": "attributes.run_name"})
    table = RunTable(rendered_dom(f"{runs_page(mlflow_server, experiment_id)}&{filtered}", tmp_path / "chromium"))
    registered = {model: f"{name} v1" for name, model in chosen(result).items()}
    for name in MODELS:
        row = table.cells[model_runs(client, experiment_id, name)[-1].info.run_id]
        assert row["attributes.`Run Name`"].split()[-1] == name  # after its colour swatch
        test_split = paths.split(f"{CATALOGUE[name].task}_test")
        test_set = f"{test_split.relative_to(paths.root).as_posix()} ({file_digest(test_split)}) test"
        assert test_set in row["attributes.`Dataset`"], (name, row)
        assert row["attributes.`Source`"] == f"{graph.trainer(name)}.py", (name, row)
        assert row["attributes.`Models`"] == registered.get(name, "-"), (name, row)


def test_teacher_student_and_target_are_registered_with_signature_and_example(project, mlflow_server):
    import mlflow
    import mlflow.pytorch


    _, params, paths, result = project
    client, experiment_id = client_for(mlflow_server)
    for registered, model_name in chosen(result).items():
        test_split = f"{CATALOGUE[model_name].task}_test"
        champion = client.get_model_version_by_alias(registered, "champion")
        assert str(champion.version) == "1"
        assert champion.run_id == model_runs(client, experiment_id, model_name)[0].info.run_id
        # MLflow's loaders resolve models:/ through the process-wide URI: MLFLOW_TRACKING_URI, the server, here.
        info = mlflow.models.get_model_info(f"models:/{registered}/1")
        loaded = mlflow.pytorch.load_model(f"models:/{registered}@champion")
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 40)
        assert info.saved_input_example_info is not None
        model, _ = load_model(paths.checkpoint(model_name), expected_spec(params, model_name))
        test = load_split(paths.split(test_split), (40,))
        torch.testing.assert_close(loaded(test.x), model(test.x))


def test_every_run_carries_commit_input_digests_and_upstream_run_ids(project, mlflow_server):
    from kdflow.artifacts import file_digest

    root, _, paths, _ = project
    client, experiment_id = client_for(mlflow_server)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    runs_of_stage = {name: stage_runs(client, experiment_id, name)[-1]
                     for name in ("prepare", "train_teacher", "soft_labels", "distill", "finetune")}
    ids = {name: run.info.run_id for name, run in runs_of_stage.items()}
    for run in client.search_runs([experiment_id], max_results=500):
        assert run.data.tags["mlflow.source.git.commit"] == head, run.info.run_name
        assert run.data.tags["mlflow.source.git.dirty"] == "false", run.info.run_name  # outputs are untracked
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    distill_tags = runs_of_stage["distill"].data.tags
    assert distill_tags["kdflow.upstream.soft_labels"] == ids["soft_labels"]
    assert distill_tags["kdflow.upstream.train_teacher"] == ids["train_teacher"]
    assert distill_tags["kdflow.upstream.prepare"] == ids["prepare"]
    soft_labels_tags = runs_of_stage["soft_labels"].data.tags
    assert tagged_files(distill_tags, INPUT_PREFIX)["artifacts/soft_labels/transfer.parquet"] == \
        tagged_files(soft_labels_tags, OUTPUT_PREFIX)["artifacts/soft_labels/transfer.parquet"]
    assert tagged_files(soft_labels_tags, INPUT_PREFIX)["artifacts/teacher/teacher.pt"] == \
        model_runs(client, experiment_id, "teacher")[-1].data.tags["kdflow.checkpoint_md5"]
    target_run = model_runs(client, experiment_id, "target_finetuned")[-1]
    assert target_run.data.tags["kdflow.upstream.distill"] == ids["distill"]
    assert tagged_files(target_run.data.tags, INPUT_PREFIX)["data/prepared/target_train.parquet"] == \
        file_digest(paths.split("target_train"))
    assert not any(key.startswith("kdflow.upstream.") for key in runs_of_stage["prepare"].data.tags)


def test_lineage_command_prints_the_chain_from_data_to_target_model(project, mlflow_server):
    from cli.main import app

    root, _, _, _ = project
    client, experiment_id = client_for(mlflow_server)
    target_run = model_runs(client, experiment_id, "target_finetuned")[-1]
    output = CliRunner().invoke(app, ["lineage", target_run.info.run_id, "--root", str(root)])
    assert output.exit_code == 0, output.output
    lines = output.output.splitlines()
    assert lines[0] == "data -> teacher -> soft labels -> student -> target model"
    for step, stage in [("data", "prepare"), ("teacher", "train_teacher"), ("soft labels", "soft_labels"),
                        ("student", "distill"), ("target model", "finetune")]:
        run_id = stage_runs(client, experiment_id, stage)[-1].info.run_id
        assert any(line.startswith(f"{step}: {stage} run {run_id}") for line in lines), (step, lines)
    distill_id = stage_runs(client, experiment_id, "distill")[-1].info.run_id
    assert any("artifacts/students/student_distilled.pt" in line and line.endswith(f"<- distill run {distill_id}")
               for line in lines)
    assert any(line.strip().startswith(f"model target_finetuned run {target_run.info.run_id}") for line in lines)

    unknown = CliRunner().invoke(app, ["lineage", "0" * 32, "--root", str(root)])
    assert unknown.exit_code == 1 and f"run {'0' * 32} not found" in unknown.output


def test_champion_moves_only_to_a_version_that_beats_it_on_validation(project, mlflow_server, constant_predictor):
    _, params, paths, _ = project
    client, _ = client_for(mlflow_server)
    labels = load_split(paths.split("target_val")).y.numpy()
    chance = 1 / len(np.unique(labels))
    assert np.all(np.bincount(labels) == len(labels) * chance)  # balanced: every constant predictor scores chance
    trained = {name: paths.checkpoint(name).read_bytes() for name in ("target_finetuned", "target_scratch")}

    def evaluate_with(constant: bool):
        for name, data in trained.items():
            paths.checkpoint(name).write_bytes(data)
            if constant:
                constant_predictor(params, paths, name)
        evaluate.run(params, paths)
        summary = json.loads(paths.summary.read_text())
        run = client.get_run(client.search_runs([client.get_experiment_by_name("kdflow").experiment_id],
                                                filter_string="attributes.run_name = 'evaluate'",
                                                order_by=["attributes.start_time DESC"])[0].info.run_id)
        return (run.data.tags["registry.kdflow-target.version"], run.data.tags["registry.kdflow-target.decision"],
                run.data.metrics, summary["selection"]["kdflow-target"])

    def alias(name):
        return str(client.get_model_version_by_alias("kdflow-target", name).version)

    # An operator retires the trained champion; the next version takes the title unopposed.
    client.delete_registered_model_alias("kdflow-target", "champion")
    weak, decision, metrics, selection = evaluate_with(constant=True)
    assert selection["chosen"] == "target_finetuned"  # a tie on validation goes to the technique
    assert decision == "champion: no champion yet" and alias("champion") == weak
    assert metrics["registry.kdflow-target.candidate_val_accuracy"] == pytest.approx(chance)
    assert "registry.kdflow-target.champion_val_accuracy" not in metrics
    assert not any("test_accuracy" in key for key in metrics if key.startswith("registry."))  # test never decides

    strong, decision, metrics, selection = evaluate_with(constant=False)
    best = max(selection["val_accuracy"].values())
    assert best > chance, "the tiny config's trained target models should beat chance on validation"
    assert decision == f"champion: beats champion v{weak} on validation" and alias("champion") == strong
    assert metrics["registry.kdflow-target.candidate_val_accuracy"] == pytest.approx(best)
    assert metrics["registry.kdflow-target.champion_val_accuracy"] == pytest.approx(chance)
    assert client.get_model_version("kdflow-target", strong).tags["kdflow.model"] == selection["chosen"]

    worse, decision, metrics, _ = evaluate_with(constant=True)
    assert decision == f"challenger: does not beat champion v{strong} on validation"
    assert alias("champion") == strong and alias("challenger") == worse
    assert metrics["registry.kdflow-target.champion_val_accuracy"] == pytest.approx(best)
    # the teacher was re-registered unchanged on every evaluation: a tie is not a win, v1 stays champion
    assert str(client.get_model_version_by_alias("kdflow-teacher", "champion").version) == "1"
    for name, data in trained.items():
        paths.checkpoint(name).write_bytes(data)
