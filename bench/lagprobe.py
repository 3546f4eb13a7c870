"""Event-loop lag of a benchmarked daemon: a trio task in the daemon that
sleeps 1 ms in a loop and records how late it wakes (the overshoot).
Whatever holds the trio thread (or the GIL the trio thread needs) shows up
as overshoot: a scrape that blocks the loop for 30 ms gives a 30 ms sample.

Installed by a daemon variant's prelude (bench/run.py Variant), before
supervisor's main runs; samples go to a file as (CLOCK_MONOTONIC time,
overshoot in seconds) pairs of doubles, written about once a second. The
benchmark reads them back for the time windows it scraped in: the
monotonic clock is the same in every process of the machine."""

from __future__ import annotations

import array
import time
from typing import Any

import trio

PERIOD_S = 0.001


def install(path: str) -> None:
    from supervisor.daemon import app

    original = app.Daemon.main

    async def main(self: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe, path)
            try:
                await original(self)
            finally:
                nursery.cancel_scope.cancel()

    app.Daemon.main = main  # type: ignore[method-assign]


async def _probe(path: str) -> None:
    samples = array.array("d")
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                t0 = time.monotonic()
                await trio.sleep(PERIOD_S)
                t1 = time.monotonic()
                samples.append(t1)
                samples.append(t1 - t0 - PERIOD_S)
                if len(samples) >= 2000:
                    samples.tofile(f)
                    del samples[:]
        finally:
            samples.tofile(f)


def read(path: str, start: float, end: float) -> list[float]:
    """Overshoots (seconds) of the samples taken between start and end."""
    data = array.array("d")
    try:
        with open(path, "rb") as f:
            data.frombytes(f.read())
    except FileNotFoundError:
        return []
    usable = len(data) - len(data) % 2
    return [data[i + 1] for i in range(0, usable, 2) if start <= data[i] <= end]
