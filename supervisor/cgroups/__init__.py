"""cgroups, one interface over two layouts.

- v2.py: pure cgroup v2 (production hosts).
- v1.py: v1 controller hierarchies, plus the empty cgroup2 hierarchy at
  root/unified where mounted (the "hybrid" layout of the build machines).

detect() decides once from an injectable root; open_manager() returns the
matching backend. Both fill the version-neutral Stats model (stats.py).
"""

from __future__ import annotations

import os

from .limits import Limits
from .manager import CgroupManager, Layout
from .stats import IoDevice, Pressure, Stats
from .v1 import V1Manager
from .v2 import V2Manager

__all__ = [
    "CgroupManager",
    "IoDevice",
    "Layout",
    "Limits",
    "Pressure",
    "Stats",
    "V1Manager",
    "V2Manager",
    "detect",
    "open_manager",
]


def detect(root: str = "/sys/fs/cgroup") -> Layout:
    """ "v2" when root itself is a cgroup2 mount (it has cgroup.controllers),
    else "hybrid" (v1 controller directories, optionally root/unified)."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    return "hybrid"


def open_manager(
    root: str = "/sys/fs/cgroup", parent: str = "nsvisor", *, stat_fds: int = 0
) -> CgroupManager:
    """`stat_fds`: how many stat files stats() may keep open between calls
    (_fs.StatFiles; the daemon passes _fs.stat_fd_budget())."""
    if detect(root) == "v2":
        return V2Manager(root, parent, stat_fds=stat_fds)
    return V1Manager(root, parent, stat_fds=stat_fds)
