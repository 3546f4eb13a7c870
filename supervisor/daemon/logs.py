"""Reading a container's json-lines log file, optionally following it.

The monitor appends one JSON object per line ({"log", "stream", "time"}); the
daemon only reads. Following waits on inotify (IN_MODIFY) or on the
container's own events, never on a timer, and ends once the run it follows
is over and the file has been read to its end: the monitor drains the
workload's pipes into the file before it exits, so nothing written before
the exit is missed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import trio

from supervisor.inotify import IN_MODIFY, Inotify


async def _wait_any(fd: int, events: list[trio.Event]) -> None:
    async with trio.open_nursery() as nursery:

        async def readable() -> None:
            await trio.lowlevel.wait_readable(fd)
            nursery.cancel_scope.cancel()

        async def event(e: trio.Event) -> None:
            await e.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(readable)
        for e in events:
            nursery.start_soon(event, e)


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


async def follow_log(
    f: IO[bytes],
    *,
    stop: trio.Event | None,
    tail: int | None = None,
    still_active: Callable[[], bool] | None = None,
    changed: Callable[[], trio.Event] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the log records of `f`.

    stop set: read what is there and end once `stop` is set (already set:
    a plain read). stop None: follow while still_active() is true.
    """
    ino = Inotify()
    try:
        ino.add_watch(f.name, IN_MODIFY)  # before the first read: no change is missed
        pending = b""
        if tail is not None:
            data = f.read()
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            lines = data[:cut].splitlines(keepends=True)
            for line in lines[len(lines) - tail :] if tail else []:
                record = _decode(line)
                if record is not None:
                    yield record
        while True:
            if stop is not None:
                finished = stop.is_set()
            else:
                finished = still_active is None or not still_active()
            chunk = f.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    record = _decode(line)
                    if record is not None:
                        yield record
            if finished:
                return
            if chunk:
                continue
            waits = [stop] if stop is not None else []
            if changed is not None:
                waits.append(changed())
            await _wait_any(ino.fd, waits)
            ino.drain()
    finally:
        ino.close()
