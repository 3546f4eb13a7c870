"""Memory-limit hits and OOM kills, detected in real time.

While a container runs, one trio task waits on a kernel notification for its
memory cgroup and diffs the counters after each wake-up:

- v2: inotify IN_MODIFY on memory.events (the kernel notifies on every
  counter change, at most every 20 ms per file); counters low, high, max,
  oom, oom_kill, oom_group_kill.
- v1 (hybrid): an eventfd registered through cgroup.event_control on
  memory.oom_control, as conmon does (the memcg v1 OOM notifier; still in
  6.x kernels with CONFIG_MEMCG_V1). It fires when the OOM killer is invoked
  for the cgroup (and once more when the cgroup is removed); the counters are
  then re-read: oom_kill from memory.oom_control (4.13+) and max from the
  failcnt files (see V1Manager.memory_events for why v1 "max" is unreliable).

An increase of oom_kill is published at once as an "oom" event; an increase
of max as "memory_limit_hit", at most once per `limit_hit_interval_s` per
container (a container at its limit bumps max thousands of times a second;
the event carries the hits since the last one). EventBus.publish also logs
each as a structlog event (container.oom, container.memory_limit_hit).

The counters are kept per container name in a MemoryEventStore that the
exporter reads from its own thread. They stay after the container stops, and
after `rm` for RETAIN_S seconds (at most RETAIN_MAX removed containers,
oldest dropped first): long enough for a few scrapes at any usual interval,
so an OOM kill right before a removal still reaches Prometheus, and bounded,
so a host that churns through many short-lived names does not grow the
exposition for ever. A new container with the same name starts a new series
value (a counter reset, which Prometheus handles). Removed containers are
kept in memory only: a restarted daemon forgets them (their cgroups are gone).

Reads of memory.events / memory.oom_control are done on the trio thread:
cgroupfs answers them from memory, without I/O, in microseconds; a thread
hop would cost more than the read.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from exporters.view import MemoryEventsView
from supervisor.daemon.events import EventBus
from supervisor.inotify import IN_MODIFY, Inotify

log = structlog.get_logger("nsvisor")

RETAIN_S = 600.0
RETAIN_MAX = 1000


class MemoryCgroups(Protocol):
    @property
    def layout(self) -> str: ...

    def path(self, name: str) -> str: ...

    def oom_kill_file(self, name: str) -> str | None: ...

    def memory_events(self, name: str) -> dict[str, int]: ...


@dataclass
class _Entry:
    cgroup_path: str
    image: str
    events: dict[str, int]
    removed_at: float | None = None


class MemoryEventStore:
    """Last known memory-event counters per container name. Written from the
    trio side, read by the exporter's thread: every access holds the lock."""

    def __init__(
        self,
        retain_s: float = RETAIN_S,
        retain_max: int = RETAIN_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retain_s = retain_s
        self.retain_max = retain_max
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def update(self, name: str, cgroup_path: str, image: str, events: Mapping[str, int]) -> None:
        """Record a fresh read of the cgroup's counters. A removed entry of
        the same name belongs to an earlier cgroup and is replaced."""
        with self._lock:
            self._entries[name] = _Entry(cgroup_path, image, dict(events))

    def get(self, name: str) -> dict[str, int]:
        with self._lock:
            entry = self._entries.get(name)
            return dict(entry.events) if entry is not None else {}

    def retire(self, name: str) -> None:
        """The container was removed: keep its final counts for a while."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.removed_at is None:
                entry.removed_at = self.clock()
            self._prune()

    def snapshot(self) -> tuple[MemoryEventsView, ...]:
        with self._lock:
            self._prune()
            return tuple(
                MemoryEventsView(
                    name=name,
                    cgroup_path=e.cgroup_path,
                    image=e.image,
                    events=tuple(sorted(e.events.items())),
                    removed=e.removed_at is not None,
                )
                for name, e in sorted(self._entries.items())
            )

    def _prune(self) -> None:
        now = self.clock()
        removed = sorted(
            (e.removed_at, name) for name, e in self._entries.items() if e.removed_at is not None
        )
        excess = len(removed) - self.retain_max
        for i, (removed_at, name) in enumerate(removed):
            if i < excess or now - removed_at > self.retain_s:
                del self._entries[name]


class MemoryWatch:
    def __init__(
        self,
        cgroups: MemoryCgroups,
        events: EventBus,
        store: MemoryEventStore | None = None,
        *,
        coalesce_s: float = 0.05,
        limit_hit_interval_s: float = 5.0,
    ) -> None:
        self.cgroups = cgroups
        self.events = events
        self.store = store if store is not None else MemoryEventStore()
        self.coalesce_s = coalesce_s
        self.limit_hit_interval_s = limit_hit_interval_s

    @asynccontextmanager
    async def watching(self, name: str, image: str) -> AsyncIterator[None]:
        """Watch the container's memory cgroup for the duration of the block
        (one run of the container), then read the counters a last time: the
        OOM kill that ended the run is counted before the "die" event."""
        path = self.cgroups.oom_kill_file(name)
        if path is None:  # no memory controller: nothing to watch
            yield
            return
        w = _Watcher(self, name, image)
        w.check(publish=False)  # the baseline: what happened before this run is not news
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(w.run, path)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            w.check(final=True)

    def retire(self, name: str) -> None:
        self.store.retire(name)

    def counts(self, name: str) -> dict[str, int]:
        return self.store.get(name)


class _Watcher:
    """One container run's watch state: the counters last seen and the limit
    hits not yet published."""

    def __init__(self, mw: MemoryWatch, name: str, image: str) -> None:
        self.mw = mw
        self.name = name
        self.image = image
        self.seen: dict[str, int] = {}
        self.pending_hits = 0
        self.last_hit_event = -float("inf")

    def check(self, *, publish: bool = True, final: bool = False) -> None:
        mw = self.mw
        try:
            counts = mw.cgroups.memory_events(self.name)
        except (OSError, ValueError) as exc:
            log.warning("memwatch.read_failed", container=self.name, error=str(exc))
            return
        if not counts:
            return  # cgroup gone (or no counters): keep what we had
        mw.store.update(self.name, mw.cgroups.path(self.name), self.image, counts)
        previous, self.seen = self.seen, counts
        if not publish or not previous:
            return
        new_kills = counts.get("oom_kill", 0) - previous.get("oom_kill", 0)
        if new_kills > 0:
            mw.events.publish(
                "oom",
                self.name,
                oom_kills=counts["oom_kill"],
                new_oom_kills=new_kills,
                memory_events=counts,
            )
        self.pending_hits += max(0, counts.get("max", 0) - previous.get("max", 0))
        now = trio.current_time()
        if self.pending_hits and (final or now - self.last_hit_event >= mw.limit_hit_interval_s):
            mw.events.publish(
                "memory_limit_hit",
                self.name,
                max=counts.get("max", 0),
                new_hits=self.pending_hits,
                memory_events=counts,
            )
            self.pending_hits = 0
            self.last_hit_event = now

    def _next_hit_deadline(self) -> float:
        if not self.pending_hits:
            return float("inf")
        return self.last_hit_event + self.mw.limit_hit_interval_s

    async def run(self, path: str) -> None:
        try:
            if self.mw.cgroups.layout == "v2":
                await self._run_inotify(path)
            else:
                await self._run_eventfd(path)
        except OSError as exc:
            # Counting still works at scrape time and at exit; only the
            # real-time events are lost. Say so once.
            log.warning("memwatch.unavailable", container=self.name, path=path, error=str(exc))

    async def _wait(self, fd: int) -> None:
        """Wait for the fd, or until held-back limit hits are due."""
        with trio.move_on_at(self._next_hit_deadline()):
            await trio.lowlevel.wait_readable(fd)

    async def _run_inotify(self, path: str) -> None:
        with Inotify() as ino:
            ino.add_watch(path, IN_MODIFY)
            while True:
                await self._wait(ino.fd)
                ino.drain()
                self.check()
                await trio.sleep(self.mw.coalesce_s)

    async def _run_eventfd(self, oom_control: str) -> None:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(oom_control, os.O_RDONLY | os.O_CLOEXEC)
            try:
                control = os.path.join(os.path.dirname(oom_control), "cgroup.event_control")
                with open(control, "w") as f:
                    f.write(f"{efd} {ofd}")
                while True:
                    await self._wait(efd)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(efd)
                    if not os.path.isdir(os.path.dirname(oom_control)):
                        return  # the kernel signals the eventfd when the cgroup goes away
                    self.check()
                    await trio.sleep(self.mw.coalesce_s)
            finally:
                # Closing the eventfd unregisters the notification.
                os.close(ofd)
        finally:
            os.close(efd)
