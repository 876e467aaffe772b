"""Random params and randomly damaged files fed to `prepare` and the stage commands, `kdflow stage NAME` (what
`dvc repro` runs) in-process. Every case either runs or stops with one line naming what is wrong (no traceback: an
exception other than click's one-line error fails the test), and a case that stops has written nothing. Seeded: the
same cases on every run."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from cli.main import app
from kdflow.artifacts import file_digest
from kdflow.graph import STAGES
from kdflow.layout import ProjectPaths

pytestmark = pytest.mark.slow

SEED = 14
CASES_PER_KIND = 8  # 24 cases in all: a few dozen, about a minute
WATCHED = ("data", "artifacts", "metrics", "plots", "reports", ".kdflow")  # all a stage writes, but the MLflow store
STAGE_NAMES = ("prepare", "train_teacher", "soft_labels", "distill", "finetune")  # what the trained project can run
VALUES = [True, False, None, "", "x", "full", "1e-3", -1, 0, 1, 3, 2.5, -0.5, 1e12, math.nan, math.inf, [], [1, "a"],
          {"k": 1}]
OVERRIDES = ["seed=[1", "seed", "=1", "~seed", "+nosuch=1", "distill.temperature=abc", "distill.train.epochs=true",
             "finetune.strategy=sideways", "data.source.path='digits (v2).csv'", "seed=1e400", "train_teacher.train="]
ODD_NAMES = ["digits (v2).csv", "it's.csv", "two  spaces.csv", "ünïcødé 数字.csv", "(('.csv", "digits.parquet",
             "d.npz", "../outside (1).csv", "/elsewhere's.csv"]  # "/": an absolute path beside the project


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_digest(p) for top in WATCHED for p in sorted((root / top).rglob("*"))
            if p.is_file()}


def run_command(stage: str, root: Path, *argv: str) -> str | None:
    """`kdflow stage NAME` in-process: None when it ran, else the error it prints; any other exception is raised."""
    result = CliRunner().invoke(app, ["stage", stage, "--root", str(root), *argv])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if result.exit_code == 0:
        return None
    assert result.exit_code == 1 and "Error: " in result.output, result.output
    return "Error: " + result.output.split("Error: ", 1)[1].removesuffix("\n")


def leaves(tree: dict, prefix: tuple = ()) -> list[tuple]:
    found = []
    for key, value in tree.items():
        found += leaves(value, (*prefix, key)) if isinstance(value, dict) and value else [(*prefix, key)]
    return found


def set_at(tree: dict, keys: tuple, value) -> None:
    for key in keys[:-1]:
        tree = tree[key]
    tree[keys[-1]] = value


def random_params(rng: random.Random, params: dict) -> tuple[str, list[str], str]:
    """params.yaml's text, the -S overrides and what was changed."""
    params = yaml.safe_load(yaml.safe_dump(params))
    kind = rng.choice(["value", "value", "unknown key", "deleted key", "text", "override"])
    overrides: list[str] = []
    if kind == "value":
        keys = rng.choice(leaves(params))
        value = rng.choice(VALUES)
        set_at(params, keys, value)
        what = f"{'.'.join(keys)}={value!r}"
    elif kind == "unknown key":
        keys = (*rng.choice(leaves(params))[:-1], rng.choice(["epoch", "lr_", "Seed", "é"]))
        set_at(params, keys, 1)
        what = f"+{'.'.join(keys)}"
    elif kind == "deleted key":
        keys = rng.choice(leaves(params))
        parent = params
        for key in keys[:-1]:
            parent = parent[key]
        del parent[keys[-1]]
        what = f"~{'.'.join(keys)}"
    elif kind == "override":
        overrides = [rng.choice(OVERRIDES)]
        what = f"-S {overrides[0]}"
    else:
        text = rng.choice(["", "# nothing\n", "seed: [1\n", "- a\n- b\n", "seed: 1\nseed: 2\n", "\x00\xff",
                           "data: !!python/object/apply:os.system ['touch pwned']\n"])
        return text, [], f"text {text!r}"
    return yaml.safe_dump(params, allow_unicode=True), overrides, what


