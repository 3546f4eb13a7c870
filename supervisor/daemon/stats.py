"""`nsvisor stats` (GET /v1/stats) and `nsvisor top` (GET
/v1/containers/NAME/top).

stats: one sample of every running container per interval, shared by every
viewer. The StatsHub has no task of its own: the viewers take turns on one
lock, and whoever holds it when the interval is over reads the cgroup files
(one `CgroupManager.stats` per container, the model the exporter reads, in one
worker thread) while the others wait for the result: a hundred viewers cost
one read per interval.

CPU % is Docker's (cli/command/container/stats_helpers.go calculateCPUPercentUnix):
the container's cpu usage delta over the host's total cpu time delta (the sum
of the "cpu" line of /proc/stat, all CPUs), times the number of online CPUs,
times 100: 100 % is one CPU busy. Memory usage is the working set (usage
minus inactive file cache, as Docker shows it); the limit is the cgroup's or,
without one, the host's memory. NET I/O from /proc/PID/net/dev of the
workload (none for network=host: those would be the host's numbers).

The arithmetic (`container_row`, `cpu_percent`, the /proc parsers) is pure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from exporters.netdev import NetReader
from exporters.view import ContainerView
from supervisor.cgroups.stats import Stats

DEFAULT_INTERVAL_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_proc_stat_total_ns(text: str, clk_tck: int = CLK_TCK) -> int:
    """The host's total cpu time (all CPUs, every state) from /proc/stat's
    "cpu" line, in nanoseconds. Pure."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            return sum(int(v) for v in line.split()[1:]) * 1_000_000_000 // clk_tck
    raise ValueError("no cpu line in /proc/stat")


