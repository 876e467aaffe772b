"""Knowledge distillation against its baselines, over transfer-set sizes and temperatures.

The pipeline's own stages (prepare, train_teacher, soft_labels on the default params.yaml) give the teacher and
its stored logits; every student is then trained as the `distill` stage trains it: the same MLP student, the
same initial weights per seed, kdflow.training.fit with kdflow.losses.kd_loss (alpha = 1, pure distillation)
on source_train plus the first N transfer samples. Baselines per seed: the student from scratch on the source
labels, and on the teacher's hard (argmax) labels over the same samples. Accuracy is on source_test.

`gap closed` = (distilled − scratch) / (teacher − scratch), per seed. Every student trains with the stage's own
settings (params.yaml's distill.train: epochs, cosine schedule, early stopping); `--epochs` shortens that for a
look at the trend.
"""

from __future__ import annotations

import torch

from benchmarks.harness import fmt, mean_ci, parser, table, write_results
from benchmarks.workspace import load_overridden, quick_overrides, workspace
from kdflow.checkpoints import expected_spec, load_model
from kdflow.datasets import load_split, read_dataset_card, teacher_logits_for
from kdflow.losses import kd_loss
from kdflow.training import fit, intra_op_threads, predict_logits
from models import build_model

SIZES = (0, 5000, 25000, 50000)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
TARGET_GAP_CLOSED = 0.8
TARGET_SIZE = 25000


def accuracy(model, split) -> float:
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item() * 100


def run(args) -> dict:
    params = load_overridden(quick_overrides() if args.quick else [])
    sizes = (0, 500, 2000) if args.quick else SIZES
    temperatures = (1.0, 4.0) if args.quick else TEMPERATURES
    seeds = range(2 if args.quick else args.seeds)
    epochs = 2 if args.quick else args.epochs or params.distill.train.epochs
    train = params.distill.train.model_copy(update={"epochs": epochs, "device": "cpu"})
    paths = workspace(params, ["prepare", "train_teacher", "soft_labels"], args.work_dir)

    shape = read_dataset_card(paths.dataset_card).input_shape
    source, transfer = load_split(paths.split("source_train"), shape), load_split(paths.split("transfer"), shape)
    val, test = load_split(paths.split("source_val"), shape), load_split(paths.split("source_test"), shape)
    source_logits = teacher_logits_for(source, paths.soft_labels("source_train"))
    transfer_logits = teacher_logits_for(transfer, paths.soft_labels("transfer"))
    teacher, _ = load_model(paths.checkpoint("teacher"), expected_spec(params, "teacher"))
    teacher_accuracy = accuracy(teacher, test)
    classes = len(params.data.source_classes)

    def student(seed: int, x, targets, loss_fn=None) -> float:
        torch.manual_seed(seed)
        model = build_model(params.distill.student, shape, classes)
        extra = {"loss_fn": loss_fn} if loss_fn else {}
        fit(model, x, targets, train, seed=seed, val=(val.x, val.y), **extra)
        return accuracy(model, test)

    scratch = {seed: student(seed, source.x, [source.y]) for seed in seeds}
    print(f"teacher {teacher_accuracy:.1f} %, scratch {scratch}", flush=True)
    rows = []
    for size in sizes:
        if size > len(transfer):
            raise ValueError(f"transfer set has {len(transfer)} samples, fewer than {size}; raise data.transfer.size")
        x = torch.cat([source.x, transfer.x[:size]])
        logits = torch.cat([source_logits, transfer_logits[:size]])
        labels = torch.cat([source.y, transfer.y[:size]])
        hard = {seed: student(seed, x, [logits.argmax(1)]) for seed in seeds}
        for temperature in temperatures:
            loss = lambda out, t, T=temperature: kd_loss(out, t[0], t[1], T, 1.0)  # noqa: E731
            distilled = {seed: student(seed, x, [logits, labels], loss) for seed in seeds}
            row = {
                "transfer_size": size, "temperature": temperature, "train_samples": len(x),
                "distilled": mean_ci(distilled.values()), "hard_labels": mean_ci(hard.values()),
                "scratch": mean_ci(scratch.values()),
                "gap_closed": mean_ci([(distilled[s] - scratch[s]) / (teacher_accuracy - scratch[s]) for s in seeds]),
                "soft_minus_hard": mean_ci([distilled[s] - hard[s] for s in seeds]),
                "per_seed": {"distilled": distilled, "hard_labels": hard, "scratch": scratch},
            }
            diff = row["soft_minus_hard"]
            row["soft_beats_hard"] = diff["mean"] - diff["ci95"] > 0
            rows.append(row)
            print(f"size {size} T {temperature}: distilled {fmt(row['distilled'])}, hard {fmt(row['hard_labels'])}, "
                  f"gap closed {fmt(row['gap_closed'], 100)} %", flush=True)
    at_target = [r for r in rows if r["transfer_size"] == TARGET_SIZE and r["temperature"] == params.distill.temperature]
    markdown = table(
        ["transfer set", "T", "distilled %", "hard labels %", "scratch %", "gap closed %", "soft − hard (points)",
         "soft > hard"],
        [[r["transfer_size"], f"{r['temperature']:g}", fmt(r["distilled"]), fmt(r["hard_labels"]), fmt(r["scratch"]),
          fmt(r["gap_closed"], 100, 0), fmt(r["soft_minus_hard"]), "yes" if r["soft_beats_hard"] else "no"]
         for r in rows],
    ) + f"\n\nTeacher (the pipeline's, seed {params.seed}): {teacher_accuracy:.1f} % on source_test."
    payload = {
        "teacher_test_accuracy": teacher_accuracy, "seeds": list(seeds), "train": train.model_dump(mode="json"),
        "student": params.distill.student.model_dump(mode="json"), "rows": rows,
        "target": {"gap_closed_at": TARGET_SIZE, "temperature": params.distill.temperature,
                   "required": TARGET_GAP_CLOSED,
                   "measured": at_target[0]["gap_closed"] if at_target else None,
                   "met": bool(at_target) and at_target[0]["gap_closed"]["mean"] >= TARGET_GAP_CLOSED},
    }
    write_results(args, "distillation", payload, markdown)
    return payload


def main(argv: list[str] | None = None) -> dict:
    cli = parser("distillation", __doc__.splitlines()[0])
    cli.add_argument("--seeds", type=int, default=3)
    cli.add_argument("--epochs", type=int, default=None, help="student epochs (default: the stage's)")
    args = cli.parse_args(argv)
    with intra_op_threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
