"""Shared fixtures: a tiny config (a few hundred samples, two epochs) that runs the real stack in seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KDFLOW = str(Path(sys.executable).with_name("kdflow"))  # the console script, as a user runs it

# Nothing the tests run may write to the developer's own stores.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect reads its settings once, at import: set before any test imports it (flows.server sets it too late then).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _undo_offline_mode():
    """`kdflow run --offline` sets KDFLOW_OFFLINE for its process; in-process CLI tests must not leak it."""
    before = os.environ.get("KDFLOW_OFFLINE")
    yield
    if before is None:
        os.environ.pop("KDFLOW_OFFLINE", None)
    else:
        os.environ["KDFLOW_OFFLINE"] = before


@pytest.fixture(scope="session")
def build_once(tmp_path_factory, worker_id):
    """`build_once(name, build)`: the folder `name`, made by `build(folder)` once for the whole test run, and what
    `build` returned (JSON). The first xdist worker that asks builds it; the others wait for it and read it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared  # every worker's base folder sits in one

    def built(name: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        root, result_file = shared / name, shared / f"{name}.json"
        with FileLock(shared / f"{name}.lock"):
            if not result_file.exists():
                shutil.rmtree(root, ignore_errors=True)  # what a worker that failed here left
                root.mkdir()
                result_file.write_text(json.dumps(build(root)))
        return root, json.loads(result_file.read_text())

    return built


@pytest.fixture(scope="session")
def fresh_prefect_home(build_once, tmp_path_factory):
    """`fresh_prefect_home(name)`: a new PREFECT_HOME holding a copy of a Prefect database migrated once for the
    test run. A server started on an empty one would first migrate it (about 9 s on 2 cores), and two at once race."""

    def migrate(folder: Path) -> dict:
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], check=True,
                       env={**os.environ, "PREFECT_HOME": str(folder)}, capture_output=True, timeout=600)
        return {}

    template = build_once("prefect-home-template", migrate)[0]

    def fresh(name: str = "prefect-home") -> Path:
        home = tmp_path_factory.mktemp(name)
        shutil.copy(template / "prefect.db", home / "prefect.db")
        return home

    return fresh


@pytest.fixture(scope="session", autouse=True)
def _prefect_home(fresh_prefect_home):
    """Every Prefect server a test's command starts keeps its runs in this worker's PREFECT_HOME, never in the
    developer's ~/.prefect."""
    home = pytest.MonkeyPatch()
    home.setenv("PREFECT_HOME", str(fresh_prefect_home()))
    yield
    home.undo()


TINY_OVERRIDES = {
    "data": {"source": {"num_samples": 1000}, "transfer": {"size": 500},
             "target_labels_per_class": 5, "target_val_per_class": 5},
    "train_teacher": {"model": {"channels": [8, 8]}, "train": {"epochs": 2}},
    "soft_labels": {"chunk_size": 128},
    "distill": {"student": {"hidden": [8]}, "max_param_ratio": 1.0, "train": {"epochs": 2}},
    "finetune": {"train": {"epochs": 2}},
    "evaluate": {"latency_batches": 5},
}


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    """The repository's params.yaml shrunk: same sections, same models, a few hundred samples, two epochs."""
    return _merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


@pytest.fixture(scope="session")
def write_params():
    """Write a params dict as `params.yaml` in a directory; returns the file's path."""

    def write(directory: Path, params: dict) -> Path:
        path = directory / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return write


def make_image_frame(rows_per_class: int = 40, classes: int = 10, seed: int = 0):
    """8x8 image-like rows (a noisy prototype per class), columns pixel_0..pixel_63 and `digit`, as a user's
    own CSV would hold them; made with numpy so the tests need no dataset download."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    prototypes = rng.random((classes, 64)) * 16
    digits = np.repeat(np.arange(classes), rows_per_class)
    pixels = prototypes[digits] + rng.normal(0.0, 3.0, (len(digits), 64))
    frame = pd.DataFrame(pixels.round(3), columns=[f"pixel_{i}" for i in range(64)])
    frame["digit"] = digits
    return frame


@pytest.fixture(scope="session")
def image_frame():
    """`make_image_frame`, for tests (a fixture: `conftest` is no importable name when several exist)."""
    return make_image_frame


@pytest.fixture(scope="session")
def write_image_csv():
    """Write `make_image_frame(...)` as CSV at a path (parents made); returns the path."""

    def write(path: Path, **options) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        make_image_frame(**options).to_csv(path, index=False)
        return path

    return write


def make_image_folder(folder: Path, classes: list[str], per_class: int, size: int = 16, seed: int = 0) -> Path:
    """PNG images in one subfolder per class: each class a colour and a stripe direction, plus noise, so a tiny
    model can learn them; made with numpy and Pillow, nothing downloaded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        colour = np.array([(index * 67) % 256, (index * 131) % 256, (index * 197) % 256], np.float64)
        stripes = np.indices((size, size))[index % 2] % 4 < 2
        for sample in range(per_class):
            pixels = colour * 0.6 + stripes[..., None] * 80 + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name / f"{sample:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_folder():
    """`make_image_folder`, for tests."""
    return make_image_folder


TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXT_WORDS = {"red": "apple cherry fire blood rose", "green": "grass leaf lime frog moss",
              "blue": "sky sea ocean water ice", "gold": "sun sand honey coin crown"}


def make_texts(classes: list[str], per_class: int, seed: int = 0):
    """Sentences of each class's words among shared filler words, as a table of `text` and `label`."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    filler = "the a of and very some".split()
    rows = []
    for name in classes:
        words = TEXT_WORDS[name].split()
        for _ in range(per_class):
            chosen = rng.choice(words, 3).tolist() + rng.choice(filler, 3).tolist()
            rows.append({"text": " ".join(rng.permutation(chosen)), "label": name})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def save_tokenizer():
    """Save a word-piece tokenizer over the test texts' words in a folder (as `save_pretrained` does)."""

    def save(folder: Path) -> Path:
        from transformers import BertTokenizer

        vocabulary = TOKENS + sorted({w for words in TEXT_WORDS.values() for w in words.split()}
                                     | set("the a of and very some".split()))
        BertTokenizer(vocab={word: i for i, word in enumerate(vocabulary)}).save_pretrained(folder)
        return folder

    return save


@pytest.fixture(scope="session")
def texts():
    """`make_texts`, for tests."""
    return make_texts


@pytest.fixture(scope="session")
def zoo_or_skip(pytestconfig):
    """Import a zoo package, or skip saying why it does not import here (timm needs a torchvision built for the
    installed torch, which the CPU-only torch wheel has none of). A run of the zoo tests alone (`-m zoo`) fails
    instead: skipped there, it would pass having run nothing."""

    def imported(module: str):
        import importlib

        import torch

        try:
            return importlib.import_module(module)
        except (ImportError, RuntimeError) as exc:
            reason = f"{module} does not import beside torch {torch.__version__}: {str(exc).splitlines()[0]}"
            if pytestconfig.getoption("markexpr") == "zoo":
                pytest.fail(reason)
            pytest.skip(reason)

    return imported