def parse_meminfo_total(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no MemTotal in /proc/meminfo")


def cpu_percent(
    usage_ns: int | None,
    prev_usage_ns: int | None,
    system_ns: int,
    prev_system_ns: int | None,
    online_cpus: int,
) -> float | None:
    """Docker's formula; None without a previous sample. Pure."""
    if usage_ns is None or prev_usage_ns is None or prev_system_ns is None:
        return None
    cpu_delta = usage_ns - prev_usage_ns
    system_delta = system_ns - prev_system_ns
    if system_delta <= 0 or cpu_delta < 0:
        return 0.0
    return cpu_delta / system_delta * online_cpus * 100.0


@dataclass(frozen=True)
class Sample:
    """What one interval's read saw, kept for the next one's deltas."""

    system_ns: int
    cpu_ns: dict[str, int | None]


def container_row(
    view: ContainerView,
    stats: Stats,
    net: tuple[int, int] | None,
    *,
    cpu: float | None,
    host_memory: int,
) -> dict[str, Any]:
    """One container's line of `stats`. Pure."""
    usage = stats.memory_working_set
    limit = stats.memory_limit if stats.memory_limit is not None else host_memory
    if limit and limit > host_memory:
        limit = host_memory  # v1 reports "unlimited" as a huge number
    read = write = None
    if stats.io is not None:
        read = sum(d.read_bytes or 0 for d in stats.io)
        write = sum(d.write_bytes or 0 for d in stats.io)
    return {
        "name": view.name,
        "id": view.cgroup_path,
        "state": view.state,
        "cpu_percent": None if cpu is None else round(cpu, 2),
        "cpu_usage_ns": stats.cpu_usage_ns,
        "memory_usage": usage,
        "memory_limit": limit,
        "memory_percent": (None if usage is None or not limit else round(usage / limit * 100.0, 2)),
        "net_rx_bytes": None if net is None else net[0],
        "net_tx_bytes": None if net is None else net[1],
        "block_read_bytes": read,
        "block_write_bytes": write,
        "pids": stats.pids_current if stats.pids_current is not None else stats.processes,
        "restarts": view.restart_count,
        "health": view.health,
    }


class StatsSource:
    """The blocking part of one sample (run in a worker thread)."""

    def __init__(
        self,
        stats: Callable[[str], Stats],
        net: NetReader | None = None,
        proc_root: str = "/proc",
        online_cpus: int | None = None,
    ) -> None:
        self.stats = stats
        self.net = net if net is not None else NetReader(proc_root)
        self.proc_root = proc_root
        self.online_cpus = online_cpus or len(os.sched_getaffinity(0)) or 1
        with open(os.path.join(proc_root, "meminfo")) as f:
            self.host_memory = parse_meminfo_total(f.read())

    def system_ns(self) -> int:
        with open(os.path.join(self.proc_root, "stat")) as f:
            return parse_proc_stat_total_ns(f.read())

    def read(
        self, views: Sequence[ContainerView], prev: Sample | None
    ) -> tuple[Sample, list[dict[str, Any]]]:
        system = self.system_ns()
        rows: list[dict[str, Any]] = []
        cpu_ns: dict[str, int | None] = {}
        for v in views:
            try:
                s = self.stats(v.cgroup_name)
            except Exception:  # best effort, as a scrape
                s = Stats(errors=["stats"])
            net: tuple[int, int] | None = None
            pid = v.workload_pid
            if pid is not None and not self.net.shares_host_netns(pid):
                try:
                    devs = self.net.read(pid)
                    net = (sum(d.rx_bytes for d in devs), sum(d.tx_bytes for d in devs))
                except (OSError, ValueError):
                    net = None
            cpu_ns[v.name] = s.cpu_usage_ns
            cpu = cpu_percent(
                s.cpu_usage_ns,
                None if prev is None else prev.cpu_ns.get(v.name),
                system,
                None if prev is None else prev.system_ns,
                self.online_cpus,
            )
            rows.append(container_row(v, s, net, cpu=cpu, host_memory=self.host_memory))
        return Sample(system, cpu_ns), rows


class StatsHub:
    """Samples on demand, at most once per interval, for any number of viewers."""

    def __init__(
        self,
        source: Callable[[], StatsSource],
        views: Callable[[], tuple[ContainerView, ...]],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._make_source = source
        self._source: StatsSource | None = None
        self.views = views
        self.interval_s = interval_s
        self.seq = 0
        self.reads = 0  # samples taken (tests: viewers share them)
        self.latest: list[dict[str, Any]] = []
        self.taken_at = -math.inf
        self._prev: Sample | None = None
        self._lock = trio.Lock()

    async def _sample(self) -> None:
        if self._source is None:
            self._source = await trio.to_thread.run_sync(self._make_source)
        source = self._source
        views = tuple(v for v in self.views() if v.state in ("running", "stopping"))
        prev = self._prev
        if prev is None or trio.current_time() - self.taken_at > 3 * self.interval_s:
            # No recent sample to take deltas from: prime one first.
            prev, _ = await trio.to_thread.run_sync(source.read, views, None)
            await trio.sleep(self.interval_s)
        sample, rows = await trio.to_thread.run_sync(source.read, views, prev)
        self._prev = sample
        self.taken_at = trio.current_time()
        self.latest = rows
        self.reads += 1
        self.seq += 1

    async def next(self, after: int) -> tuple[int, list[dict[str, Any]]]:
        """The first snapshot newer than sequence number `after`."""
        while self.seq <= after:
            async with self._lock:
                if self.seq > after:
                    break
                wait = self.taken_at + self.interval_s - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                await self._sample()
        return self.seq, self.latest


# --- top -----------------------------------------------------------------------


def parse_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def process_row(pid: int, proc_root: str = "/proc") -> dict[str, Any] | None:
    """A process of the container as `top` shows it; None if it is gone."""
    base = os.path.join(proc_root, str(pid))
    try:
        with open(os.path.join(base, "status")) as f:
            status = parse_status(f.read())
        with open(os.path.join(base, "cmdline"), "rb") as f:
            cmdline = f.read()
        with open(os.path.join(base, "stat"), "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    nspids = status.get("NSpid", str(pid)).split()
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    return {
        "pid": pid,
        "container_pid": int(nspids[-1]),
        "ppid": int(fields[1]),
        "uid": int(status.get("Uid", "0").split()[0]),
        "state": fields[0].decode(),
        "threads": int(status.get("Threads", "1")),
        "command": " ".join(argv) if argv else f"[{status.get('Name', '?')}]",
    }
