"""The pipeline's stages, each declared once: params sections, code, inputs, outputs, metrics and plots.

`dvc.yaml` is rendered from these declarations (`kdflow dvc-yaml`; a test keeps the committed file equal to the
rendering), and everything else that needs to know "which stage reads or writes what" reads them: the Prefect
flow, the lineage tags of each stage run, the "which stage writes this file" lookup, sweeps and lr-find.

A stage's code dependencies are not written by hand: they are the project modules its module imports, followed
through every import statement (module level or inside functions), so a new import is a new dependency.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdflow.layout import CONFUSION_MODEL, MODELS, REPORT_FIGURES, ProjectPaths

CODE_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("kdflow", "models", "tasks")
RELATIVE = ProjectPaths(Path("."))  # paths as dvc.yaml writes them, relative to the project root

PathsOf = Callable[[ProjectPaths], "list[Path]"]


@dataclass(frozen=True)
class Stage:
    name: str
    step: str  # what the stage makes, as the lineage chain names it
    params: tuple[str, ...]  # params.yaml sections; `seed` where the stage draws random numbers
    deps: PathsOf  # every file or folder the stage reads, besides its code
    # Cached in DVC; restored by `dvc checkout` / `kdflow checkout`. The stages' JSON besides the models' test
    # metrics is here too: an output DVC leaves to git that is neither a metric nor a plot turns its run cache off.
    outs: PathsOf
    # `dvc metrics show` and `diff`: the models' test metrics only, one flat file per model, so DVC's table reads as
    # the report's, a row per model and a column per metric (JSON kept in git, cache: false)
    metrics: PathsOf = lambda paths: []
    plots: PathsOf = lambda paths: []  # CSV for `dvc plots` kept in git (cache: false): curves, predictions, bins
    model: str | None = None  # the model a training stage trains (its `trainings` declares that one model)

    @property
    def module(self) -> str:
        return f"tasks.{self.name}"

    def sections(self) -> tuple[str, ...]:
        """The params sections besides `seed`."""
        return tuple(section for section in self.params if section != "seed")

    def read_files(self, paths: ProjectPaths) -> list[Path]:
        """The deps the stage reads as files, its lineage inputs: all but prepare's data/raw folder, whose files the
        stage names from params.yaml itself."""
        return [p for p in self.deps(paths) if p != paths.raw_dir]

    def kept_in_git(self, paths: ProjectPaths) -> list[Path]:
        """What the stage writes that DVC leaves to git (cache: false)."""
        return [*self.metrics(paths), *self.plots(paths)]

    def written(self, paths: ProjectPaths) -> list[Path]:
        return [*self.outs(paths), *self.kept_in_git(paths)]


def _splits(paths: ProjectPaths, *names: str) -> list[Path]:
    return [paths.split(name) for name in names]


def _curves(*models: str) -> PathsOf:
    return lambda paths: [paths.curve(model) for model in models]


SOFT_LABELLED = ("transfer", "source_train")  # the sets the teacher labels, in the order the student sees them
STUDENT_SETTINGS = ("distill.student", "distill.train")  # what a baseline student shares with the distilled one


def _soft_labelled(paths: ProjectPaths) -> list[Path]:
    """What a student trained on the teacher's labels reads: the labelled sets, their logits, and the validation set."""
    return [paths.dataset_card, *_splits(paths, *SOFT_LABELLED, "source_val"),
            *(paths.soft_labels(name) for name in SOFT_LABELLED), paths.soft_labels_manifest]


def _model_outputs(stage: str, model: str, extra: PathsOf = lambda paths: []) -> dict[str, PathsOf]:
    """A model stage's checkpoint (and `extra` files) and its metrics file, cached, and its curve."""
    return dict(outs=lambda paths: [paths.checkpoint(model), *extra(paths), paths.stage_metrics(stage)],
                plots=_curves(model), model=model)


