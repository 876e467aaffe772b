"""docs/benchmarks.md's Results section is the rendering of benchmarks/results/*.json, never edited by hand."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.results_section import BEGIN, END, page_with_section


def test_the_committed_page_is_current(capsys):
    """`python -m benchmarks.results_section --check`, in this process (a new one would spend seconds on imports)."""
    assert importlib.import_module("benchmarks.results_section").main(["--check"]) == 0, capsys.readouterr().err


def test_the_section_between_the_markers_is_replaced_and_the_prose_kept():
    page = f"# Benchmarks\nby hand\n{BEGIN}old table\n{END}\nnotes\n"
    expected = f"# Benchmarks\nby hand\n{BEGIN}## Results\nnew\n{END}\nnotes\n"
    assert page_with_section(page, "## Results\nnew\n") == expected


def test_a_page_without_its_markers_is_one_line_naming_them():
    with pytest.raises(ValueError, match=r"^docs/benchmarks.md: needs one line '<!-- results: .*'; fix: put them back"):
        page_with_section("# Benchmarks\n", "## Results\n")
