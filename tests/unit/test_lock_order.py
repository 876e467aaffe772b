"""dvc.lock lists its stages in dvc.yaml's order, whatever order stages that ran at once were recorded in."""

from __future__ import annotations

from kdflow import record

HEADER = "schema: '2.0'\nstages:\n"
ENTRIES = {  # as DVC writes them; the scratch student's with its output
    "prepare": "  prepare:\n    cmd: kdflow stage prepare\n",
    "student_scratch": ("  student_scratch:\n    cmd: kdflow stage student_scratch\n    outs:\n"
                        "    - path: artifacts/students/student_scratch.pt\n"
                        "      md5: 0123456789abcdef0123456789abcdef\n      size: 10\n"),
    "train_teacher": "  train_teacher:\n    cmd: kdflow stage train_teacher\n",
}


def lock_text(*stages: str) -> str:
    return HEADER + "".join(ENTRIES[stage] for stage in stages)


def test_order_lock_puts_the_stages_in_declaration_order_and_keeps_their_content(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(lock_text("prepare", "student_scratch", "train_teacher"))  # recorded as they finished
    record.order_lock(tmp_path)
    assert lock.read_text() == lock_text("prepare", "train_teacher", "student_scratch")
    record.order_lock(tmp_path)  # in order already: the same bytes
    assert lock.read_text() == lock_text("prepare", "train_teacher", "student_scratch")


def test_no_lock_yet_is_left_alone(tmp_path):
    record.order_lock(tmp_path)
    assert not (tmp_path / "dvc.lock").exists()