# One stage per model, so each trains as soon as its own inputs exist (the baselines need no teacher).
STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("prepare", "data", ("seed", "data"),
          deps=lambda paths: [paths.raw_dir],
          outs=lambda paths: [paths.prepared]),
    Stage("train_teacher", "teacher", ("seed", "train_teacher"),
          # data/raw: where a teacher's starting weights (train_teacher.weights) live, so new weights rerun it
          deps=lambda paths: [paths.dataset_card, *_splits(paths, "source_train", "source_val"), paths.raw_dir],
          **_model_outputs("train_teacher", "teacher")),
    Stage("soft_labels", "soft labels", ("soft_labels",),
          deps=lambda paths: [paths.dataset_card, paths.checkpoint("teacher"), *_splits(paths, *SOFT_LABELLED)],
          outs=lambda paths: [paths.soft_labels_dir]),
    Stage("distill", "student", ("seed", "distill"),
          deps=lambda paths: [paths.checkpoint("teacher"), *_soft_labelled(paths)],
          **_model_outputs("distill", "student_distilled")),
    Stage("student_hard_labels", "student on hard labels", ("seed", *STUDENT_SETTINGS),
          deps=_soft_labelled,
          **_model_outputs("student_hard_labels", "student_hard_labels")),
    Stage("student_scratch", "student from scratch", ("seed", *STUDENT_SETTINGS),
          deps=lambda paths: [paths.dataset_card, *_splits(paths, "source_train", "source_val")],
          **_model_outputs("student_scratch", "student_scratch")),
    Stage("finetune", "target model", ("seed", "finetune"),
          deps=lambda paths: [paths.dataset_card, paths.checkpoint("student_distilled"),
                              *_splits(paths, "target_train", "target_val")],
          **_model_outputs("finetune", "target_finetuned", lambda paths: [paths.transfer_report])),
    Stage("target_scratch", "target model from scratch", ("seed", "distill.student", "finetune.train"),
          deps=lambda paths: [paths.dataset_card, *_splits(paths, "target_train", "target_val")],
          **_model_outputs("target_scratch", "target_scratch")),
    Stage("evaluate", "evaluation", ("evaluate",),
          deps=lambda paths: [paths.dataset_card, *(paths.checkpoint(model) for model in MODELS),
                              *_splits(paths, "source_val", "source_test", "target_val", "target_test"),
                              *(paths.curve(m) for m in MODELS)],
          outs=lambda paths: [paths.report_dir, paths.summary],
          metrics=lambda paths: [paths.test_metrics(model) for model in MODELS],
          plots=lambda paths: [paths.predictions(CONFUSION_MODEL), *(paths.reliability(m) for m in MODELS)]),
)}


# The stages that train a model, each declaring it (its module's `trainings`, which returns that one Training).
TRAINING_STAGES = tuple(name for name, stage in STAGES.items() if stage.model)


def trainer(model: str) -> str:
    """The stage that trains `model`."""
    return next(stage.name for stage in STAGES.values() if stage.model == model)


def producer(paths: ProjectPaths, path: str | Path) -> str | None:
    """The stage that writes `path` (a file inside a declared output counts), for errors that say what to rerun."""
    path = Path(path).resolve()
    for stage in STAGES.values():
        if any(path == out.resolve() or path.is_relative_to(out.resolve()) for out in stage.written(paths)):
            return stage.name
    return None


def needs(stage: str) -> list[str]:
    """The stages that write what `stage` reads, in pipeline order: a stage can start once these are done."""
    writers = {producer(RELATIVE, dep) for dep in STAGES[stage].deps(RELATIVE)}
    return [name for name in STAGES if name in writers]


def upstream(stage: str) -> list[str]:
    """Every stage `stage` depends on, directly or not, in pipeline order."""
    needed: set[str] = set()
    pending = [stage]
    while pending:
        for writer in needs(pending.pop()):
            if writer not in needed:
                needed.add(writer)
                pending.append(writer)
    return [name for name in STAGES if name in needed]


# Code dependencies: the import graph of the project's own modules.

