"""Write docs/benchmarks.md's Results section from benchmarks/results/*.json (full runs only, never --quick ones).

The section sits between two marker comments; the prose around it is written by hand. `--check` only says whether
the page is current (tests/unit/test_docs.py fails when it is not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import REPO_ROOT, RESULTS_DIR

ORDER = ("paper_table", "distillation", "transfer", "throughput_cpu", "throughput_cuda", "pipeline_overhead",
         "sweep_workers", "scale")
PAGE = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN = ("<!-- results: generated from benchmarks/results/*.json by `python -m benchmarks.results_section`; "
         "edit there -->\n")
END = "<!-- end of results -->\n"


def section(results_dir: Path = RESULTS_DIR) -> str:
    parts = ["## Results", "",
             "The benchmarks under `benchmarks/` (`python -m benchmarks.<name>`, `--quick` for a smoke run) run the "
             "project's\nown stages and training loop; mean ± 95 % confidence interval over the seeds listed. Each "
             "table names the commit\nand machine its JSON in `benchmarks/results/` records."]
    for name in ORDER:
        path = results_dir / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        machine = result["machine"]
        parts += ["", f"### `{name}`", "",
                  f"Commit `{result['commit']}`, {machine['cpu_count']} CPU cores ({machine['torch_threads']} torch "
                  f"thread{'s' if machine['torch_threads'] != 1 else ''}), torch {machine['torch']}"
                  + (f", {machine['cuda']}" if machine["cuda"] else "") + ".", "", result["table"]]
    return "\n".join(parts) + "\n"


def page_with_section(page: str, generated: str) -> str:
    """`page` with the text between its markers replaced by `generated`."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"{PAGE.relative_to(REPO_ROOT)}: needs one line {BEGIN.strip()!r} and after it one line "
                         f"{END.strip()!r}; fix: put them back where the Results section goes")
    head, rest = page.split(BEGIN)
    return head + BEGIN + generated + END + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--check", action="store_true", help="exit 1 when the page differs from the JSON")
    args = cli.parse_args(argv)
    try:
        current = PAGE.read_text()
        wanted = page_with_section(current, section())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if current != wanted:
            print(f"{PAGE.relative_to(REPO_ROOT)} is out of date: run `python -m benchmarks.results_section`",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted)
    print(f"wrote {PAGE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
