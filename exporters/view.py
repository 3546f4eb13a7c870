"""The immutable view of one container that the exporter reads.

The daemon replaces the whole tuple of views on every lifecycle transition
(one atomic assignment), so a scrape running in another thread never touches
trio objects or a dict that is being changed (STYLE habit 8)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerView:
    name: str
    cgroup_name: str  # the name the cgroup manager knows it by
    cgroup_path: str  # the `id` label, e.g. /nsvisor/web
    image: str  # rootfs path
    state: str
    restart_count: int
    exit_code: int | None
    started_at: float | None
    backoff_s: float | None
    workload_pid: int | None = None
    """Host pid of the workload while running: /proc/PID/net/dev is its
    network namespace's interface table."""
    health: str | None = None
    """"healthy" / "unhealthy" / "starting"; None without a health check."""


@dataclass(frozen=True)
class MemoryEventsView:
    """The daemon's last known memory-event counters of one container's
    cgroup (supervisor.daemon.memwatch), kept after the container stops and,
    for a while, after it is removed."""

    name: str
    cgroup_path: str
    image: str
    events: tuple[tuple[str, int], ...]
    """(counter, value) pairs: v2 low/high/max/oom/oom_kill/oom_group_kill;
    v1 max/oom_kill (only what the layout really counts)."""
    removed: bool = False
