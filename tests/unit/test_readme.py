"""The README's two commands are the project's front door; CI must run exactly the test one."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO_ROOT / "README.md").read_text())


def test_readme_opens_with_the_run_command_then_the_test_command():
    run_command, test_command = readme_commands()[:2]
    assert run_command.endswith("kdflow run") and "pip install torch==2.13.0" in run_command
    assert test_command.endswith("python -m pytest") and '".[dev,zoo]"' in test_command


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == readme_commands()[1]


def test_bring_your_own_data_example_is_a_valid_params_change(tmp_path, image_frame):
    """The worked example's YAML, merged into the repo's params.yaml, validates and prepares a file shaped as
    the example's CSV (made with numpy here, so the test needs no scikit-learn)."""
    import numpy as np
    import yaml

    from kdflow.config import validate
    from tasks.prepare import build_splits

    section = (REPO_ROOT / "README.md").read_text().split("## Bring your own data\n")[1].split("\n## ")[0]
    python_code = re.findall(r"```python\n(.+?)\n```", section, re.S)[0]
    assert 'to_csv("data/raw/digits.csv"' in python_code and "load_digits" in python_code
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params.update(yaml.safe_load(re.findall(r"```yaml\n(.+?)\n```", section, re.S)[0]))
    spec = validate(params)

    frame = image_frame(rows_per_class=60)
    frame.columns = [f"pixel_{i // 8}_{i % 8}" for i in range(64)] + ["target"]
    unlabelled = frame[frame.target < 5].sample(frac=0.5, random_state=0)
    (tmp_path / "data/raw").mkdir(parents=True)
    frame.drop(unlabelled.index).to_csv(tmp_path / "data/raw/digits.csv", index=False)
    unlabelled.drop(columns="target").to_csv(tmp_path / "data/raw/digits_unlabelled.csv", index=False)
    splits = build_splits(spec, tmp_path)
    assert splits["source_train"][1].shape[1:] == (1, 8, 8)
    assert len(splits["transfer"][0]) == 150 and splits["transfer"][2] is None
    np.testing.assert_array_equal(np.bincount(splits["target_train"][2]), [10] * 5)
