"""The finetune stage stops early on the target validation set and keeps and logs its best epoch."""

from __future__ import annotations

import pytest

from kdflow.artifacts import read_json
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import load_params
from kdflow.datasets import load_split
from kdflow.layout import ProjectPaths
from kdflow.training import evaluate_loss

pytestmark = pytest.mark.slow

EPOCHS, PATIENCE = 60, 3
# Five steps an epoch on 25 target samples at a high rate: the validation loss bottoms out, then climbs.
OVERRIDES = [f"finetune.train.epochs={EPOCHS}", f"finetune.train.patience={PATIENCE}", "finetune.train.batch_size=5",
             "finetune.train.lr=0.02", "+finetune.train.monitor=val_loss", "finetune.train.schedule=constant"]


def test_finetune_stops_early_and_logs_the_best_epoch(project_copy) -> None:
    from mlflow.tracking import MlflowClient

    from tasks import finetune

    root = project_copy()
    paths = ProjectPaths.at(root)
    params = load_params(root / "params.yaml", OVERRIDES)
    metrics = finetune.run(params, paths)

    rows = paths.curve("target_finetuned").read_text().splitlines()[1:]
    val_losses = [float(row.split(",")[2]) for row in rows]
    best_epoch = val_losses.index(min(val_losses)) + 1
    assert 1 < best_epoch and len(val_losses) == best_epoch + PATIENCE < EPOCHS  # stopped, not run out
    assert metrics["target_finetuned_best_epoch"] == best_epoch
    assert read_json(paths.stage_metrics("finetune"))["target_finetuned_best_epoch"] == best_epoch

    # The checkpoint holds the best epoch's weights, not the last epoch's.
    model, meta = load_model(paths.checkpoint("target_finetuned"), expected_spec(params, "target_finetuned"))
    val = load_split(paths.split("target_val"), tuple(meta["input_shape"]))
    assert evaluate_loss(model, val.x, val.y)[0] == pytest.approx(val_losses[best_epoch - 1], rel=1e-5)

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id],
                             filter_string="tags.`kdflow.model` = 'target_finetuned'")[0]
    assert run.data.metrics["best_epoch"] == best_epoch
    assert run.data.metrics["epochs_run"] == best_epoch + PATIENCE
    assert run.data.tags["kdflow.stopped_early"] == "True"
