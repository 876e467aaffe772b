"""The whole pipeline on zoo models and media data, in both runners with the same bytes: a tiny BERT teacher and a
smaller BERT student on generated texts, and (where timm imports) a tiny timm ResNet teacher and a smaller timm
student on a generated image folder; each fine-tuned on held-out classes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdflow import graph
from kdflow.training import intra_op_threads

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = list(graph.STAGES)
# What `dvc repro` remakes: the teacher-to-target chain, each stage building, training or labelling with the zoo
# model (the baselines train the same architectures through the same code; evaluate's registry exports, one
# torch.export per model, are the flow's to prove, and slow).
REPRODUCED = ["prepare", "train_teacher", "soft_labels", "distill", "finetune"]
ONE_EPOCH = {"epochs": 1, "batch_size": 16, "lr": 0.003, "resume_every": 0}


def bert(hidden: int, layers: int) -> dict:
    return {"arch": "hf", "config": {"model_type": "bert", "vocab_size": 40, "hidden_size": hidden,
                                     "num_hidden_layers": layers, "num_attention_heads": 2,
                                     "intermediate_size": 2 * hidden, "max_position_embeddings": 16}}


def params(data: dict, teacher: dict, student: dict) -> dict:
    return {"seed": 0, "data": {"source_classes": ["red", "green"], "target_classes": ["blue", "gold"],
                                "target_labels_per_class": 4, "target_val_per_class": 4, **data},
            "train_teacher": {"model": teacher, "train": ONE_EPOCH}, "soft_labels": {},
            "distill": {"student": student, "train": ONE_EPOCH, "max_param_ratio": 0.6},
            "finetune": {"strategy": "gradual_unfreeze", "unfreeze_every": 1, "train": ONE_EPOCH},
            "evaluate": {"latency_batches": 2}}


def text_project(root: Path, texts, save_tokenizer) -> dict:
    (root / "data/raw").mkdir(parents=True)
    texts(["red", "green", "blue", "gold"], 16).to_csv(root / "data/raw/texts.csv", index=False)
    save_tokenizer(root / "data/raw/tokenizer")
    table = {"kind": "file", "path": "data/raw/texts.csv", "text_column": "text"}
    return params({"source": {**table, "label": "label"}, "transfer": table,
                   "text": {"tokenizer": "data/raw/tokenizer", "max_length": 10}}, bert(32, 2), bert(16, 1))


def image_project(root: Path, image_folder) -> dict:
    image_folder(root / "data/raw/images", ["red", "green", "blue", "gold"], 12)
    folder = {"kind": "images", "path": "data/raw/images"}
    teacher = {"arch": "timm", "name": "resnet10t", "options": {"stem_width": 8, "channels": [16, 32, 64, 128]}}
    student = {"arch": "timm", "name": "resnet10t", "options": {"stem_width": 4, "channels": [8, 16, 32, 64]}}
    return params({"source": folder, "transfer": folder, "images": {"size": [16, 16]}}, teacher, student)


def artifacts(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "artifacts").rglob("*")) if p.is_file()}


def start_dvc_repro(root: Path) -> subprocess.Popen:
    """`dvc repro finetune` in `root`, started: it runs beside the flow, each in its own project."""
    for folder in ("kdflow", "models", "tasks", "flows"):
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    # `python` in dvc.yaml's commands must be this interpreter, whatever PATH the test runner had. Its stages start
    # at 2 torch threads, the flow here at 1: no output may depend on the count a process happens to start with.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, f"dvc init failed:\n{done.stdout}\n{done.stderr}"
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", "finetune"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(repro: subprocess.Popen) -> str:
    output, errors = repro.communicate(timeout=900)
    assert repro.returncode == 0, f"dvc repro failed:\n{output}\n{errors}"
    return output


@pytest.mark.zoo
@pytest.mark.parametrize("family", ["hf-text", "timm-image"])
def test_both_runners_distil_and_fine_tune_a_zoo_model_to_the_same_bytes(family, tmp_path, write_params, texts,
                                                                         save_tokenizer, image_folder, zoo_or_skip,
                                                                         prefect_server):
    from flows.pipeline import pipeline

    zoo_or_skip("transformers" if family == "hf-text" else "timm")
    flow_root, dvc_root = tmp_path / "flow", tmp_path / "dvc"
    for root in (flow_root, dvc_root):
        settings = text_project(root, texts, save_tokenizer) if family == "hf-text" else image_project(root, image_folder)
        write_params(root, settings)

    repro = start_dvc_repro(dvc_root)
    try:
        with intra_op_threads(1):
            result = pipeline(params_path=str(flow_root / "params.yaml"), root=str(flow_root), serial=True)
    except BaseException:
        repro.kill()
        raise
    output = finished(repro)
    assert result["ran"] == STAGES
    report = json.loads((flow_root / "artifacts/target/transfer_report.json").read_text())
    head = ["model.classifier"] if family == "hf-text" else ["fc"]
    assert report["head"] == head and report["trainable_blocks_by_epoch"] == {"1": []}
    assert {name.rpartition(".")[0] for name in report["reinitialised"]} == set(head)  # its classes are new

    assert [stage for stage in STAGES if f"Running stage '{stage}'" in output] == REPRODUCED
    flow_bytes, dvc_bytes = artifacts(flow_root), artifacts(dvc_root)
    assert {"artifacts/teacher/teacher.pt", "artifacts/students/student_distilled.pt",
            "artifacts/target/target_finetuned.pt"} <= dvc_bytes.keys() <= flow_bytes.keys()
    assert [name for name in dvc_bytes if flow_bytes[name] != dvc_bytes[name]] == []
