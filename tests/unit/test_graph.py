"""The stage declarations (kdflow/graph.py): dvc.yaml is their rendering, and a stage's code deps cover every
project module it imports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kdflow import graph
from kdflow.layout import ProjectPaths

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_dvc_yaml_is_the_declarations_rendering():
    assert (REPO_ROOT / "dvc.yaml").read_text() == graph.render_dvc_yaml(), (
        "dvc.yaml differs from kdflow/graph.py's declarations: run `kdflow dvc-yaml` and commit the result")


def test_dvc_yaml_lists_what_the_issue_found_missing():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert {"tasks/distill.py", "tasks/students.py", "kdflow/checkpoints.py"} <= set(stages["distill"]["deps"])
    assert {"models", "kdflow/training.py", "plots/curves/teacher.csv"} <= set(stages["evaluate"]["deps"])
    for name in graph.STAGES:
        if name != "prepare":
            assert "data/prepared/dataset_card.json" in stages[name]["deps"], name


def test_each_model_is_a_stage_of_its_own_with_its_own_inputs_and_params():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "train_teacher", "soft_labels", "distill", "student_hard_labels",
                            "student_scratch", "finetune", "target_scratch", "evaluate"]
    scratch = stages["student_scratch"]
    assert scratch["cmd"] == "kdflow stage student_scratch"
    # the stage's own JSON is a cached out: an uncached one that is neither metric nor plot turns DVC's run cache off
    assert scratch["outs"] == ["artifacts/students/student_scratch.pt", "metrics/student_scratch.json"]
    assert "metrics" not in scratch
    assert scratch["params"] == ["seed", "distill.student", "distill.train"]  # a new temperature leaves it be
    assert not [d for d in scratch["deps"] if d.startswith("artifacts/")]  # no teacher, no soft labels
    assert "artifacts/teacher/teacher.pt" not in stages["student_hard_labels"]["deps"]
    assert "artifacts/soft_labels/transfer.parquet" in stages["student_hard_labels"]["deps"]
    assert stages["target_scratch"]["params"] == ["seed", "distill.student", "finetune.train"]
    assert stages["finetune"]["outs"] == ["artifacts/target/target_finetuned.pt", "artifacts/target/transfer_report.json",
                                          "metrics/finetune.json"]


# Third-party packages the stages import, loaded once before the fork: none of them imports a project module.
PRELOADED = ("torch", "numpy", "pandas", "pyarrow.parquet", "mlflow")


@pytest.fixture(scope="module")
def imported_by_stage() -> dict[str, set[Path]]:
    """Per stage, the project's source files loaded by importing its module in a fresh interpreter. One process
    imports the heavy third-party packages, then forks a child per stage that imports the stage's module: a
    project module loaded before the fork would hide from every child, so none is (checked)."""
    modules = {stage.module: name for name, stage in graph.STAGES.items()}
    code = textwrap.dedent(f"""
        import importlib, json, os, sys, traceback
        for name in {PRELOADED!r}:
            importlib.import_module(name)
        assert not [m for m in sys.modules if m.split(".")[0] in {graph.PROJECT_PACKAGES!r}], "a project module"
        for module in {list(modules)!r}:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(module)
                    files = [m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)]
                    print("IMPORTED " + json.dumps([module, files]), flush=True)
                    os._exit(0)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            assert os.waitpid(pid, 0)[1] == 0, module
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imported = {}
    for line in done.stdout.splitlines():
        if line.startswith("IMPORTED "):
            module, files = json.loads(line.removeprefix("IMPORTED "))
            resolved = {Path(f).resolve() for f in files}
            imported[modules[module]] = {f.relative_to(REPO_ROOT) for f in resolved if f.is_relative_to(REPO_ROOT)
                                         and f.relative_to(REPO_ROOT).parts[0] in graph.PROJECT_PACKAGES}
    assert set(imported) == set(graph.STAGES)
    return imported


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(dep) or file.is_relative_to(dep) for dep in deps)


@pytest.mark.parametrize("stage", list(graph.STAGES))
def test_every_project_module_a_stage_imports_is_one_of_its_deps(stage, imported_by_stage):
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    imported = imported_by_stage[stage]
    assert Path(*graph.STAGES[stage].module.split(".")).with_suffix(".py") in imported
    missing = sorted(str(f) for f in imported if not covered(f, deps))
    assert not missing, f"stage {stage} imports {missing}, which its dvc.yaml deps do not list"


def test_an_import_inside_a_function_is_a_dependency_too(tmp_path, monkeypatch):
    package = tmp_path / "tasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text("def run():\n    from kdflow import report\n")
    (tmp_path / "kdflow").mkdir()
    (tmp_path / "kdflow" / "__init__.py").write_text("")
    (tmp_path / "kdflow" / "report.py").write_text("import kdflow.metrics\n")
    (tmp_path / "kdflow" / "metrics.py").write_text("")
    monkeypatch.setattr(graph, "CODE_ROOT", tmp_path)
    assert graph.code_files("tasks.probe") == [Path("kdflow/__init__.py"), Path("kdflow/metrics.py"),
                                               Path("kdflow/report.py"), Path("tasks/__init__.py"),
                                               Path("tasks/probe.py")]


def test_a_project_outside_the_checkout_names_the_code_by_absolute_path(tmp_path):
    rendered = yaml.safe_load(graph.render_dvc_yaml(Path("/opt/kdflow")))["stages"]
    assert "/opt/kdflow/tasks/prepare.py" in rendered["prepare"]["deps"]
    assert "data/raw" in rendered["prepare"]["deps"]


def test_producer_names_the_stage_that_writes_a_file(tmp_path):
    paths = ProjectPaths.at(tmp_path)
    assert graph.producer(paths, paths.split("transfer")) == "prepare"
    assert graph.producer(paths, paths.soft_labels("transfer")) == "soft_labels"
    assert graph.producer(paths, paths.checkpoint("student_scratch")) == "student_scratch"
    assert graph.producer(paths, paths.checkpoint("student_distilled")) == "distill"
    assert graph.producer(paths, paths.target_dir / "transfer_report.json") == "finetune"
    assert graph.producer(paths, paths.curve("target_scratch")) == "target_scratch"
    assert graph.producer(paths, paths.summary) == "evaluate"
    assert graph.producer(paths, tmp_path / "params.yaml") is None


def test_upstream_follows_the_declared_files():
    assert graph.upstream("distill") == ["prepare", "train_teacher", "soft_labels"]
    assert graph.upstream("finetune") == ["prepare", "train_teacher", "soft_labels", "distill"]
    assert graph.upstream("student_hard_labels") == ["prepare", "train_teacher", "soft_labels"]
    assert graph.upstream("target_scratch") == ["prepare"]
    assert graph.upstream("prepare") == []


def test_every_stage_logs_the_params_sections_dvc_tracks_for_it():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in graph.STAGES.items():
        assert stages[name]["params"] == list(stage.params)
        assert set(stage.sections()) == set(stage.params) - {"seed"}
