"""Stage `evaluate`: every model on its task's test set, under the same metric names.

Test metrics land in each model's own MLflow run (found by its checkpoint's md5), measured on the test set that
run logs as its `test` dataset and, for a registered model, linked to its logged model, so the compare view lines up
teacher, students and target models; the summary, the Markdown report and the plots go to the evaluate run.
Each role's candidates (teacher; distilled, hard-label and from-scratch students; fine-tuned and from-scratch target
models) are then scored on validation and the best is registered (kdflow.registry): champion or challenger. The
report and the run say whether distillation and transfer beat their baselines, and why each champion is what it is.
"""

from __future__ import annotations


from kdflow.artifacts import file_digest, write_json, write_text
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.figures import (PREDICTION_COLUMNS, RELIABILITY_COLUMNS, csv_text, plot_accuracy_cost,
                            plot_learning_curves, plot_matrix, plot_reliability)
from kdflow.layout import CATALOGUE, CONFUSION_MODEL, MODELS, REPORT_FIGURES, ProjectPaths
from kdflow.lineage import relative
from kdflow.metrics import (accuracy, agreement, classification_metrics, confusion_counts, latency_ms_per_sample,
                            reliability_bins)
from kdflow.progress import progress
from kdflow.report import champion_lines, comparison_lines, markdown_table
from kdflow.stage import stage_run
from kdflow.training import intra_op_threads, predict_logits
from models import count_parameters


