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
