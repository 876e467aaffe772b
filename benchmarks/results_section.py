"""Print the README's "Results" section from benchmarks/results/*.json (full runs only, never --quick ones)."""

from __future__ import annotations

import json
import sys

from benchmarks.harness import RESULTS_DIR

ORDER = ("paper_table", "distillation", "transfer", "throughput_cpu", "throughput_cuda", "pipeline_overhead",
         "sweep_workers", "scale")


def section() -> str:
    parts = ["## Results", "",
             "The benchmarks under `benchmarks/` (`python -m benchmarks.<name>`, `--quick` for a smoke run) run the "
             "project's\nown stages and training loop; mean ± 95 % confidence interval over the seeds listed. Each "
             "table names the commit\nand machine its JSON in `benchmarks/results/` records."]
    for name in ORDER:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        machine = result["machine"]
        parts += ["", f"### `{name}`", "",
                  f"Commit `{result['commit']}`, {machine['cpu_count']} CPU cores ({machine['torch_threads']} torch "
                  f"thread{'s' if machine['torch_threads'] != 1 else ''}), torch {machine['torch']}"
                  + (f", {machine['cuda']}" if machine["cuda"] else "") + ".", "", result["table"]]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(section())
