"""The schedule's arithmetic (kdflow.schedule) on graphs and seconds worked out by hand."""

from __future__ import annotations

import pytest

from kdflow import graph, schedule

# The measured run (seconds), on the pipeline's own graph at the grain of models.
MEASURED = {"prepare": 3.0, "train_teacher": 21.1, "soft_labels": 6.0, "distill": 33.5, "student_hard_labels": 25.2,
            "student_scratch": 2.1, "finetune": 1.8, "target_scratch": 0.6, "evaluate": 4.5}
NEEDS = {name: graph.needs(name) for name in graph.STAGES}


def test_the_baselines_need_only_what_they_read():
    assert NEEDS["student_scratch"] == ["prepare"]
    assert NEEDS["target_scratch"] == ["prepare"]
    assert NEEDS["student_hard_labels"] == ["prepare", "soft_labels"]  # the teacher's labels, not the teacher
    assert NEEDS["distill"] == ["prepare", "train_teacher", "soft_labels"]
    assert set(NEEDS["evaluate"]) == set(graph.STAGES) - {"evaluate", "soft_labels"}


def test_ready_follows_what_is_done():
    pending = list(graph.STAGES)
    assert schedule.ready(pending, set(), NEEDS) == ["prepare"]
    pending.remove("prepare")
    assert schedule.ready(pending, {"prepare"}, NEEDS) == ["train_teacher", "student_scratch", "target_scratch"]
    done = {"prepare", "train_teacher", "soft_labels"}
    assert schedule.ready(["distill", "student_hard_labels", "finetune"], done, NEEDS) == [
        "distill", "student_hard_labels"]


def test_critical_path_of_the_measured_run():
    seconds, chain = schedule.critical_path(MEASURED, NEEDS)
    # prepare 3.0 + teacher 21.1 + soft labels 6.0 + distilled 33.5 + fine-tune 1.8 + evaluate 4.5
    assert seconds == pytest.approx(69.9)
    assert chain == ["prepare", "train_teacher", "soft_labels", "distill", "finetune", "evaluate"]


def test_bound_is_the_critical_path_or_the_work_spread_over_the_cores():
    total = 97.8  # the sum of MEASURED
    assert sum(MEASURED.values()) == pytest.approx(total)
    assert schedule.bound(MEASURED, NEEDS, cores=2) == pytest.approx(max(69.9, total / 2))
    assert schedule.bound(MEASURED, NEEDS, cores=1) == pytest.approx(total)
    # A chain can go no faster on more cores.
    chain = {"a": 2.0, "b": 3.0}
    assert schedule.bound(chain, {"a": [], "b": ["a"]}, cores=8) == 5.0


def test_critical_path_takes_the_longer_of_two_branches():
    seconds = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0}
    needs = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert schedule.critical_path(seconds, needs) == (7.0, ["a", "b", "d"])


def test_width_is_the_most_stages_that_can_run_at_once():
    # distill, student_hard_labels, student_scratch and target_scratch depend on none of each other.
    assert schedule.width(NEEDS) == 4
    assert schedule.width({"a": [], "b": ["a"], "c": ["b"]}) == 1
    assert schedule.width({"a": [], "b": [], "c": ["a", "b"]}) == 2


@pytest.mark.parametrize("workers, cores, gpus, expected", [
    (2, 2, 0, [(0, 1, None), (1, 1, None)]),  # two trainings on two cores: one thread each
    (3, 16, 0, [(0, 5, None), (1, 5, None), (2, 5, None)]),
    (4, 2, 0, [(i, 1, None) for i in range(4)]),  # never fewer than one thread
    (2, 16, 2, [(0, 8, 0), (1, 8, 1)]),  # one model per GPU
    (3, 12, 2, [(0, 4, 0), (1, 4, 1), (2, 4, 0)]),
])
def test_slots_share_the_cores_and_the_gpus(workers, cores, gpus, expected):
    assert [(s.index, s.threads, s.gpu) for s in schedule.slots(workers, cores, gpus)] == expected


def test_no_slots_is_an_error_naming_the_count():
    with pytest.raises(ValueError, match=r"workers must be at least 1 \(got 0\)"):
        schedule.slots(0, 2, 0)


@pytest.mark.parametrize("cores, gpus, width, expected", [(2, 0, 4, 2), (16, 0, 4, 4), (16, 1, 4, 4), (16, 3, 4, 3),
                                                          (1, 0, 4, 1)])
def test_default_workers(cores, gpus, width, expected):
    assert schedule.default_workers(cores, gpus, width) == expected
