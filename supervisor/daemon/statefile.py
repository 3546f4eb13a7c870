"""Atomic JSON state files: write a temporary file, fsync, rename, fsync the
directory.

Three ways, by what a crash may cost:

- `write_json(path, data)` does all of it before it returns (config.json, a
  stop: the user's intent).
- `write_json(path, data, sync=False)` renames the new content into place
  before it returns and leaves the fsyncs to a background thread: a daemon
  that crashes right after reads it (the page cache outlives the daemon);
  only a power loss in that moment may lose it (a run's "started", whose
  pid live restore adopts).
- `write_json(path, data, later=True)` hands all of it to the background
  thread (the other transitions of a run: starting, exited, restarting,
  three of them between a workload's exit and its restart, ~0.25 ms each on
  the trio thread for the write and rename alone: ext4 starts the new
  file's writeback at a rename over an old one). A path written again before
  the thread got to it is written once, with the newest content. A daemon
  crash may lose the last moment's transitions; restore copes as with a
  crash a moment earlier (the monitor's exit file and pid decide; a
  container whose run is unknown has its cgroup emptied before it starts
  again).

Order per path is kept: a write that is not `later`, and `forget(path)`
(before the directory is removed), first drop what is pending for the path
and wait out a write of it in flight, so an older content never lands over
a newer one and nothing is written into a directory being removed.
`flush()` waits until everything handed over is written (shutdown).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

_cond = threading.Condition()
_pending: dict[str, bytes] = {}
_inflight: str | None = None
_writer: threading.Thread | None = None


def _encode(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


def _write(path: str, payload: bytes, *, durable: bool = True) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if not durable:
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: str, data: Any, *, sync: bool = True, later: bool = False) -> None:
    payload = _encode(data)
    with _cond:
        if later:
            _pending[path] = payload
        else:
            _pending.pop(path, None)
            _cond.wait_for(lambda: _inflight != path)
            if sync:
                _write(path, payload)
                return
            _write(path, payload, durable=False)
            _pending[path] = payload  # the background thread makes it durable
        _start_writer()
        _cond.notify_all()


def forget(path: str) -> None:
    """Nothing more is written to path: what is pending is dropped, a write
    in flight is waited for (call before removing its directory)."""
    with _cond:
        _pending.pop(path, None)
        _cond.wait_for(lambda: _inflight != path)


def flush(timeout_s: float | None = None) -> bool:
    """Wait until every write handed to the background thread is on disk."""
    with _cond:
        return _cond.wait_for(lambda: not _pending and _inflight is None, timeout_s)


def read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def _start_writer() -> None:
    """Under _cond."""
    global _writer
    if _writer is None or not _writer.is_alive():
        _writer = threading.Thread(target=_write_loop, name="statefile-writer", daemon=True)
        _writer.start()


def _write_loop() -> None:
    global _inflight
    while True:
        with _cond:
            _cond.wait_for(lambda: bool(_pending))
            path = next(iter(_pending))
            payload = _pending.pop(path)
            _inflight = path
        try:
            with contextlib.suppress(OSError):  # its directory removed (rm): nothing to keep
                _write(path, payload)
        finally:
            with _cond:
                _inflight = None
                _cond.notify_all()
