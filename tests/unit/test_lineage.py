"""kdflow.lineage against a SQLite MLflow store in tmp_path: which run wrote a file (by its md5), the chain of
stage runs behind a model, and how `kdflow lineage` prints it. No server, no stage: runs are made with their tags."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from kdflow import lineage, tracking
from kdflow.artifacts import write_text

CARD, TEACHER = "data/prepared/dataset_card.json", "artifacts/teacher/teacher.pt"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One project store for the module (made once: seconds), a maker of finished runs with tags, one
    millisecond apart so that "newest" is never a tie, and a maker of stage tags for files of given contents."""
    root = tmp_path_factory.mktemp("lineage")
    client, experiment_id = tracking.project_client(root)
    clock = itertools.count(1_700_000_000_000)

    def run(name: str, tags: dict[str, str]) -> str:
        created = client.create_run(experiment_id, run_name=name, tags=tags, start_time=next(clock))
        client.set_terminated(created.info.run_id, "FINISHED")
        return created.info.run_id

    def stage_tags(stage: str, read: dict[str, str], wrote: dict[str, str], upstream: dict | None = None) -> dict:
        """`read`, `wrote`: {path: content}; the tags a stage run of those files carries."""
        written = [write_text(root / stage / path, content) for path, content in wrote.items()]
        return {"kdflow.stage": stage, **lineage.input_tags({p: digest(c) for p, c in read.items()}),
                **lineage.output_tags(root / stage, written), **(upstream or {})}

    return client, experiment_id, run, stage_tags


def digest(content: str) -> str:
    return hashlib.md5(content.encode()).hexdigest()


def test_the_upstream_of_an_input_is_the_newest_run_that_wrote_that_very_digest(store):
    client, experiment_id, run, stage_tags = store
    older = run("prepare", stage_tags("prepare", {}, {CARD: "card a"}))
    newer = run("prepare", stage_tags("prepare", {}, {CARD: "card a"}))
    run("prepare", stage_tags("prepare", {}, {CARD: "card b"}))  # newest, but other bytes
    assert older != newer
    assert lineage.upstream_tags(client, experiment_id, {CARD: digest("card a")}) == {"kdflow.upstream.prepare": newer}
    assert lineage.upstream_tags(client, experiment_id, {CARD: digest("card c")}) == {}  # nothing wrote it: no tag


def test_the_chain_from_a_model_run_follows_upstream_tags_in_pipeline_order_and_prints_each_step(store):
    client, _, run, stage_tags = store
    prepare = run("prepare", stage_tags("prepare", {}, {CARD: "card 1"}))
    teacher = run("train_teacher", stage_tags("train_teacher", {CARD: "card 1"}, {TEACHER: "teacher 2"},
                                              {"kdflow.upstream.prepare": prepare}))
    soft = run("soft_labels", stage_tags("soft_labels", {CARD: "card 1", TEACHER: "teacher 2"}, {},
                                         {"kdflow.upstream.prepare": prepare, "kdflow.upstream.train_teacher": teacher}))
    model = run("student_distilled", {MLFLOW_PARENT_RUN_ID: soft, "kdflow.model": "student_distilled",
                                      "kdflow.checkpoint_md5": "3" * 32})

    runs = lineage.chain(client, model)  # a model run stands for its stage's run
    assert [r.info.run_id for r in runs] == [prepare, teacher, soft]
    printed = lineage.format_chain(client, runs).splitlines()
    assert printed[0] == "data -> teacher -> soft labels"
    card, weights = digest("card 1"), digest("teacher 2")
    assert f"  in   {CARD}  md5 {card} <- prepare run {prepare}" in printed
    assert f"  out  {TEACHER}  md5 {weights}" in printed
    assert f"  model student_distilled run {model}  checkpoint md5 {'3' * 32}" in printed
    assert printed.index(f"teacher: train_teacher run {teacher} (git unknown)") < printed.index(
        f"  in   {TEACHER}  md5 {weights} <- train_teacher run {teacher}")


def test_a_run_kdflow_did_not_make_is_refused_by_name(store):
    client, _, run, _ = store
    other = run("notebook", {})
    with pytest.raises(ValueError, match=f"run {other} is neither a kdflow stage run nor a model run"):
        lineage.chain(client, other)
