"""The docs cannot rot: the README stays short and maps every page, the MkDocs site builds without a warning, its
worked example is a valid params change, and every shell command the README and docs/ show is one the tests run
(docs/benchmarks.md's generated section: tests/benchmarks/test_results_section.py).

"A test runs it" is checked by reading, not by running every documented command here (most take minutes and
servers): each command's words (its subcommand, flags and values, with `<placeholders>` left out) must all appear
in the string literals of one test module (or `.ci/run`), which is how the tests spell the commands they run,
e.g. `["dvc", "exp", "run", "-S", "distill.temperature=8"]` or `CliRunner().invoke(app, ["lr-find", stage])`.
The program itself is not checked (tests start it as `sys.executable -m dvc`, click's `app`, ...), nor that the
literals sit in one call: a module that spells every word of a command and runs nothing would pass.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
SHELL_BLOCK = re.compile(r"```(bash|sh|shell|console)?\n(.*?)\n```", re.S)
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
SEPARATORS = {"&&", "||", "|", ";", "&"}
# Words that say which program runs, not what it is asked to do: tests start these as `sys.executable -m dvc`,
# `CliRunner().invoke(app, ...)` or `.venv/bin/pip`.
PROGRAMS = {"kdflow", "dvc", "mlflow", "prefect", "git", "python", "python3", "pip", "uv", "source", "cd", "export"}


def documented_commands(markdown: str) -> list[str]:
    """Every command a shell block shows: `$ `-prefixed lines in any block, every line of a bash/sh block, split
    at `&&`, `|` and `;`; comments and `<placeholders>` dropped."""
    commands = []
    for match in SHELL_BLOCK.finditer(markdown):
        language, body = match.groups()
        lines = body.replace("\\\n", " ").splitlines()
        if language in (None, "console"):
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        for line in lines:
            words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", line), comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in SEPARATORS:
                    if command:
                        commands.append(shlex.join(command))
                    command = []
                else:
                    command.append(word)
    return commands


def words_to_find(command: str) -> list[str]:
    """The words a test must spell: all but the program, `python -m` and `<placeholders>`; environment assignments
    (`KEY=value` before the program) count, as the test must set them."""
    words = shlex.split(command)
    leading = next(i for i, word in enumerate([*words, ""]) if not re.fullmatch(r"[A-Z_]+=.*", word))
    assignments, words = words[:leading], words[leading:]
    if Path(words[0]).name not in PROGRAMS:
        return assignments + words
    return assignments + [w for w in words[1:] if w not in ("PLACEHOLDER", "-m") and Path(w).name not in PROGRAMS]


def string_literals(source: str) -> list[str]:
    """The string constants of a module (f-strings' fixed parts included), docstrings left out: they describe."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def literals_of_test_modules() -> dict[str, list[str]]:
    this = Path(__file__).resolve()
    sources = {str(path.relative_to(REPO_ROOT)): string_literals(path.read_text())
               for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")) if path.resolve() != this}
    ci_script = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    sources[".ci/run"] = [word for line in ci_script if not line.lstrip().startswith("#") for word in shlex.split(line)]
    return sources


def spelled(word: str, literals: list[str]) -> bool:
    """A word is spelled by a literal that is the word or holds it between spaces; around a placeholder, each fixed
    part need only be inside a literal (f"http://127.0.0.1:{port}/api" spells `http://127.0.0.1:<port>/api`)."""
    if "PLACEHOLDER" in word:
        return all(any(part in literal for literal in literals) for part in word.split("PLACEHOLDER") if part)
    with_extras = re.compile(re.escape(word) + r"\[[\w,]+\]")  # installing `.[dev]` installs `.` too
    return any(word == literal or word in literal.split() or with_extras.fullmatch(literal) for literal in literals)


def missing_words(command: str, literals: list[str]) -> list[str]:
    words = [part for word in words_to_find(command)
             for part in (word.split("=", 1) if re.fullmatch(r"[A-Z_]+=.*", word) else [word])]
    return [word for word in words if not spelled(word, literals)]


def runner_of(command: str, sources: dict[str, list[str]]) -> str | None:
    """The first test module whose string literals spell every word of `command`."""
    return next((name for name, literals in sources.items() if not missing_words(command, literals)), None)


def test_documented_commands_are_split_with_placeholders_and_comments_dropped():
    markdown = ("```bash\ndvc repro    # runs what changed\nkdflow checkout <run id> && dvc status\n```\n\n"
                "```\n$ kdflow run -S distill.temprature=8\nError: params.yaml: unknown key\n```\n\n"
                "```python\nprint('not shell')\n```\n")
    assert documented_commands(markdown) == ["dvc repro", "kdflow checkout PLACEHOLDER", "dvc status",
                                             "kdflow run -S distill.temprature=8"]
    assert words_to_find("kdflow checkout PLACEHOLDER") == ["checkout"]
    assert words_to_find("python -m benchmarks.paper_table") == ["benchmarks.paper_table"]
    assert words_to_find("A_URI=sqlite:///m.db .venv/bin/python -c 'import mlflow'") == ["A_URI=sqlite:///m.db", "-c",
                                                                                        "import mlflow"]


def test_a_command_no_test_spells_is_reported():
    literals = string_literals('"""kdflow sweep --workers 4"""\n'
                               'run(["kdflow", "sweep", "--grid", "distill.alpha=0.5,1.0"], f"http://h:{port}/api")')
    assert missing_words("kdflow sweep --grid distill.alpha=0.5,1.0", literals) == []
    assert missing_words("kdflow sweep --workers 4", literals) == ["--workers", "4"]  # a docstring runs nothing
    assert missing_words("export URL=http://h:PLACEHOLDER/api", literals) == ["URL"]
    ci = ["pip", "install", "-e"]
    assert missing_words("pip install -e .", [*ci, ".[dev]"]) == []
    assert missing_words("pip install -e .", [*ci, ".x"]) == ["."]


def test_every_documented_command_is_one_a_test_runs():
    sources = literals_of_test_modules()
    unrun = [f"{path.relative_to(REPO_ROOT)}: `{command}`" for path in DOC_FILES
             for command in documented_commands(path.read_text()) if runner_of(command, sources) is None]
    assert not unrun, ("no test runs these documented commands (their words are in no one test module); fix: a "
                       "test that runs each, or drop it from the docs:\n" + "\n".join(unrun))


def test_readme_is_short_and_maps_every_docs_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) < 8 * 1024, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+)\)", readme))
    assert all((REPO_ROOT / link).is_file() for link in linked), sorted(linked)
    top_pages = {f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")}
    assert top_pages <= linked, f"README's map lacks {sorted(top_pages - linked)}"


def test_the_docs_site_builds_without_a_warning(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    api_page = (tmp_path / "site" / "api" / "engine" / "index.html").read_text()
    assert "weighs the soft (teacher) term" in api_page and "kd_loss" in api_page  # rendered from the code


def test_own_data_example_is_a_valid_params_change(tmp_path, image_frame):
    """docs/data.md's worked example's YAML, merged into the repo's params.yaml, validates and prepares a file
    shaped as the example's CSV (made with numpy here, so the test needs no scikit-learn)."""
    import numpy as np
    import yaml

    from kdflow.config import validate
    from tasks.prepare import build_splits

    page = (REPO_ROOT / "docs" / "data.md").read_text()
    python_code = re.findall(r"```python\n(.+?)\n```", page, re.S)[0]
    assert 'to_csv("data/raw/digits.csv"' in python_code and "load_digits" in python_code
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params.update(yaml.safe_load(re.findall(r"```yaml\n(.+?)\n```", page, re.S)[0]))
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
