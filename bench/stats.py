"""Summaries and the one results table. Pure: no processes, no clock.

Every row is a list of samples reduced to min/median/max; a row may carry a
target on its median ("<= 1.0", "< 10") and is then marked met/MISSED. Ratios
are computed pair by pair (run i of nsvisor over run i of the contender, the
two measured back to back), never as a ratio of two medians, so a noisy
minute on a shared machine hits both sides of each pair.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Target:
    """A bound on a row's median, e.g. Target("<", 10.0)."""

    op: str
    limit: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown target operator {self.op!r}; use one of {sorted(_OPS)}")

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)

    def __str__(self) -> str:
        return f"{self.op} {_num(self.limit)}"


@dataclass(frozen=True)
class Row:
    item: str
    unit: str
    samples: tuple[float, ...]
    target: Target | None = None
    note: str = ""

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def verdict(self) -> str:
        if self.target is None or not self.samples:
            return ""
        return "met" if self.target.met(self.median) else "MISSED"


def row(
    item: str,
    unit: str,
    samples: Sequence[float],
    target: Target | None = None,
    note: str = "",
) -> Row:
    return Row(item, unit, tuple(samples), target, note)


def pairwise_ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """ours[i] / theirs[i] for every round where both were measured."""
    if len(ours) != len(theirs):
        raise ValueError(f"unpaired samples: {len(ours)} against {len(theirs)}")
    return [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


HEADER = ("item", "n", "min", "median", "max", "unit", "target", "")


def table(rows: Sequence[Row | str]) -> str:
    """A fixed-width text table; a str entry is a section heading."""
    lines: list[tuple[str, ...]] = [HEADER]
    for r in rows:
        if isinstance(r, str):
            lines.append((r,))
            continue
        if not r.samples:
            lines.append((r.item, "0", "-", "-", "-", r.unit, str(r.target or ""), r.note))
            continue
        lines.append(
            (
                r.item,
                str(len(r.samples)),
                _num(r.min),
                _num(r.median),
                _num(r.max),
                r.unit,
                str(r.target or ""),
                " ".join(x for x in (r.verdict, r.note) if x),
            )
        )
    widths = [max(len(line[i]) for line in lines if len(line) > 1) for i in range(len(HEADER))]
    out: list[str] = []
    for line in lines:
        if len(line) == 1:
            out.append(f"-- {line[0]}")
            continue
        cells = [
            cell.ljust(widths[i]) if i in (0, 5, 6, 7) else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
