"""Promotion by evidence, through the stage commands (`kdflow stage NAME`, in-process): when transfer loses to its
baseline on validation, `evaluate` registers the target model from scratch as `kdflow-target`'s champion, and the
report, the summary and the MLflow run say so."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cli.main import app

from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import load_params
from kdflow.datasets import load_split
from kdflow.layout import ProjectPaths
from kdflow.metrics import accuracy
from kdflow.training import predict_logits
from kdflow.tracking import local_uri

pytestmark = pytest.mark.slow


def validation_accuracy(params, paths: ProjectPaths, model_name: str) -> float:
    model, _ = load_model(paths.checkpoint(model_name), expected_spec(params, model_name))
    val = load_split(paths.split("target_val"), (40,))
    return accuracy(predict_logits(model, val.x), val.y)


def test_a_target_model_from_scratch_that_beats_the_fine_tuned_one_on_validation_is_the_champion(project_copy):
    root = project_copy()
    paths, params = ProjectPaths.at(root), load_params(root / "params.yaml")
    # On the tiny config, a longer fine-tuning at a higher rate lets the model from scratch overtake the fine-tuned
    # one (here 56 % against 40 % on the 25 validation samples): transfer loses to its baseline.
    for stage in ("finetune", "target_scratch"):  # the model from scratch trains with finetune.train too
        trained = CliRunner().invoke(app, ["stage", stage, "--root", str(root), "-S", "finetune.train.epochs=60",
                                           "-S", "finetune.train.lr=0.01"])
        assert trained.exit_code == 0, trained.output
    finetuned, scratch = (validation_accuracy(params, paths, name) for name in ("target_finetuned", "target_scratch"))
    assert scratch > finetuned, f"transfer must lose for this test to mean anything: {finetuned} vs {scratch}"

    evaluated = CliRunner().invoke(app, ["stage", "evaluate", "--root", str(root)])
    assert evaluated.exit_code == 0, evaluated.output

    selection = json.loads(paths.summary.read_text())["selection"]["kdflow-target"]
    assert selection["val_accuracy"] == {"target_finetuned": pytest.approx(finetuned),
                                         "target_scratch": pytest.approx(scratch)}
    assert selection["chosen"] == "target_scratch"
    verdict = (f"transfer lost to its baseline: target_scratch {scratch:.2%} on validation vs {finetuned:.2%} for "
               "target_finetuned, so target_scratch is the kdflow-target candidate")
    assert selection["verdict"] == verdict
    report = (paths.report_dir / "report.md").read_text()
    assert f"- {verdict}\n" in report
    assert (f"- kdflow-target: target_scratch, best validation accuracy of the run's candidates (target_scratch "
            f"{scratch:.2%}, target_finetuned {finetuned:.2%})\n") in report

    client = MlflowClient(tracking_uri=local_uri(root))
    experiment = client.get_experiment_by_name("kdflow").experiment_id
    (evaluate_run,) = client.search_runs([experiment], filter_string="attributes.run_name = 'evaluate'")
    (scratch_run,) = client.search_runs([experiment], filter_string="tags.`kdflow.model` = 'target_scratch'")
    tags = evaluate_run.data.tags
    assert tags["kdflow.verdict.transfer"] == verdict
    assert tags["registry.kdflow-target.model"] == "target_scratch"
    assert tags["registry.kdflow-target.decision"] == "champion: no champion yet"
    champion = client.get_model_version_by_alias("kdflow-target", "champion")
    assert champion.run_id == scratch_run.info.run_id and champion.tags["kdflow.model"] == "target_scratch"
    assert evaluate_run.data.metrics["registry.kdflow-target.val_accuracy.target_finetuned"] == pytest.approx(finetuned)
