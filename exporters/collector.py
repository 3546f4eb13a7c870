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

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporters.collectord import NotReady, Request
from exporters.families import HEALTH, NETWORK, SIMPLE, _ns
from exporters.netdev import NetDev, NetReader
from exporters.render import LabelCache, render
from exporters.view import ContainerView, MemoryEventsView
from supervisor import __version__
from supervisor.cgroups.stats import Stats
from supervisor.lifecycle import STATES

LABELS = ["name", "id", "image"]
log = structlog.get_logger()


class StatsSource(Protocol):
    @property
    def layout(self) -> str: ...

    def stats(self, name: str) -> Stats: ...


@dataclass(frozen=True)
class Scrape:
    """One scrape's data: what was read, and the views it was read for."""

    views: tuple[ContainerView, ...]
    running: list[ContainerView]
    stats: dict[str, Stats]
    nets: dict[str, list[NetDev]]
    now: float
    memory_events: tuple[MemoryEventsView, ...]
    errors: list[tuple[str, int]]
    """nsvisor_scrape_errors_total so far, sorted by file."""


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
        remote: Callable[[Request], tuple[bytes, list[str]]] | None = None,
    ) -> None:
        """`remote`: render() in a collector process (exporters/collectord.py),
        falling back to this thread when it fails."""
        self.source = source
        self.remote = remote
        self.views = views
        self.memory_events = memory_events or tuple
        self.net = net if net is not None else NetReader()
        self.clock = clock
        self.version = version
        # Scrapes may run concurrently (ThreadingHTTPServer): guard the counter.
        self._errors_lock = threading.Lock()
        self.scrape_errors: Counter[str] = Counter()
        # render()'s per-container label strings, rebuilt only for new views.
        self._label_cache = LabelCache()
        self._netns_now: dict[tuple[int, float | None], bool] = {}
        self._netns_prev: dict[tuple[int, float | None], bool] = {}

    def _host_netns(self, v: ContainerView) -> bool:
        """NetReader.shares_host_netns, asked once per run of a workload (the
        same pid and start time): whether a process is in the host's network
        namespace does not change while it runs (a container cannot reach the
        host's namespace file), and the stat() per container was ~6% of a
        scrape. Kept for the runs seen in the last two scrapes."""
        assert v.workload_pid is not None
        key = (v.workload_pid, v.started_at)
        shared = self._netns_now.get(key)
        if shared is None:
            shared = self._netns_prev.get(key)
            if shared is None:
                shared = self.net.shares_host_netns(v.workload_pid)
            self._netns_now[key] = shared
        return shared

    @property
    def layout_label(self) -> str:
        return self.source.layout

    def gather(self) -> Scrape:
        """Read every running container's cgroup stats and network counters
        once; count what could not be read. Both output paths start here."""
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
            if v.workload_pid is not None and not self._host_netns(v):
                try:
                    nets[v.name] = self.net.read(v.workload_pid, (v.workload_pid, v.started_at))
                except (OSError, ValueError):
                    errors.append("net/dev")
        self._netns_prev, self._netns_now = self._netns_now, {}
        self.net.roll()
        with self._errors_lock:
            self.scrape_errors.update(errors)
            counted = sorted(self.scrape_errors.items())
        return Scrape(views, running, stats, nets, now, self.memory_events(), counted)

    def collect(self) -> Iterable[Metric]:
        """prometheus_client's path (OpenMetrics, ?name[]=, the tests)."""
        sc = self.gather()
        yield from self._cgroup_metrics(sc.running, sc.stats, sc.now)
        yield from self._network_metrics(sc.running, sc.nets)
        yield from self._memory_event_metrics(sc.running, sc.stats, sc.memory_events)
        yield from self._supervisor_metrics(sc.views, sc.errors)

    def render(self) -> str:
        """The same families as collect(), as Prometheus text format 0.0.4,
        byte for byte what prometheus_client's generate_latest makes of them
        (tests/unit/test_exporter.py compares the two), about ten times
        faster: see exporters/render.py. In the collector process when there
        is one (`remote`)."""
        return self.render_bytes().decode()

    def render_bytes(self) -> bytes:
        """render(), UTF-8 encoded: what the collector process sends (the
        daemon then never decodes and re-encodes 3 MiB of text)."""
        if self.remote is not None:
            try:
                return self._render_remote(self.remote)
            except NotReady:
                pass  # starting: this scrape in this thread
            except Exception as e:  # the scrape goes on in this thread
                log.warning("metrics.collector_failed", error=repr(e))
        return render(self.gather(), self.layout_label, self.version, self._label_cache).encode()

    def _render_remote(self, remote: Callable[[Request], tuple[bytes, list[str]]]) -> bytes:
        views = self.views()
        generation = getattr(self.source, "spec_generation", None)
        generations = tuple(
            (v.cgroup_name, generation(v.cgroup_name) if generation else 0)
            for v in views
            if v.state in ("running", "stopping")
        )
        with self._errors_lock:
            counted = tuple(sorted(self.scrape_errors.items()))
        text, errors = remote(Request(views, self.memory_events(), counted, generations))
        with self._errors_lock:
            self.scrape_errors.update(errors)
        return text

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
        self,
        running: list[ContainerView],
        stats: dict[str, Stats],
        kept: tuple[MemoryEventsView, ...],
    ) -> Iterator[Metric]:
        """nsvisor_memory_events_total and container_oom_events_total for every
        container the daemon has counts for: running ones (the scrape's own
        read, merged with the daemon's real-time counts), stopped ones and,
        for a while, removed ones (their final counts; see memwatch)."""
        merged: dict[str, tuple[list[str], dict[str, int]]] = {}
        for m in kept:
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

    def _supervisor_metrics(
        self, views: tuple[ContainerView, ...], counted: list[tuple[str, int]]
    ) -> Iterator[Metric]:
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
        for file, n in counted:
            errors.add_metric([file], float(n))
        info = GaugeMetricFamily(
            "nsvisor_build_info",
            "nsvisor version and cgroup layout.",
            labels=["version", "cgroup_layout"],
        )
        info.add_metric([self.version, self.source.layout], 1.0)
        yield from (state, restarts, exit_code, backoff, health, errors, info)
