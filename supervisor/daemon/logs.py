"""Reading a container's json-lines log file, optionally following it.

The monitor appends one JSON object per line ({"log", "stream", "time"}) and
rotates the file (container.log -> container.log.1 -> ...); the daemon only
reads. Following waits on inotify (IN_MODIFY) or on the
container's own events, never on a timer, and ends once the run it follows
is over and the file has been read to its end: the monitor drains the
workload's pipes into the file before it exits, so nothing written before
the exit is missed.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import trio

from supervisor.inotify import IN_CREATE, IN_MODIFY, IN_MOVED_TO, Inotify


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


def parse_log_time(text: object) -> float | None:
    """Epoch seconds of a record's RFC 3339 nano "time" (the monitor's
    format, always UTC "Z"). Pure."""
    if not isinstance(text, str) or len(text) < 20 or not text.endswith("Z"):
        return None
    try:
        whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    frac = text[19:-1]
    return whole + (float(frac) if frac.startswith(".") and len(frac) > 1 else 0.0)


def rotated_paths(path: str, limit: int = 1000) -> list[str]:
    """The rotated files of a log, oldest first: path.N, ..., path.1."""
    found = []
    for i in range(1, limit):
        candidate = f"{path}.{i}"
        if not os.path.exists(candidate):
            break
        found.append(candidate)
    return found[::-1]


def _rotated(f: IO[bytes], path: str) -> bool:
    """Whether `path` is no longer the file `f` reads (the monitor rotated it)."""
    try:
        current = os.stat(path).st_ino
    except FileNotFoundError:
        return False  # between the rename and the new file: wait for IN_CREATE
    return current != os.fstat(f.fileno()).st_ino


def _next_file(f: IO[bytes], path: str) -> IO[bytes] | None:
    """The file written after the one `f` reads: the next newer one in
    path.N, ..., path.1, path (several rotations may have happened while the
    reader was behind), or the oldest one left when f's file was dropped."""
    ours = os.fstat(f.fileno()).st_ino
    order = [*rotated_paths(path), path]
    inodes: list[int | None] = []
    for name in order:
        try:
            inodes.append(os.stat(name).st_ino)
        except FileNotFoundError:
            inodes.append(None)
    start = inodes.index(ours) + 1 if ours in inodes else 0
    for name in order[start:]:
        try:
            return open(name, "rb")
        except FileNotFoundError:
            continue
    return None


async def follow_log(
    f: IO[bytes],
    *,
    stop: trio.Event | None,
    tail: int | None = None,
    since: float | None = None,
    path: str | None = None,
    still_active: Callable[[], bool] | None = None,
    changed: Callable[[], trio.Event] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the log records of `f`.

    stop set: read what is there and end once `stop` is set (already set:
    a plain read). stop None: follow while still_active() is true.
    path (the log's name): read its rotated files first, oldest first, and
    follow across rotation: the directory is watched (IN_CREATE and
    IN_MOVED_TO announce a new current file, IN_MODIFY new lines); when the
    name points at a new file, the old one is read to its end (the monitor
    renames only after its last write to it) and the new one followed.
    since: only records at or after this time (epoch seconds).
    """
    ino = Inotify()
    owned: list[IO[bytes]] = []

    def wanted(record: dict[str, Any] | None) -> bool:
        if record is None:
            return False
        if since is None:
            return True
        t = parse_log_time(record.get("time"))
        return t is None or t >= since

    try:
        if path is not None:
            ino.add_watch(os.path.dirname(path), IN_MODIFY | IN_CREATE | IN_MOVED_TO)
        else:
            ino.add_watch(f.name, IN_MODIFY)  # before the first read: no change is missed
        backlog: list[bytes] = []
        if path is not None:
            ours = os.fstat(f.fileno()).st_ino
            for old in rotated_paths(path):
                try:
                    with open(old, "rb") as rf:
                        if os.fstat(rf.fileno()).st_ino != ours:
                            backlog += rf.read().splitlines()
                except FileNotFoundError:
                    continue  # rotated away meanwhile
        data = f.read()
        cut = data.rfind(b"\n") + 1
        pending = data[cut:]
        lines = backlog + data[:cut].splitlines()
        if tail is not None:
            lines = lines[len(lines) - tail :] if tail else []
        for line in lines:
            record = _decode(line)
            if wanted(record):
                assert record is not None
                yield record
        while True:
            if stop is not None:
                finished = stop.is_set()
            else:
                finished = still_active is None or not still_active()
            chunk = f.read()
            if not chunk and path is not None and _rotated(f, path):
                chunk = f.read()  # whatever was written before the rename
                if not chunk:
                    following = _next_file(f, path)
                    if following is not None:
                        if owned and owned[-1] is f:  # ours, not the caller's
                            owned.pop().close()
                        f = following
                        owned.append(f)
                        pending = b""
                        continue
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    record = _decode(line)
                    if wanted(record):
                        assert record is not None
                        yield record
                continue
            if finished:
                return
            waits = [stop] if stop is not None else []
            if changed is not None:
                waits.append(changed())
            await _wait_any(ino.fd, waits)
            ino.drain()
    finally:
        ino.close()
        for extra in owned:
            extra.close()
