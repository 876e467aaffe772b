"""`evaluate` on a tiny trained project draws the report's pictures, writes what `dvc plots` reads for them, and
logs them to MLflow; evaluating the same models again gives the same bytes for every picture whose data is the same
(all but accuracy against latency, which is timed anew)."""

from __future__ import annotations

import csv
import json

import pytest

pytestmark = pytest.mark.slow


def test_evaluate_draws_confusion_reliability_and_curves_the_same_twice(project_copy):
    import mlflow

    from kdflow.config import load_params
    from kdflow.datasets import load_split, read_dataset_card
    from kdflow.layout import MODELS, REPORT_FIGURES, ProjectPaths
    from kdflow.tracking import tracking_uri
    from tasks import evaluate, finetune, target_scratch

    root = project_copy()
    paths = ProjectPaths.at(root)
    params = load_params(root / "params.yaml")
    finetune.run(params, paths)
    target_scratch.run(params, paths)
    evaluate.run(params, paths)
    first = {name: paths.report_figure(name).read_bytes() for name in REPORT_FIGURES}
    report = (paths.report_dir / "report.md").read_text()
    assert all(f"]({name}.png)" in report for name in REPORT_FIGURES)

    card = read_dataset_card(paths.dataset_card)
    target_test = load_split(paths.split("target_test"), card.input_shape)
    with open(paths.predictions("target_finetuned")) as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == len(target_test.y)
    assert [row["actual"] for row in predictions] == [card.target_classes[y] for y in target_test.y.tolist()]
    accuracy = json.loads(paths.summary.read_text())["models"]["target_finetuned"]["test_accuracy"]
    assert sum(row["actual"] == row["predicted"] for row in predictions) / len(predictions) == pytest.approx(accuracy)
    for model in MODELS:
        with open(paths.reliability(model)) as handle:
            bins = list(csv.DictReader(handle))
        assert sum(float(row["share"]) for row in bins) == pytest.approx(1.0, abs=1e-5), model

    evaluate.run(params, paths)
    again = {name: paths.report_figure(name).read_bytes() for name in REPORT_FIGURES}
    assert {name for name in REPORT_FIGURES if again[name] == first[name]} == set(REPORT_FIGURES) - {"accuracy_cost"}

    client = mlflow.MlflowClient(tracking_uri(root))
    [evaluate_run] = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id],
                                        "tags.`mlflow.runName` = 'evaluate'", max_results=1)
    logged = {artifact.path for artifact in client.list_artifacts(evaluate_run.info.run_id, "report")}
    assert {f"report/{name}.png" for name in REPORT_FIGURES} <= logged
