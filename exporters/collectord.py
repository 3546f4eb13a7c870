"""The container families rendered in a collector process of their own.

A scrape of 500 containers is ~100 ms of Python reading, parsing and
formatting. In a thread of the daemon it shares the GIL with the trio loop:
measured on the 2-CPU build VM (bench/RESULTS.md), a 1 ms trio sleep then
overshoots by 8.5-15 ms at p99 (4.1-4.4 ms with no scrape at all), whatever
sys.setswitchinterval says; the same scrapes in another process at nice 10
leave 3.5-4.8 ms. So the daemon hands the work to this process and waits
for the text in the metrics server's thread, without the GIL:

    daemon (metrics thread)                 collector (python -m exporters.collectord)
      views, memory events, scrape-error      ContainerCollector over its own cgroup
      counts, limit generations  --pickle-->  manager (stat files kept open there)
                                 <--pickle--  text of the container families,
                                              this scrape's unreadable files

What stays in the daemon costs it ~2-4 ms of GIL a scrape (pickling the
views, joining the text). The scrape-error counter lives in the daemon (a
collector that is restarted does not reset it). The collector reads the
same cgroup files with the same code (ContainerCollector.render), so the
text is the same as the in-process path's, which stays as the fallback: if
the collector cannot be started or fails, that scrape is rendered in the
daemon's thread as before, and the next one starts a new collector.

Lifetime: started with the metrics server, in a thread (fork+exec by
subprocess, close_fds: it inherits nothing of the daemon's but the three
pipes; scrapes until it says "ready" are rendered in the thread), registered with
the daemon's Reaper as a helper (supervisor.subproc) and reaped by a thread
of its own; it exits on EOF of its stdin, i.e. when the daemon closes it or
dies. It keeps each container's stat files open between scrapes and closes
those of cgroups no longer asked for. Limits: the daemon's manager counts
its writes per cgroup (spec_generation); the collector drops its cached
limit values of a cgroup whose count moved.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import structlog

from exporters.view import ContainerView, MemoryEventsView

log = structlog.get_logger()

NICE = 10
"""The collector's niceness: under CPU contention the trio loop (and the
containers) go first; a scrape takes longer instead."""

TIMEOUT_S = 30.0
"""A scrape that takes longer kills the collector (and is rendered in the
daemon's thread); Prometheus's own scrape timeout defaults to 10 s."""
START_TIMEOUT_S = 120.0
"""For the collector's "ready" (Python start and imports: ~0.2 s on the
build VM, tens of seconds in the TCG test VM)."""

_HEADER = struct.Struct("!Q")


@dataclass(frozen=True)
class Request:
    views: tuple[ContainerView, ...]
    memory_events: tuple[MemoryEventsView, ...]
    errors: tuple[tuple[str, int], ...]
    """The daemon's nsvisor_scrape_errors_total counts before this scrape."""
    generations: tuple[tuple[str, int], ...]
    """(cgroup name, spec_generation) of every running container."""


def _send(f: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)))
    f.write(data)
    f.flush()


def _recv(f: IO[bytes]) -> Any:
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the collector process closed its pipe")
    (size,) = _HEADER.unpack(header)
    data = f.read(size)
    if len(data) < size:
        raise EOFError("the collector process closed its pipe mid-reply")
    return pickle.loads(data)  # our own child, over our own pipe


def _recv_within(fd: int, deadline: float) -> Any:
    """_recv() from a raw pipe fd, giving up at the monotonic deadline (a
    collector stuck in a cgroup read must not hold every later scrape)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def read(n: int) -> bytes:
        chunks: list[bytes] = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError("the collector process did not answer in time")
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError("the collector process closed its pipe")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    (size,) = _HEADER.unpack(read(_HEADER.size))
    return pickle.loads(read(size))  # our own child, over our own pipe


class NotReady(Exception):
    """The collector process is being started: this scrape is rendered in
    the daemon's thread."""


