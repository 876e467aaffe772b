"""Where every stage reads and writes, relative to one project root; kdflow.graph declares which stage does which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("source_train", "source_val", "source_test", "transfer", "target_train", "target_val", "target_test")

# Models trained by the pipeline, in the order the results table lists them.
MODELS = ("teacher", "student_distilled", "student_hard_labels", "student_scratch", "target_finetuned", "target_scratch")
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

    @property
    def teacher_dir(self) -> Path:
        return self.root / "artifacts" / "teacher"

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
        return self.root / "artifacts" / "students"

    @property
    def target_dir(self) -> Path:
        return self.root / "artifacts" / "target"

    def checkpoint(self, model: str) -> Path:
        directory = {"teacher": self.teacher_dir}.get(model) or (
            self.students_dir if model.startswith("student") else self.target_dir
        )
        return directory / f"{model}.pt"

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
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"
