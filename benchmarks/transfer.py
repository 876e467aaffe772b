"""Transfer learning's learning curve: target accuracy against labels per class, per strategy.

The source model is the pipeline's own distilled student (stages prepare → train_teacher → soft_labels → distill
on the default params.yaml). For each labels-per-class count and seed, `prepare`'s own split code draws the
target task's few labelled samples (digits 5–9; 50 validation samples per class; the whole target test set), and
the `finetune` stage's pieces train: kdflow.transfer.copy_matching_layers (head re-initialised), the stage's
param groups (backbone at backbone_lr_mult × the head's rate) and unfreezing schedule, kdflow.training.fit with
the stage's settings. `scratch` is the same architecture from a fresh initialisation, as the stage's baseline.
"""

from __future__ import annotations

import torch

from benchmarks.harness import fmt, mean_ci, parser, table, write_results
from benchmarks.workspace import load_overridden, quick_overrides, workspace
from kdflow.checkpoints import expected_spec, load_model
from kdflow.training import fit, intra_op_threads, predict_logits
from kdflow.transfer import copy_matching_layers
from models import build_model
from tasks.finetune import SOURCE_MODEL, param_groups, unfreeze_schedule
from tasks.prepare import build_splits

LABELS_PER_CLASS = (10, 50, 200)
STRATEGIES = ("scratch", "linear_probe", "full", "gradual_unfreeze")
TARGET_COUNTS = (10, 50)


def target_task(base_overrides: list[str], labels_per_class: int, seed: int):
    """(train, val, test) tensors of the target task as `prepare` draws them for this seed."""
    params = load_overridden([*base_overrides, f"data.target_labels_per_class={labels_per_class}",
                              "data.transfer.size=0", f"seed={seed}"])
    splits = build_splits(params)
    as_tensors = lambda name: (torch.tensor(splits[name][1]), torch.tensor(splits[name][2]))  # noqa: E731
    return as_tensors("target_train"), as_tensors("target_val"), as_tensors("target_test")


def run(args) -> dict:
    base = quick_overrides() if args.quick else []
    params = load_overridden(base)
    counts = (5, 10) if args.quick else LABELS_PER_CLASS
    seeds = range(2 if args.quick else args.seeds)
    paths = workspace(params, ["prepare", "train_teacher", "soft_labels", "distill"], args.work_dir)
    arch = expected_spec(params, SOURCE_MODEL)
    source, _ = load_model(paths.checkpoint(SOURCE_MODEL), arch)
    classes = len(params.data.target_classes)
    results: dict[int, dict[str, dict]] = {}
    for count in counts:
        per_strategy: dict[str, list[float]] = {name: [] for name in STRATEGIES}
        for seed in seeds:
            (x, y), val, (x_test, y_test) = target_task(base, count, seed)
            for strategy in STRATEGIES:
                spec = params.finetune.model_copy(
                    update={"strategy": "full" if strategy == "scratch" else strategy,
                            "train": params.finetune.train.model_copy(update={"device": "cpu"})})
                torch.manual_seed(seed)
                model = build_model(arch, tuple(x.shape[1:]), classes)
                extra = {}
                if strategy != "scratch":
                    copy_matching_layers(source.state_dict(), model, spec.reinit)
                    extra = {"param_groups": param_groups(model, spec), "before_epoch": unfreeze_schedule(model, spec)}
                fit(model, x, [y], spec.train, seed=seed, val=val, **extra)
                per_strategy[strategy].append((predict_logits(model, x_test).argmax(1) == y_test).float().mean().item() * 100)
            print(f"{count}/class seed {seed}: " + ", ".join(f"{s} {v[-1]:.1f}" for s, v in per_strategy.items()), flush=True)
        summary = {name: {**mean_ci(values), "per_seed": values} for name, values in per_strategy.items()}
        full, scratch = summary["full"], summary["scratch"]
        summary["full_minus_scratch"] = mean_ci([f - s for f, s in zip(full["per_seed"], scratch["per_seed"])])
        summary["intervals_apart"] = full["mean"] - full["ci95"] > scratch["mean"] + scratch["ci95"]
        results[count] = summary
    markdown = table(
        ["labels / class", *[f"{s} %" for s in STRATEGIES], "full − scratch (points)", "full above scratch, CIs apart"],
        [[count, *[fmt(r[s]) for s in STRATEGIES], fmt(r["full_minus_scratch"]), "yes" if r["intervals_apart"] else "no"]
         for count, r in results.items()],
    )
    targets = [c for c in TARGET_COUNTS if c in results]
    payload = {"source_model": SOURCE_MODEL, "arch": arch.model_dump(mode="json"), "seeds": list(seeds),
               "finetune": params.finetune.model_dump(mode="json"),
               "results": {str(count): r for count, r in results.items()},
               "target": {"labels_per_class": targets, "met": bool(targets) and all(results[c]["intervals_apart"] for c in targets)}}
    write_results(args, "transfer", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict:
    cli = parser("transfer", __doc__.splitlines()[0])
    cli.add_argument("--seeds", type=int, default=5)
    args = cli.parse_args(argv)
    with intra_op_threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