def damage(rng: random.Random, path: Path) -> str:
    kind = rng.choice(["truncated", "garbage", "empty", "wrong columns", "rows dropped"])
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: rng.randrange(1, len(data))])
    elif kind == "garbage":
        path.write_bytes(rng.randbytes(rng.randrange(1, 4096)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        if kind == "wrong columns":
            table = table.rename_columns([f"col{i}" for i in range(table.num_columns)])
        else:
            table = table.slice(0, table.num_rows // 2)
        pq.write_table(table, path)
    elif path.suffix == ".json":
        path.write_text('{"splits": {}}' if kind == "wrong columns" else "[]")
    elif path.suffix == ".pt":
        torch.save({"state_dict": {}} if kind == "wrong columns" else {"spec": {"arch": "custom"}}, path)
    else:
        path.write_text("a,b\n1,2\n")
    return f"{path.name} {kind}"


def odd_data_file(rng: random.Random, root: Path, image_frame) -> str:
    """A user's data file with an odd name under data/raw (or outside the project), whole or damaged; returns the
    params path."""
    name = rng.choice(ODD_NAMES)
    shown = str(root.parent / name[1:]) if name.startswith("/") else name if name.startswith("..") else f"data/raw/{name}"
    path = root / shown  # an absolute `shown` stays itself
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = image_frame(rows_per_class=30)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".npz":
        import numpy as np

        np.savez(path, x=frame.drop(columns="digit").to_numpy(), y=frame["digit"].to_numpy())
    else:
        frame.to_csv(path, index=False)
    if rng.random() < 0.6:
        damage(rng, path)
    return shown


def assert_one_line(message: str, *named: str) -> None:
    assert message.startswith("Error: "), message
    assert "Traceback" not in message
    lines = message.splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("fix: ")), message
    assert any(name in message for name in named), (message, named)


@pytest.mark.parametrize("case", range(CASES_PER_KIND))
def test_random_params_run_or_stop_with_one_line_and_no_write(case, project_copy, tiny_params) -> None:
    rng = random.Random(f"{SEED}-params-{case}")
    root = project_copy()
    stage = rng.choice(STAGE_NAMES)
    text, overrides, what = random_params(rng, tiny_params)
    (root / "params.yaml").write_text(text, encoding="utf-8")
    before = snapshot(root)

    message = run_command(stage, root, *(a for o in overrides for a in ("-S", o)))

    if message is not None:
        assert_one_line(message, "params.yaml", "-S", *what.lstrip("+~").split("=")[0].split("."))
        assert snapshot(root) == before, (stage, what, message)
    assert not (root / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize("case", range(CASES_PER_KIND))
def test_a_damaged_input_stops_the_stage_with_one_line_and_no_write(case, project_copy) -> None:
    rng = random.Random(f"{SEED}-damage-{case}")
    root = project_copy()
    stage = rng.choice(STAGE_NAMES[1:])
    target = rng.choice(STAGES[stage].read_files(ProjectPaths.at(root)))
    what = damage(rng, target)
    before = snapshot(root)

    message = run_command(stage, root)

    assert message is not None, f"{stage} ran on {what}"
    assert_one_line(message, str(target.relative_to(root)), str(target), target.parent.name)
    assert snapshot(root) == before, (stage, what, message)


@pytest.mark.parametrize("case", range(CASES_PER_KIND))
def test_prepare_takes_odd_file_names_and_stops_on_bad_ones_without_a_write(case, project_copy, tiny_params,
                                                                             image_frame) -> None:
    rng = random.Random(f"{SEED}-files-{case}")
    root = project_copy()
    shown = odd_data_file(rng, root, image_frame)
    data = {**tiny_params["data"],
            "source": {"kind": "file", "path": shown, "feature_prefix": "pixel_", "label": "digit",
                       "reshape": [1, 8, 8]},
            "transfer": {"kind": "file", "path": shown, "feature_prefix": "pixel_", "label": "digit"}}
    (root / "params.yaml").write_text(yaml.safe_dump({**tiny_params, "data": data}, allow_unicode=True),
                                      encoding="utf-8")
    before = snapshot(root)

    message = run_command("prepare", root)

    outside = shown.startswith(("/", ".."))
    if message is None:
        assert not outside, f"prepare read {shown}, outside the project's data/raw"
        cards = pd.read_json(ProjectPaths.at(root).dataset_card, typ="series")
        assert list(cards["input_shape"]) == [1, 8, 8]
    else:
        assert_one_line(message, shown, Path(shown).name, "data.source", "data.transfer")
        assert snapshot(root) == before, (shown, message)
    if outside:
        assert message is not None and "outside the project's data/raw" in message
