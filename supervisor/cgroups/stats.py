"""The version-neutral stats model both backends fill; the exporter reads only this.

A field is None when the layout cannot provide it (or the file could not be
read; then its name is also in `errors`). Values are never faked as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IoDevice:
    major: int
    minor: int
    read_bytes: int | None = None
    write_bytes: int | None = None
    reads: int | None = None
    writes: int | None = None


@dataclass(frozen=True)
class Pressure:
    """PSI totals (microseconds stalled). `full` is None where the kernel has
    no full line (cpu.pressure before 5.13)."""

    some_total_us: int
    full_total_us: int | None


@dataclass(frozen=True)
class Stats:
    # cpu (nanoseconds)
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    # memory (bytes)
    memory_usage: int | None = None
    memory_max_usage: int | None = None
    """v2 memory.peak (5.19+), v1 memory.max_usage_in_bytes."""
    memory_limit: int | None = None
    """None also when unlimited."""
    memory_swap_usage: int | None = None
    memory_swap_limit: int | None = None
    """swap only (not memory+swap); None also when unlimited."""
    memory_reservation: int | None = None
    """v2 memory.low / v1 memory.soft_limit_in_bytes; None also when unset."""
    memory_high: int | None = None
    """v2 memory.high; None when unlimited and on v1."""
    memory_rss: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_inactive_file: int | None = None
    memory_failcnt: int | None = None
    """v1 only."""
    memory_events: dict[str, int] | None = None
    # page faults (cAdvisor's container_memory_failures_total): "container"
    # scope counts this cgroup only, "hierarchy" includes child cgroups. v1 has
    # both (pgfault / total_pgfault); v2's memory.stat is hierarchical only, so
    # both scopes carry the same number there, as cAdvisor does.
    memory_pgfault: int | None = None
    memory_pgmajfault: int | None = None
    memory_pgfault_hierarchy: int | None = None
    memory_pgmajfault_hierarchy: int | None = None
    # pids
    processes: int | None = None
    """Length of the cgroup's own cgroup.procs (processes, not threads;
    cAdvisor's container_processes counts the same file, not recursively)."""
    pids_current: int | None = None
    """pids.current counts tasks, i.e. threads (container_threads)."""
    pids_max: int | None = None
    """None also when unlimited."""
    # io and pressure
    io: list[IoDevice] | None = None
    pressure: dict[str, Pressure] | None = None
    """"cpu", "memory", "io" -> totals; None when the layout has no PSI files."""
    # spec (what the kernel has now, not what was asked for)
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    cpu_shares: int | None = None
    cpu_weight: int | None = None
    errors: list[str] = field(default_factory=list)
    """Names of files that were missing or unreadable."""

    @property
    def memory_working_set(self) -> int | None:
        """usage - inactive_file, floored at 0 (cAdvisor's rule: inactive page
        cache can be reclaimed, so it does not count towards the OOM risk)."""
        if self.memory_usage is None:
            return None
        if self.memory_inactive_file is None:
            return self.memory_usage
        return max(0, self.memory_usage - self.memory_inactive_file)
