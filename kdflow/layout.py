"""Where every stage reads and writes, relative to one project root; kdflow.graph declares which stage does which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Each split, and the task whose classes its labels (or, for the unlabelled transfer set, its samples) come from.
SPLIT_TASK = {"source_train": "source", "source_val": "source", "source_test": "source", "transfer": "source",
              "target_train": "target", "target_val": "target", "target_test": "target"}
SPLITS = tuple(SPLIT_TASK)


@dataclass(frozen=True)
class PipelineModel:
    """One model the pipeline trains: its role (whose registered model it is a candidate for, kdflow.registry),
    the task whose test set measures it and the artifacts/ folder its checkpoint lives in."""

    name: str
    role: str  # teacher | student | target
    task: str  # source | target
    folder: str


# The model catalogue, in the order the results table lists the models; within a role the technique's model comes
# first, then its baselines.
CATALOGUE = {model.name: model for model in (
    PipelineModel("teacher", "teacher", "source", "teacher"),
    PipelineModel("student_distilled", "student", "source", "students"),
    PipelineModel("student_hard_labels", "student", "source", "students"),
    PipelineModel("student_scratch", "student", "source", "students"),
    PipelineModel("target_finetuned", "target", "target", "target"),
    PipelineModel("target_scratch", "target", "target", "target"),
)}
MODELS = tuple(CATALOGUE)


def models_of(role: str) -> tuple[str, ...]:
    """The models of `role`, in catalogue order."""
    return tuple(model.name for model in CATALOGUE.values() if model.role == role)


# The model whose confusion matrix the report draws: the product, on the target task.
CONFUSION_MODEL = "target_finetuned"
# The report's pictures (kdflow.figures), reports/<name>.png.
REPORT_FIGURES = ("accuracy_cost", "confusion_target", "reliability", "learning_curves")


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> "ProjectPaths":
        return cls(Path(root).resolve())

    @property
    def raw_dir(self) -> Path:
        """A user's own data files (`dvc add data/raw/<file>`)."""
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.parquet"

    @property
    def dataset_card(self) -> Path:
        return self.prepared / "dataset_card.json"

    def model_dir(self, folder: str) -> Path:
        return self.root / "artifacts" / folder

    @property
    def soft_labels_dir(self) -> Path:
        return self.root / "artifacts" / "soft_labels"

    def soft_labels(self, split: str) -> Path:
        """The teacher's logits for one split's samples."""
        return self.soft_labels_dir / f"{split}.parquet"

    @property
    def soft_labels_manifest(self) -> Path:
        """What the soft labels were made from (the teacher's and each split's md5) and their own md5s."""
        return self.soft_labels_dir / "manifest.json"

    @property
    def students_dir(self) -> Path:
        return self.model_dir(CATALOGUE["student_distilled"].folder)

    @property
    def target_dir(self) -> Path:
        return self.model_dir(CATALOGUE["target_finetuned"].folder)

    def checkpoint(self, model: str) -> Path:
        return self.model_dir(CATALOGUE[model].folder) / f"{model}.pt"

    @property
    def transfer_report(self) -> Path:
        """Which layers the fine-tuned model took from the distilled student, and why others were not."""
        return self.target_dir / "transfer_report.json"

    def resume_state(self, model: str) -> Path:
        """The training state a killed run of `model` resumes from; removed once the model is written."""
        return self.root / ".kdflow" / "resume" / f"{model}.pt"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def stage_metrics(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    @property
    def summary(self) -> Path:
        return self.metrics_dir / "summary.json"

    def test_metrics(self, model: str) -> Path:
        """One model's test metrics, a row of `dvc metrics show`."""
        return self.metrics_dir / "test" / f"{model}.json"

    def curve(self, model: str) -> Path:
        """Per-epoch history as CSV, the form `dvc plots` reads."""
        return self.root / "plots" / "curves" / f"{model}.csv"

    def predictions(self, model: str) -> Path:
        """Each test sample's actual and predicted class as CSV, what DVC's confusion-matrix template reads."""
        return self.root / "plots" / "predictions" / f"{model}.csv"

    def reliability(self, model: str) -> Path:
        """The model's reliability-diagram bins as CSV (confidence, accuracy per bin) for `dvc plots`."""
        return self.root / "plots" / "reliability" / f"{model}.csv"

    @property
    def report_dir(self) -> Path:
        return self.root / "reports"

    def report_figure(self, name: str) -> Path:
        return self.report_dir / f"{name}.png"

    @property
    def report(self) -> Path:
        return self.report_dir / "report.md"

    def lr_find(self, stage: str, suffix: str) -> Path:
        """The learning-rate range test of `stage`: its plot (".png") and its curve (".json")."""
        return self.root / "plots" / "lr_find" / f"{stage}{suffix}"

    def sweep_dir(self, sweep_run_id: str) -> Path:
        """A sweep's trials and its summary."""
        return self.root / "sweeps" / sweep_run_id

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def mlflow_store(self) -> Path:
        """The local MLflow store (`sqlite:///<root>/mlflow.db`) and, beside it, its artifacts."""
        return self.root / "mlflow.db"

    @property
    def mlflow_store_lock(self) -> Path:
        """Held while a command makes the local store or its experiment, so that two commands do not at once."""
        return self.root / ".kdflow" / "mlflow-store.lock"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
