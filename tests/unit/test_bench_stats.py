"""bench.stats: the pure part of the benchmark (summaries, pairwise ratios,
targets, the table)."""

from __future__ import annotations

import pytest

from bench.stats import Target, pairwise_ratios, row, table


def test_row_reduces_samples_to_min_median_max() -> None:
    r = row("x", "ms", [3.0, 1.0, 2.0, 10.0])
    assert (r.min, r.median, r.max) == (1.0, 2.5, 10.0)


def test_target_applies_to_the_median() -> None:
    assert row("x", "ms", [1, 2, 50], Target("<", 10)).verdict == "met"
    assert row("x", "ms", [11, 12, 1], Target("<", 10)).verdict == "MISSED"
    assert row("x", "ms", [1.0], Target("<=", 1.0)).verdict == "met"
    assert row("x", "ms", [1.0]).verdict == ""


def test_unknown_target_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown target operator"):
        Target(">", 1)


def test_ratios_are_taken_pair_by_pair() -> None:
    assert pairwise_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="unpaired"):
        pairwise_ratios([1.0], [1.0, 2.0])


def test_table_has_a_header_sections_and_verdicts() -> None:
    text = table(
        ["1. start", row("crun run", "ms", [6.0, 7.0]), row("r", "x", [2.0], Target("<=", 1))]
    )
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["item", "n", "min", "median", "max"]
    assert lines[1] == "-- 1. start"
    assert "crun run" in lines[2] and "6.50" in lines[2]
    assert lines[3].endswith("MISSED")


def test_an_empty_row_prints_dashes() -> None:
    assert "-" in table([row("nothing", "ms", [])]).splitlines()[1]