def comparisons(models: dict) -> dict:
    accuracy = {name: m["test_accuracy"] * 100 for name, m in models.items()}
    gap = accuracy["teacher"] - accuracy["student_scratch"]
    return {
        "distilled_vs_scratch_points": accuracy["student_distilled"] - accuracy["student_scratch"],
        "distilled_vs_hard_labels_points": accuracy["student_distilled"] - accuracy["student_hard_labels"],
        "teacher_vs_scratch_points": gap,
        # A share of nothing when the teacher is no better than the student from scratch (a tiny config).
        "teacher_scratch_gap_closed": (accuracy["student_distilled"] - accuracy["student_scratch"]) / gap if gap > 0 else 0.0,
        "student_teacher_param_ratio": models["student_distilled"]["parameters"] / models["teacher"]["parameters"],
        "finetuned_vs_scratch_points": accuracy["target_finetuned"] - accuracy["target_scratch"],
    }


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    from kdflow import registry, tracking

    spec = params.evaluate
    card = read_dataset_card(paths.dataset_card)
    input_shape = card.input_shape
    # The same thread count under every runner: the same logits, so the same metrics and registry decisions.
    with stage_run(paths, "evaluate", params, parent_run_id) as tracked, intra_op_threads(spec.threads):
        tests = {task: load_split(paths.split(f"{task}_test"), input_shape) for task in ("source", "target")}
        vals = {task: load_split(paths.split(f"{task}_val"), input_shape) for task in ("source", "target")}
        test_sets = {}  # task -> its test set as the `test` dataset its models' runs log and their metrics name
        for task in tests:
            path = paths.split(f"{task}_test")
            [test_sets[task]] = tracking.file_datasets(paths.root, {relative(paths.root, path): file_digest(path)},
                                                       "test")
        teacher_logits = None
        models: dict[str, dict] = {}
        evaluated: dict[str, tuple] = {}  # name -> (its model run, its test metrics, its test set's DatasetInput)
        loaded: dict[str, tuple] = {}  # name -> (the model, its run id, its checkpoint's md5)
        val_accuracy: dict[str, float] = {}  # what the registry chooses by; the test set never decides
        diagrams: dict[str, tuple[list[dict], float]] = {}  # name -> (its reliability bins, its ECE)
        for name in progress(MODELS, "evaluate", unit="model"):
            checkpoint, task = paths.checkpoint(name), CATALOGUE[name].task
            model, meta = load_model(checkpoint, expected_spec(params, name))
            test = tests[task]
            logits = predict_logits(model, test.x)
            metrics = classification_metrics(logits, test.y, len(meta["class_names"]), spec.ece_bins)
            metrics["parameters"] = count_parameters(model)
            metrics["latency_ms"] = latency_ms_per_sample(model, test.x, spec.latency_batches)
            if CATALOGUE[name].role == "teacher":
                teacher_logits = logits
            elif task == "source":
                metrics["test_agreement"] = agreement(logits, teacher_logits)
            models[name] = {"task": task, **metrics}
            diagrams[name] = (reliability_bins(logits, test.y, spec.ece_bins), metrics["test_ece"])
            write_text(paths.reliability(name), csv_text(diagrams[name][0], RELIABILITY_COLUMNS))
            if name == CONFUSION_MODEL:
                confusion = (confusion_counts(logits, test.y, len(meta["class_names"])), meta["class_names"])
                write_text(paths.predictions(name), csv_text(
                    [{"actual": confusion[1][a], "predicted": confusion[1][p]}
                     for a, p in zip(test.y.tolist(), logits.argmax(1).tolist())], PREDICTION_COLUMNS))

            checkpoint_md5 = file_digest(checkpoint)
            run_id = tracking.find_model_run(tracked, checkpoint_md5)
            if run_id is None:  # trained outside this tracking store: record the evaluation on its own
                with tracked.child(name, tags={"kdflow.model": name}) as model_run:
                    run_id = model_run.run_id
            test_set = test_sets[task]
            model_run = tracking.TrackedRun(tracked.client, run_id, paths.root, tracked.experiment_id)
            model_run.log_datasets([test_set])
            evaluated[name] = (model_run, metrics, test_set)
            loaded[name] = (model, run_id, checkpoint_md5)
            val = vals[task]
            val_accuracy[name] = accuracy(predict_logits(model, val.x), val.y)

        selections = [registry.Selection(role, {name: val_accuracy[name] for name in role.candidates})
                      for role in registry.ROLES]
        candidates = []
        for selection in selections:
            model, run_id, checkpoint_md5 = loaded[selection.winner]
            val = vals[CATALOGUE[selection.winner].task]
            candidates.append(registry.Candidate(selection, model, val.x, val.y, run_id, checkpoint_md5,
                                                 file_digest(paths.split(selection.role.val_split))))
        decisions = [registry.register(tracked.client, tracking.store_uri(paths.root), c) for c in candidates]
        registry.log_decisions(tracked, decisions)
        # Test metrics after registering, so they name the logged model (MLflow 3's Models tab) and the test set.
        model_ids = {c.model_name: d.model_id for c, d in zip(candidates, decisions)}
        for name, (model_run, metrics, test_set) in evaluated.items():
            model_run.log_metrics(metrics, model_id=model_ids.get(name), dataset=test_set)
        print("\n".join(registry.describe(d) for d in decisions))

        summary = {"models": models, "comparisons": comparisons(models),
                   "selection": {s.role.registered_name: {"val_accuracy": s.val_accuracy, "chosen": s.winner,
                                                          "why": s.reason(), "verdict": s.verdict()}
                                 for s in selections}}
        write_json(paths.summary, summary)
        for name, row in models.items():
            write_json(paths.test_metrics(name), row)
        paths.report_dir.mkdir(parents=True, exist_ok=True)
        figures = {name: paths.report_figure(name) for name in REPORT_FIGURES}
        plot_accuracy_cost(summary, figures["accuracy_cost"])
        counts, class_names = confusion
        plot_matrix(counts, class_names, class_names,
                    ("actual class", "predicted class", f"{CONFUSION_MODEL} on the target test set"),
                    figures["confusion_target"])
        plot_reliability(diagrams, figures["reliability"])
        plot_learning_curves({m: paths.curve(m) for m in MODELS}, figures["learning_curves"])
        report = "\n\n".join([
            "# kdflow results", markdown_table(summary), "\n".join(f"- {line}" for line in comparison_lines(summary)),
            "## Champions, chosen on validation (never on test)",
            "\n".join(f"- {line}" for line in [*champion_lines(summary), *map(registry.describe, decisions)]),
            *(f"![{name.replace('_', ' ')}]({path.name})" for name, path in figures.items()),
        ]) + "\n"
        write_text(paths.report, report)
        tracked.log_metrics({f"{name}.{key}": value for name, m in models.items()
                             for key, value in m.items() if key != "task"})
        tracked.log_metrics(summary["comparisons"])
        for artifact in (paths.summary, paths.report, *figures.values()):
            tracked.log_artifact(artifact, "report")
    return summary["comparisons"]
