"""One collector that yields fresh metric families on every scrape
(prometheus_client's custom-collector pattern), from a declarative table of
name, help, type, getter (cAdvisor's lib/metrics/prometheus.go layout).

Scrapes are best effort: a container whose cgroup files cannot be read still
gets its other metrics; every unreadable file is counted in
nsvisor_scrape_errors_total{file}, and even an unexpected exception from one
container's stats only costs that container's cgroup series (file="stats").
A value the layout cannot provide (None in the Stats model) is left out,
never exported as zero.

collect() runs in prometheus_client's HTTP server thread and reads only
immutable snapshots (the tuple of ContainerView, the memory-event views),
never a trio object (STYLE habit 8). Nothing is detected per scrape: the
cgroup backend found its hierarchies once, the network reader its own
namespace once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporters.netdev import NetDev, NetReader
from exporters.view import ContainerView, MemoryEventsView
from supervisor import __version__
from supervisor.cgroups.stats import Stats
from supervisor.lifecycle import STATES

LABELS = ["name", "id", "image"]


class StatsSource(Protocol):
    @property
    def layout(self) -> str: ...

    def stats(self, name: str) -> Stats: ...


def _ns(v: int | None) -> float | None:
    return None if v is None else v / 1e9


@dataclass(frozen=True)
class Spec:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    get: Callable[[Stats], float | int | None]


# Names, types and units as cAdvisor exports them, so existing dashboards and
# alert rules work unchanged.
SIMPLE: tuple[Spec, ...] = (
    Spec(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        "counter",
        lambda s: _ns(s.cpu_user_ns),
    ),
    Spec(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        "counter",
        lambda s: _ns(s.cpu_system_ns),
    ),
    Spec(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        "counter",
        lambda s: s.cpu_periods,
    ),
    Spec(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        "counter",
        lambda s: s.cpu_throttled_periods,
    ),
    Spec(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        "counter",
        lambda s: _ns(s.cpu_throttled_ns),
    ),
    Spec(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        "gauge",
        lambda s: s.memory_usage,
    ),
    Spec(
        "container_memory_working_set_bytes",
        "Current working set in bytes (usage minus inactive file cache, floored at 0).",
        "gauge",
        lambda s: s.memory_working_set,
    ),
    Spec(
        "container_memory_rss",
        "Size of RSS (anonymous memory) in bytes.",
        "gauge",
        lambda s: s.memory_rss,
    ),
    Spec(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        "gauge",
        lambda s: s.memory_cache,
    ),
    Spec(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        "gauge",
        lambda s: s.memory_mapped_file,
    ),
    Spec(
        "container_memory_swap",
        "Container swap usage in bytes.",
        "gauge",
        lambda s: s.memory_swap_usage,
    ),
    Spec(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        "gauge",
        lambda s: s.memory_max_usage,
    ),
    # A counter in cAdvisor, but without "_total": prometheus_client would
    # append it, and promtool rejects a counter without it. Typed gauge, the
    # name stays cAdvisor's so dashboards' rate(container_memory_failcnt[..]) work.
    Spec(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        "gauge",
        lambda s: s.memory_failcnt,
    ),
    Spec(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        "gauge",
        lambda s: s.memory_limit,
    ),
    Spec(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        "gauge",
        lambda s: s.memory_swap_limit,
    ),
    Spec(
        "container_spec_cpu_quota", "CPU quota of the container.", "gauge", lambda s: s.cpu_quota_us
    ),
    Spec(
        "container_spec_cpu_period",
        "CPU period of the container.",
        "gauge",
        lambda s: s.cpu_period_us,
    ),
    # v2 has cpu.weight only; the backend converts it back to shares (the
    # inverse of runc's shares -> weight map) so the name exists on both.
    Spec(
        "container_spec_cpu_shares", "CPU share of the container.", "gauge", lambda s: s.cpu_shares
    ),
    Spec(
        "container_processes",
        "Number of processes running inside the container.",
        "gauge",
        lambda s: s.processes,
    ),
    Spec(
        "container_threads",
        "Number of threads running inside the container.",
        "gauge",
        lambda s: s.pids_current,  # pids.current counts tasks: threads
    ),
    Spec(
        "container_threads_max",
        "Maximum number of threads allowed inside the container.",
        "gauge",
        lambda s: s.pids_max,
    ),
)

# container_network_*: (metric suffix, help, NetDev field)
NETWORK: tuple[tuple[str, str, Callable[[NetDev], int]], ...] = (
    ("receive_bytes", "Cumulative count of bytes received", lambda n: n.rx_bytes),
    ("receive_packets", "Cumulative count of packets received", lambda n: n.rx_packets),
    ("receive_errors", "Cumulative count of errors encountered while receiving", lambda n: n.rx_errors),
    ("receive_packets_dropped", "Cumulative count of packets dropped while receiving", lambda n: n.rx_dropped),
    ("transmit_bytes", "Cumulative count of bytes transmitted", lambda n: n.tx_bytes),
    ("transmit_packets", "Cumulative count of packets transmitted", lambda n: n.tx_packets),
    ("transmit_errors", "Cumulative count of errors encountered while transmitting", lambda n: n.tx_errors),
    ("transmit_packets_dropped", "Cumulative count of packets dropped while transmitting", lambda n: n.tx_dropped),
)  # fmt: skip

HEALTH = {"healthy": 1.0, "unhealthy": 0.0}
"""nsvisor_container_health_status values; any other health ("starting") and
no health check at all leave the series out."""


def _family(
    spec_name: str, doc: str, kind: str, labels: list[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(spec_name.removesuffix("_total"), doc, labels=labels)
    return GaugeMetricFamily(spec_name, doc, labels=labels)


def _labels(v: ContainerView) -> list[str]:
    return [v.name, v.cgroup_path, v.image]


class ContainerCollector(Collector):
    def __init__(
        self,
        source: StatsSource,
        views: Callable[[], tuple[ContainerView, ...]],
        *,
        memory_events: Callable[[], tuple[MemoryEventsView, ...]] | None = None,
        net: NetReader | None = None,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        self.source = source
        self.views = views
        self.memory_events = memory_events or tuple
        self.net = net if net is not None else NetReader()
        self.clock = clock
        self.version = version
        # Scrapes may run concurrently (ThreadingHTTPServer): guard the counter.
        self._errors_lock = threading.Lock()
        self.scrape_errors: Counter[str] = Counter()

    def collect(self) -> Iterable[Metric]:
        views = self.views()
        now = self.clock()
        running = [v for v in views if v.state in ("running", "stopping")]
        errors: list[str] = []
        stats: dict[str, Stats] = {}
        nets: dict[str, list[NetDev]] = {}
        for v in running:
            try:
                s = self.source.stats(v.cgroup_name)
            except Exception:  # a bug or a vanished cgroup must not fail the scrape
                s = Stats(errors=["stats"])
            stats[v.name] = s
            errors.extend(s.errors)
            if v.workload_pid is not None and not self.net.shares_host_netns(v.workload_pid):
                try:
                    nets[v.name] = self.net.read(v.workload_pid)
                except (OSError, ValueError):
                    errors.append("net/dev")
        with self._errors_lock:
            self.scrape_errors.update(errors)
        yield from self._cgroup_metrics(running, stats, now)
        yield from self._network_metrics(running, nets)
        yield from self._memory_event_metrics(running, stats)
        yield from self._supervisor_metrics(views)

    def _cgroup_metrics(
        self, running: list[ContainerView], stats: dict[str, Stats], now: float
    ) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds",
            "Cumulative cpu time consumed in seconds.",
            labels=[*LABELS, "cpu"],
        )
        for v in running:
            value = _ns(stats[v.name].cpu_usage_ns)
            if value is not None:
                cpu.add_metric([*_labels(v), "total"], value)
        yield cpu
        for spec in SIMPLE:
            fam = _family(spec.name, spec.help, spec.kind, LABELS)
            for v in running:
                value = spec.get(stats[v.name])
                if value is not None:
                    fam.add_metric(_labels(v), float(value))
            yield fam
        failures = CounterMetricFamily(
            "container_memory_failures",
            "Cumulative count of memory allocation failures.",
            labels=[*LABELS, "failure_type", "scope"],
        )
        reads = CounterMetricFamily(
            "container_fs_reads_bytes",
            "Cumulative count of bytes read.",
            labels=[*LABELS, "device"],
        )
        writes = CounterMetricFamily(
            "container_fs_writes_bytes",
            "Cumulative count of bytes written.",
            labels=[*LABELS, "device"],
        )
        reads_n = CounterMetricFamily(
            "container_fs_reads", "Cumulative count of reads completed.", labels=[*LABELS, "device"]
        )
        writes_n = CounterMetricFamily(
            "container_fs_writes",
            "Cumulative count of writes completed.",
            labels=[*LABELS, "device"],
        )
        blkio = CounterMetricFamily(
            "container_blkio_device_usage",
            "Blkio device bytes usage.",
            labels=[*LABELS, "device", "major", "minor", "operation"],
        )
        pressure = {
            (res, kind): CounterMetricFamily(
                f"container_pressure_{res}_{kind}_seconds",
                f"Total time duration tasks in the container have {kind} due to {res} pressure (PSI {'some' if kind == 'waiting' else 'full'}).",
                labels=LABELS,
            )
            for res in ("cpu", "memory", "io")
            for kind in ("waiting", "stalled")
        }
        start = GaugeMetricFamily(
            "container_start_time_seconds",
            "Start time of the container since unix epoch in seconds.",
            labels=LABELS,
        )
        seen = GaugeMetricFamily(
            "container_last_seen", "Last time a container was seen by the exporter.", labels=LABELS
        )
        for v in running:
            s, lv = stats[v.name], _labels(v)
            for failure_type, scope, value in (
                ("pgfault", "container", s.memory_pgfault),
                ("pgfault", "hierarchy", s.memory_pgfault_hierarchy),
                ("pgmajfault", "container", s.memory_pgmajfault),
                ("pgmajfault", "hierarchy", s.memory_pgmajfault_hierarchy),
            ):
                if value is not None:
                    failures.add_metric([*lv, failure_type, scope], float(value))
            for dev in s.io or []:
                device = f"{dev.major}:{dev.minor}"
                if dev.read_bytes is not None:
                    reads.add_metric([*lv, device], float(dev.read_bytes))
                    blkio.add_metric(
                        [*lv, device, str(dev.major), str(dev.minor), "Read"], float(dev.read_bytes)
                    )
                if dev.write_bytes is not None:
                    writes.add_metric([*lv, device], float(dev.write_bytes))
                    blkio.add_metric(
                        [*lv, device, str(dev.major), str(dev.minor), "Write"],
                        float(dev.write_bytes),
                    )
                if dev.reads is not None:
                    reads_n.add_metric([*lv, device], float(dev.reads))
                if dev.writes is not None:
                    writes_n.add_metric([*lv, device], float(dev.writes))
            for res, p in (s.pressure or {}).items():
                if (res, "waiting") in pressure:
                    pressure[(res, "waiting")].add_metric(lv, p.some_total_us / 1e6)
                    if p.full_total_us is not None:
                        pressure[(res, "stalled")].add_metric(lv, p.full_total_us / 1e6)
            if v.started_at is not None:
                start.add_metric(lv, v.started_at)
            seen.add_metric(lv, now)
        yield from (
            failures,
            reads,
            writes,
            reads_n,
            writes_n,
            blkio,
            *pressure.values(),
            start,
            seen,
        )

    def _network_metrics(
        self, running: list[ContainerView], nets: dict[str, list[NetDev]]
    ) -> Iterator[Metric]:
        for suffix, doc, get in NETWORK:
            fam = CounterMetricFamily(
                f"container_network_{suffix}", f"{doc}.", labels=[*LABELS, "interface"]
            )
            for v in running:
                for dev in nets.get(v.name, ()):
                    fam.add_metric([*_labels(v), dev.interface], float(get(dev)))
            yield fam

    def _memory_event_metrics(
        self, running: list[ContainerView], stats: dict[str, Stats]
    ) -> Iterator[Metric]:
        """nsvisor_memory_events_total and container_oom_events_total for every
        container the daemon has counts for: running ones (the scrape's own
        read, merged with the daemon's real-time counts), stopped ones and,
        for a while, removed ones (their final counts; see memwatch)."""
        merged: dict[str, tuple[list[str], dict[str, int]]] = {}
        for m in self.memory_events():
            merged[m.name] = ([m.name, m.cgroup_path, m.image], dict(m.events))
        for v in running:
            live = stats[v.name].memory_events
            if live is None:
                continue
            _, known = merged.setdefault(v.name, (_labels(v), {}))
            for key, value in live.items():
                # Both come from the same kernel counters of one cgroup: the
                # larger is the newer.
                known[key] = max(value, known.get(key, 0))
        events = CounterMetricFamily(
            "nsvisor_memory_events",
            "memory.events counters of the container's cgroup (v1: max and oom_kill only), "
            "kept after the container stops or is removed.",
            labels=[*LABELS, "event"],
        )
        oom = CounterMetricFamily(
            "container_oom_events",
            "Count of out of memory events (kills) observed for the container, from the cgroup's oom_kill counter.",
            labels=LABELS,
        )
        for name in sorted(merged):
            lv, counts = merged[name]
            for key in sorted(counts):
                events.add_metric([*lv, key], float(counts[key]))
            if "oom_kill" in counts:
                oom.add_metric(lv, float(counts["oom_kill"]))
        yield from (oom, events)

    def _supervisor_metrics(self, views: tuple[ContainerView, ...]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "nsvisor_container_state",
            "The container's lifecycle state (one-hot).",
            labels=["name", "state"],
        )
        restarts = CounterMetricFamily(
            "nsvisor_container_restarts", "Restarts done by the restart policy.", labels=["name"]
        )
        exit_code = GaugeMetricFamily(
            "nsvisor_container_last_exit_code",
            "Exit code of the container's last run.",
            labels=["name"],
        )
        backoff = GaugeMetricFamily(
            "nsvisor_container_backoff_seconds",
            "The current restart backoff delay.",
            labels=["name"],
        )
        health = GaugeMetricFamily(
            "nsvisor_container_health_status",
            "1 healthy, 0 unhealthy; absent without a health check or before its first verdict.",
            labels=["name"],
        )
        for v in views:
            for st in STATES:
                state.add_metric([v.name, st], 1.0 if v.state == st else 0.0)
            restarts.add_metric([v.name], float(v.restart_count))
            if v.exit_code is not None:
                exit_code.add_metric([v.name], float(v.exit_code))
            if v.backoff_s is not None:
                backoff.add_metric([v.name], v.backoff_s)
            if v.health in HEALTH:
                health.add_metric([v.name], HEALTH[v.health])
        errors = CounterMetricFamily(
            "nsvisor_scrape_errors",
            "cgroup and proc files that could not be read during scrapes.",
            labels=["file"],
        )
        with self._errors_lock:
            counted = sorted(self.scrape_errors.items())
        for file, n in counted:
            errors.add_metric([file], float(n))
        info = GaugeMetricFamily(
            "nsvisor_build_info",
            "nsvisor version and cgroup layout.",
            labels=["version", "cgroup_layout"],
        )
        info.add_metric([self.version, self.source.layout], 1.0)
        yield from (state, restarts, exit_code, backoff, health, errors, info)
