"""dvc.lock lists its stages in dvc.yaml's order, whatever order stages that ran at once were recorded in."""

from __future__ import annotations

from kdflow import record

RECORDED = """schema: '2.0'
stages:
  prepare:
    cmd: python -m tasks.prepare
  student_scratch:
    cmd: python -m tasks.student_scratch
    outs:
    - path: artifacts/students/student_scratch.pt
      md5: 0123456789abcdef0123456789abcdef
      size: 10
  train_teacher:
    cmd: python -m tasks.train_teacher
"""


def test_order_lock_puts_the_stages_in_declaration_order_and_keeps_their_content(tmp_path):
    (tmp_path / "dvc.lock").write_text(RECORDED)
    record.order_lock(tmp_path)
    assert (tmp_path / "dvc.lock").read_text() == """schema: '2.0'
stages:
  prepare:
    cmd: python -m tasks.prepare
  train_teacher:
    cmd: python -m tasks.train_teacher
  student_scratch:
    cmd: python -m tasks.student_scratch
    outs:
    - path: artifacts/students/student_scratch.pt
      md5: 0123456789abcdef0123456789abcdef
      size: 10
"""
    ordered = (tmp_path / "dvc.lock").read_bytes()
    record.order_lock(tmp_path)  # in order already: the same bytes
    assert (tmp_path / "dvc.lock").read_bytes() == ordered


def test_no_lock_yet_is_left_alone(tmp_path):
    record.order_lock(tmp_path)
    assert not (tmp_path / "dvc.lock").exists()
