"""The CLI's `stats` and `top` output.

rich draws the live table (imported only here, and only when stdout is a
terminal: `ps` and friends never pay for it); plain text when stdout is not
a terminal, one table per sample; NO_COLOR is respected (rich reads it, and
it is passed on explicitly). The formatting helpers are pure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATS_HEADER = (
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
    "RESTARTS",
    "HEALTH",
)
TOP_HEADER = ("UID", "PID", "CPID", "PPID", "STAT", "CMD")


def binary_size(n: int | None) -> str:
    """Docker's units.BytesSize: 1.5MiB, 64MiB. Pure."""
    if n is None:
        return "--"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.4g}{unit}"
        value /= 1024
    return f"{value:.4g}TiB"  # pragma: no cover


def decimal_size(n: int | None) -> str:
    """Docker's units.HumanSizeWithPrecision: 1.2kB, 3.4MB. Pure."""
    if n is None:
        return "--"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"  # pragma: no cover


def _pct(v: Any) -> str:
    return "--" if v is None else f"{float(v):.2f}%"


def stats_row(c: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        str(c.get("name", "")),
        _pct(c.get("cpu_percent")),
        f"{binary_size(c.get('memory_usage'))} / {binary_size(c.get('memory_limit'))}",
        _pct(c.get("memory_percent")),
        f"{decimal_size(c.get('net_rx_bytes'))} / {decimal_size(c.get('net_tx_bytes'))}",
        f"{decimal_size(c.get('block_read_bytes'))} / {decimal_size(c.get('block_write_bytes'))}",
        "--" if c.get("pids") is None else str(c["pids"]),
        str(c.get("restarts", 0)),
        str(c.get("health") or "-"),
    )


def top_row(p: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        str(p["uid"]),
        str(p["pid"]),
        str(p["container_pid"]),
        str(p["ppid"]),
        str(p["state"]),
        str(p["command"]),
    )


def plain_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart. Pure."""
    all_rows = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header) - 1)]
    lines = []
    for r in all_rows:
        cells = [r[i].ljust(widths[i]) for i in range(len(widths))] + [r[-1]]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _rich_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for i, title in enumerate(header):
        table.add_column(title, justify="right" if 0 < i < len(header) - 1 else "left")
    for r in rows:
        table.add_row(*r)
    return table


def _console() -> Any:
    from rich.console import Console

    return Console(no_color="NO_COLOR" in os.environ, highlight=False)


def show_stats(snapshots: Iterable[Mapping[str, Any]], *, fmt: str, stream: bool) -> int:
    """Print each snapshot ({"time", "containers"}) as it comes."""
    if fmt == "json":
        for snap in snapshots:
            sys.stdout.write(json.dumps(snap.get("containers", [])) + "\n")
            sys.stdout.flush()
        return 0
    if not sys.stdout.isatty():
        for snap in snapshots:
            rows = [stats_row(c) for c in snap.get("containers", [])]
            sys.stdout.write(plain_table(STATS_HEADER, rows) + ("\n" if stream else ""))
            sys.stdout.flush()
        return 0
    console = _console()
    if not stream:
        for snap in snapshots:
            console.print(_rich_table(STATS_HEADER, map(stats_row, snap.get("containers", []))))
        return 0
    from rich.live import Live

    with Live(console=console, auto_refresh=False, transient=False) as live:
        for snap in snapshots:
            live.update(
                _rich_table(STATS_HEADER, map(stats_row, snap.get("containers", []))),
                refresh=True,
            )
    return 0


def show_top(processes: Sequence[Mapping[str, Any]], *, fmt: str) -> int:
    if fmt == "json":
        sys.stdout.write(json.dumps(list(processes)) + "\n")
        return 0
    rows = [top_row(p) for p in processes]
    if sys.stdout.isatty():
        _console().print(_rich_table(TOP_HEADER, rows))
    else:
        sys.stdout.write(plain_table(TOP_HEADER, rows))
    return 0
