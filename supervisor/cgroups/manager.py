"""The one interface both cgroup backends implement (youki's CgroupManager)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from supervisor.runtime.devices import DeviceRule

from .limits import Limits
from .stats import Stats

Layout = Literal["v2", "hybrid"]


class CgroupManager(Protocol):
    """Cgroups named relative to one parent (e.g. "nsvisor") in every hierarchy.

    Every method that acts raises supervisor.errors.KernelError (with errno
    and path) when the kernel refuses; stats() never raises.
    """

    layout: Layout

    def create(self, name: str, limits: Limits) -> None:
        """mkdir the cgroup (and the parent) in every hierarchy and write the
        limits; on failure remove what this call created. Idempotent: on an
        existing cgroup it reapplies the limits."""
        ...

    def set_devices(self, name: str, rules: Sequence[DeviceRule]) -> None:
        """Deny every device but `rules` (v1 devices controller, v2 BPF
        program). Call after create() and before any process joins."""
        ...

    def update(self, name: str, limits: Limits) -> None:
        """Write the limits to an existing cgroup (None fields reset to the
        kernel default)."""
        ...

    def procs_files(self, name: str) -> list[str]:
        """Every cgroup.procs file a process writes "0" into to join."""
        ...

    def path(self, name: str) -> str:
        """The cgroup id, the same in every hierarchy, e.g. "/nsvisor/web"."""
        ...

    def pids(self, name: str) -> list[int]:
        """Every process in the cgroup or a child cgroup, sorted."""
        ...

    def populated(self, name: str) -> bool: ...

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        """SIGKILL every process in the cgroup; return once it is empty."""
        ...

    def remove(self, name: str) -> None:
        """rmdir the cgroup (child cgroups first) in every hierarchy; already
        gone is fine. The parent is kept: see remove_parent()."""
        ...

    def remove_parent(self) -> None:
        """Remove the parent and everything under it in every hierarchy (for
        tests and cleanup)."""
        ...

    def stats(self, name: str) -> Stats:
        """Best effort, never raises. Keeps the cgroup's stat files open
        between calls (bounded; see _fs.StatFiles) and its limit values until
        create()/update()/remove() of the cgroup or a minute passes (see
        _fs.SpecCache)."""
        ...

    def close(self) -> None:
        """Close the stat files stats() keeps open (the daemon at exit)."""
        ...

    def spec_generation(self, name: str) -> int:
        """A number that changes whenever this manager writes the cgroup's
        limits (create, update) or removes it."""
        ...

    def invalidate_spec(self, name: str) -> None:
        """Forget the cached limit values: the next stats() reads them
        (another process's manager wrote them)."""
        ...

    def forget(self, name: str) -> None:
        """Close the cgroup's kept stat files and forget its limit values
        (it is gone, or no longer of interest)."""
        ...

    def oom_kill_file(self, name: str) -> str | None:
        """The file with an "oom_kill N" line (v2 memory.events, v1
        memory.oom_control); None without a memory controller."""
        ...

    def oom_kill_count(self, name: str) -> int | None: ...

    def memory_events(self, name: str) -> dict[str, int]:
        """Memory limit/OOM counters; only the keys the layout really has."""
        ...

    def events_file(self, name: str) -> str | None:
        """cgroup.events to watch with inotify for "populated" changes; None on
        v1 without the unified hierarchy."""
        ...

    def read_limits(self, name: str) -> Limits:
        """The limits as the kernel has them now (only the backend's native
        cpu field is filled: cpu_shares on v1, cpu_weight on v2)."""
        ...