def _module_file(module: str) -> Path | None:
    """The source file of a project module, relative to the code root; None for anything else."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (CODE_ROOT / candidate).exists():
            return candidate
    return None


def _imported_modules(source: Path) -> frozenset[str]:
    """Every module an import statement anywhere in `source` names (for `from a import b`, `a` and `a.b`)."""
    path = CODE_ROOT / source
    status = path.stat()
    return _parsed_imports(path, status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=None)
def _parsed_imports(path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    # Keyed by the file's mtime and size: each stage's scan reads the same modules again (nine stages, ~600 parses
    # a render, twice per `kdflow run`), and a long-lived `kdflow serve` still sees an edited file.
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


def code_files(module: str) -> list[Path]:
    """The project source files `module` imports, transitively (package `__init__` files included)."""
    found: set[Path] = set()
    pending = [module]
    while pending:
        module = pending.pop()
        source = _module_file(module)
        if source is None or source in found:
            continue
        found.add(source)
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__.py
        pending.extend(_imported_modules(source))
    return sorted(found)


def code_deps(module: str) -> list[str]:
    """`code_files`, with a package listed as its folder when the stage imports every module in it."""
    files = code_files(module)
    deps: list[str] = []
    for package in PROJECT_PACKAGES:
        members = sorted(p.relative_to(CODE_ROOT) for p in (CODE_ROOT / package).glob("*.py"))
        used = [p for p in files if p.parts[0] == package]
        deps.extend([package] if used and used == members else [p.as_posix() for p in used])
    return deps


# dvc.yaml

def _cache_false(paths: list[Path]) -> list[dict]:
    return [{path.as_posix(): {"cache": False}} for path in paths]


def dvc_stages(code_prefix: Path | None = None) -> dict[str, dict]:
    """dvc.yaml's `stages`. Code deps are relative to the project when the code lives there (`code_prefix` None),
    else absolute paths under `code_prefix`, where kdflow is installed."""
    rendered = {}
    for stage in STAGES.values():
        code = [dep if code_prefix is None else (code_prefix / dep).as_posix() for dep in code_deps(stage.module)]
        entry: dict = {
            "cmd": f"kdflow stage {stage.name}",
            "deps": [*code, *(p.as_posix() for p in stage.deps(RELATIVE))],
            "params": list(stage.params),
            "outs": [p.as_posix() for p in stage.outs(RELATIVE)],
        }
        if stage.metrics(RELATIVE):
            entry["metrics"] = _cache_false(stage.metrics(RELATIVE))
        if stage.plots(RELATIVE):
            entry["plots"] = _cache_false(stage.plots(RELATIVE))
        rendered[stage.name] = entry
    return rendered


def dvc_plots() -> list[dict]:
    """dvc.yaml's top-level `plots`: every model's curves, its reliability diagram and the target task's confusion
    matrix, each on one chart, then the report's figures."""
    curves = [RELATIVE.curve(model).as_posix() for model in MODELS]
    charts = [
        {"Validation accuracy": {"template": "linear", "x": "epoch", "y": {path: "val_accuracy" for path in curves}}},
        {"Training and validation loss": {"template": "linear", "x": "epoch",
                                          "y": {path: ["train_loss", "val_loss"] for path in curves}}},
        {"Reliability (accuracy per confidence bin)": {
            "template": "linear", "x": "confidence",
            "y": {RELATIVE.reliability(model).as_posix(): "accuracy" for model in MODELS}}},
        {f"Confusion matrix of {CONFUSION_MODEL} on the target task": {
            "template": "confusion", "x": "actual", "y": {RELATIVE.predictions(CONFUSION_MODEL).as_posix(): "predicted"}}},
    ]
    return [*charts, *(RELATIVE.report_figure(name).as_posix() for name in REPORT_FIGURES)]


HEADER = """\
# Generated from kdflow/graph.py by `kdflow dvc-yaml`: edit the stage declarations there, not this file
# (tests/unit/test_graph.py fails when the two differ). Each stage runs the same `run` function the Prefect flow
# runs; both record what they ran here, in dvc.lock and DVC's cache. A stage's deps are the project modules its
# module imports, then the files it reads. prepare reads a user's own data files from data/raw
# (`dvc add data/raw/<file>`).
"""


def render_dvc_yaml(code_prefix: Path | None = None) -> str:
    import yaml

    body = yaml.safe_dump({"stages": dvc_stages(code_prefix), "plots": dvc_plots()}, sort_keys=False, width=120)
    return HEADER + body