class CollectorProcess:
    """The daemon's end: render(request) -> (text, this scrape's errors).
    One request at a time (concurrent scrapes queue on a lock). A scrape
    never waits for a collector to start: start_soon() starts one in a
    thread, and until it is ready render() raises NotReady."""

    def __init__(self, cgroup_root: str, cgroup_parent: str) -> None:
        self.argv = [sys.executable, "-m", "exporters.collectord", cgroup_root, cgroup_parent]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._starting = False
        self._closed = False
        self.started = 0  # processes started so far (tests)
        self.settled = threading.Event()
        """Set when a start has ended, ready or failed (tests wait on it)."""

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def render(self, request: Request) -> tuple[bytes, list[str]]:
        if self._proc is None:
            self.start_soon()
            raise NotReady("the collector process is starting")
        with self._lock:
            proc = self._proc
            if proc is None:
                raise NotReady("the collector process is starting")
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, request)
                text, errors = _recv_within(proc.stdout.fileno(), time.monotonic() + TIMEOUT_S)
            except BaseException:
                self._stop()
                raise
            return text, errors

    def start_soon(self) -> None:
        """Start a collector in a thread of its own, unless one is running or
        starting."""
        with self._lock:
            if self._proc is not None or self._starting or self._closed:
                return
            self._starting = True
            self.settled.clear()
        threading.Thread(target=self._start, name="collector-start", daemon=True).start()

    def _start(self) -> None:
        from supervisor.subproc import HELPERS, HELPERS_LOCK

        try:
            with HELPERS_LOCK:  # before the daemon's Reaper can see it exit
                proc = subprocess.Popen(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
                )
                HELPERS.add(proc.pid)
        except OSError as e:
            log.warning("metrics.collector_failed", error=repr(e))
            self._starting = False
            self.settled.set()
            return

        def reap() -> None:
            proc.wait()
            with HELPERS_LOCK:
                HELPERS.discard(proc.pid)

        threading.Thread(target=reap, name="collector-reaper", daemon=True).start()
        self.started += 1
        assert proc.stdout is not None
        try:
            hello = _recv_within(proc.stdout.fileno(), time.monotonic() + START_TIMEOUT_S)
            if hello != "ready":
                raise EOFError(f"the collector process said {hello!r}, not ready")
        except Exception as e:
            log.warning("metrics.collector_failed", pid=proc.pid, error=repr(e))
            _kill(proc)
        else:
            with self._lock:
                if self._closed:
                    _kill(proc)
                else:
                    self._proc = proc
                    log.info("metrics.collector_started", pid=proc.pid)
        finally:
            self._starting = False
            self.settled.set()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill(proc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if f is not None:
                f.close()
    with contextlib.suppress(OSError):
        proc.kill()


def serve(
    stdin: IO[bytes], stdout: IO[bytes], make_manager: Callable[[], Any]
) -> None:  # the collector process's loop
    from exporters.collector import ContainerCollector

    manager = make_manager()
    state: dict[str, Any] = {"views": (), "memory_events": ()}
    collector = ContainerCollector(
        manager, lambda: state["views"], memory_events=lambda: state["memory_events"]
    )
    seen: dict[str, int] = {}
    _send(stdout, "ready")  # imports done: requests get answered within TIMEOUT_S
    while True:
        try:
            request: Request = _recv(stdin)
        except EOFError:
            return
        generations = dict(request.generations)
        for name in list(seen):
            if name not in generations:
                manager.forget(name)  # removed or stopped: close its files
                del seen[name]
        for name, gen in generations.items():
            if seen.get(name, gen) != gen:
                manager.invalidate_spec(name)
            seen[name] = gen
        before = Counter(dict(request.errors))
        collector.scrape_errors = Counter(before)
        state["views"], state["memory_events"] = request.views, request.memory_events
        text = collector.render_bytes()
        new = collector.scrape_errors - before
        _send(stdout, (text, sorted(new.elements())))


def main(argv: list[str]) -> int:
    root, parent = argv
    with contextlib.suppress(OSError):
        os.nice(NICE)
    from supervisor.cgroups import open_manager
    from supervisor.cgroups._fs import stat_fd_budget

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    serve(stdin, stdout, lambda: open_manager(root, parent, stat_fds=stat_fd_budget()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
