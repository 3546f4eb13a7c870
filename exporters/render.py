"""Prometheus text format (0.0.4) of the container families, written directly.

prometheus_client turns every sample into a Sample tuple with a label dict,
then sorts, escapes and formats each label of each sample again: at 500
containers (~36,000 samples) that was ~140 ms of a ~250 ms scrape, all of it
holding the GIL in the daemon. Here each container's label set is escaped
once (and kept across scrapes while the view does not change), each family's
HELP/TYPE header is a constant, a sample is one f-string, and the text is
joined once.

The output is byte for byte what generate_latest() makes of
ContainerCollector.collect() (same family order, labels sorted by name,
values through Go's float formatting); tests/unit/test_exporter.py compares
the two on the golden scenes and on awkward label values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from exporters.families import HEALTH, NETWORK, SIMPLE
from exporters.netdev import NetDev
from supervisor.cgroups.stats import Stats
from supervisor.lifecycle import STATES

if TYPE_CHECKING:
    from exporters.collector import Scrape


def esc(value: str) -> str:
    """A label value as the text format quotes it (prometheus_client's ALLOWUTF8 escape)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def fmt(d: float | int) -> str:
    """prometheus_client.utils.floatToGoString."""
    d = float(d)
    s = repr(d)
    if d > 0:
        if d == math.inf:
            return "+Inf"
        dot = s.find(".")
        # Go switches to exponents sooner than Python.
        if dot > 6:
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return s
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    return s


def header(name: str, doc: str, kind: str) -> str:
    """# HELP / # TYPE of one family; `name` is the sample name (with _total)."""
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _sample_name(name: str, kind: str) -> str:
    return name.removesuffix("_total") + "_total" if kind == "counter" else name


class Labels:
    """The escaped label strings of one (name, id, image) triple, in the
    order the text format sorts label names."""

    __slots__ = ("base", "id_image", "name")

    def __init__(self, name: str, cgroup_path: str, image: str) -> None:
        self.id_image = f'id="{esc(cgroup_path)}",image="{esc(image)}"'
        self.name = f'name="{esc(name)}"'
        self.base = f"{self.id_image},{self.name}"  # id, image, name


class LabelCache:
    """Labels per (name, id, image), kept from one scrape to the next; what
    no scrape asked for in the last two is forgotten (removed containers)."""

    def __init__(self) -> None:
        self._now: dict[tuple[str, str, str], Labels] = {}
        self._prev: dict[tuple[str, str, str], Labels] = {}

    def get(self, name: str, cgroup_path: str, image: str) -> Labels:
        key = (name, cgroup_path, image)
        lv = self._now.get(key)
        if lv is None:
            lv = self._prev.get(key) or Labels(name, cgroup_path, image)
            self._now[key] = lv
        return lv

    def roll(self) -> None:
        # Concurrent scrapes: at worst one of them rebuilds a few strings.
        self._prev, self._now = self._now, {}


# Constant parts, built once at import.
_CPU = (
    header(
        "container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", "counter"
    ),
    'container_cpu_usage_seconds_total{cpu="total",',
)
_SIMPLE: tuple[tuple[str, str, Callable[[Stats], float | int | None]], ...] = tuple(
    (
        header(_sample_name(s.name, s.kind), s.help, s.kind),
        _sample_name(s.name, s.kind) + "{",
        s.get,
    )
    for s in SIMPLE
)
_FAILURES = header(
    "container_memory_failures_total", "Cumulative count of memory allocation failures.", "counter"
)
_DEVICE_FAMILIES = (
    ("container_fs_reads_bytes_total", "Cumulative count of bytes read."),
    ("container_fs_writes_bytes_total", "Cumulative count of bytes written."),
    ("container_fs_reads_total", "Cumulative count of reads completed."),
    ("container_fs_writes_total", "Cumulative count of writes completed."),
)
_BLKIO = header("container_blkio_device_usage_total", "Blkio device bytes usage.", "counter")
_PRESSURE = tuple(
    (
        res,
        kind,
        header(
            f"container_pressure_{res}_{kind}_seconds_total",
            f"Total time duration tasks in the container have {kind} due to {res} pressure (PSI {'some' if kind == 'waiting' else 'full'}).",
            "counter",
        ),
        f"container_pressure_{res}_{kind}_seconds_total{{",
    )
    for res in ("cpu", "memory", "io")
    for kind in ("waiting", "stalled")
)
_START = header(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    "gauge",
)
_SEEN = header("container_last_seen", "Last time a container was seen by the exporter.", "gauge")
_NETWORK: tuple[tuple[str, str, Callable[[NetDev], int]], ...] = tuple(
    (
        header(f"container_network_{suffix}_total", f"{doc}.", "counter"),
        f"container_network_{suffix}_total{{",
        get,
    )
    for suffix, doc, get in NETWORK
)
_OOM = header(
    "container_oom_events_total",
    "Count of out of memory events (kills) observed for the container, from the cgroup's oom_kill counter.",
    "counter",
)
_EVENTS = header(
    "nsvisor_memory_events_total",
    "memory.events counters of the container's cgroup (v1: max and oom_kill only), "
    "kept after the container stops or is removed.",
    "counter",
)
_STATE = header("nsvisor_container_state", "The container's lifecycle state (one-hot).", "gauge")
_STATE_SUFFIX = tuple((st, f'state="{esc(st)}"}} ') for st in STATES)
_RESTARTS = header(
    "nsvisor_container_restarts_total", "Restarts done by the restart policy.", "counter"
)
_EXIT = header(
    "nsvisor_container_last_exit_code", "Exit code of the container's last run.", "gauge"
)
_BACKOFF = header(
    "nsvisor_container_backoff_seconds", "The current restart backoff delay.", "gauge"
)
_HEALTH = header(
    "nsvisor_container_health_status",
    "1 healthy, 0 unhealthy; absent without a health check or before its first verdict.",
    "gauge",
)
_ERRORS = header(
    "nsvisor_scrape_errors_total",
    "cgroup and proc files that could not be read during scrapes.",
    "counter",
)
_INFO = header("nsvisor_build_info", "nsvisor version and cgroup layout.", "gauge")


def render(sc: Scrape, layout: str, version: str, cache: LabelCache) -> str:
    out: list[str] = []
    a = out.append
    running = sc.running
    stats = sc.stats
    cache.roll()
    rows = [(cache.get(v.name, v.cgroup_path, v.image), stats[v.name], v) for v in running]

    # --- cgroup families (collector._cgroup_metrics) ---
    a(_CPU[0])
    prefix = _CPU[1]
    for lv, s, _ in rows:
        if s.cpu_usage_ns is not None:
            a(f"{prefix}{lv.base}}} {fmt(s.cpu_usage_ns / 1e9)}\n")
    for head, prefix, get in _SIMPLE:
        a(head)
        for lv, s, _ in rows:
            value = get(s)
            if value is not None:
                a(f"{prefix}{lv.base}}} {fmt(value)}\n")
    a(_FAILURES)
    for lv, s, _ in rows:
        for failure_type, scope, value in (
            ("pgfault", "container", s.memory_pgfault),
            ("pgfault", "hierarchy", s.memory_pgfault_hierarchy),
            ("pgmajfault", "container", s.memory_pgmajfault),
            ("pgmajfault", "hierarchy", s.memory_pgmajfault_hierarchy),
        ):
            if value is not None:
                a(
                    f'container_memory_failures_total{{failure_type="{failure_type}",'
                    f'{lv.base},scope="{scope}"}} {fmt(value)}\n'
                )
    # Four per-device families, then blkio (Read/Write lines interleaved per device).
    per_device: list[list[str]] = [[], [], [], []]
    blkio: list[str] = []
    for lv, s, _ in rows:
        for dev in s.io or ():
            device = f'device="{dev.major}:{dev.minor}",'
            if dev.read_bytes is not None:
                text = fmt(dev.read_bytes)
                per_device[0].append(f"{{{device}{lv.base}}} {text}\n")
                blkio.append(
                    f'container_blkio_device_usage_total{{{device}{lv.id_image},major="{dev.major}",'
                    f'minor="{dev.minor}",{lv.name},operation="Read"}} {text}\n'
                )
            if dev.write_bytes is not None:
                text = fmt(dev.write_bytes)
                per_device[1].append(f"{{{device}{lv.base}}} {text}\n")
                blkio.append(
                    f'container_blkio_device_usage_total{{{device}{lv.id_image},major="{dev.major}",'
                    f'minor="{dev.minor}",{lv.name},operation="Write"}} {text}\n'
                )
            if dev.reads is not None:
                per_device[2].append(f"{{{device}{lv.base}}} {fmt(dev.reads)}\n")
            if dev.writes is not None:
                per_device[3].append(f"{{{device}{lv.base}}} {fmt(dev.writes)}\n")
    for (name, doc), lines in zip(_DEVICE_FAMILIES, per_device, strict=True):
        a(header(name, doc, "counter"))
        for line in lines:
            a(name)
            a(line)
    a(_BLKIO)
    out.extend(blkio)
    for res, kind, head, prefix in _PRESSURE:
        a(head)
        for lv, s, _ in rows:
            p = (s.pressure or {}).get(res)
            if p is None:
                continue
            us = p.some_total_us if kind == "waiting" else p.full_total_us
            if us is not None:
                a(f"{prefix}{lv.base}}} {fmt(us / 1e6)}\n")
    a(_START)
    for lv, _, v in rows:
        if v.started_at is not None:
            a(f"container_start_time_seconds{{{lv.base}}} {fmt(v.started_at)}\n")
    a(_SEEN)
    now = fmt(sc.now)
    for lv, _, _ in rows:
        a(f"container_last_seen{{{lv.base}}} {now}\n")

    # --- network (collector._network_metrics) ---
    nets = sc.nets
    net_rows = [
        (lv, [(f'interface="{esc(d.interface)}",', d) for d in nets[v.name]])
        for lv, _, v in rows
        if v.name in nets
    ]
    for head, prefix, nget in _NETWORK:
        a(head)
        for lv, devs in net_rows:
            for iface, d in devs:
                a(f"{prefix}{lv.id_image},{iface}{lv.name}}} {fmt(nget(d))}\n")

    # --- memory events (collector._memory_event_metrics) ---
    merged: dict[str, tuple[Labels, dict[str, int]]] = {}
    for m in sc.memory_events:
        merged[m.name] = (cache.get(m.name, m.cgroup_path, m.image), dict(m.events))
    for lv, s, v in rows:
        live = s.memory_events
        if live is None:
            continue
        _, known = merged.setdefault(v.name, (lv, {}))
        for key, value in live.items():
            known[key] = max(value, known.get(key, 0))
    events: list[str] = []
    a(_OOM)
    for name in sorted(merged):
        lv, counts = merged[name]
        for key in sorted(counts):
            events.append(
                f'nsvisor_memory_events_total{{event="{esc(key)}",{lv.base}}} {fmt(counts[key])}\n'
            )
        if "oom_kill" in counts:
            a(f"container_oom_events_total{{{lv.base}}} {fmt(counts['oom_kill'])}\n")
    a(_EVENTS)
    out.extend(events)

    # --- supervisor (collector._supervisor_metrics) ---
    views = sc.views
    names = [f'{{name="{esc(v.name)}"}} ' for v in views]
    a(_STATE)
    for v in views:
        lname = f'nsvisor_container_state{{name="{esc(v.name)}",'
        for st, suffix in _STATE_SUFFIX:
            a(f"{lname}{suffix}{'1.0' if v.state == st else '0.0'}\n")
    a(_RESTARTS)
    for v, n in zip(views, names, strict=True):
        a(f"nsvisor_container_restarts_total{n}{fmt(v.restart_count)}\n")
    a(_EXIT)
    for v, n in zip(views, names, strict=True):
        if v.exit_code is not None:
            a(f"nsvisor_container_last_exit_code{n}{fmt(v.exit_code)}\n")
    a(_BACKOFF)
    for v, n in zip(views, names, strict=True):
        if v.backoff_s is not None:
            a(f"nsvisor_container_backoff_seconds{n}{fmt(v.backoff_s)}\n")
    a(_HEALTH)
    for v, n in zip(views, names, strict=True):
        if v.health in HEALTH:
            a(f"nsvisor_container_health_status{n}{fmt(HEALTH[v.health])}\n")
    a(_ERRORS)
    for file, count in sc.errors:
        a(f'nsvisor_scrape_errors_total{{file="{esc(file)}"}} {fmt(count)}\n')
    a(_INFO)
    a(f'nsvisor_build_info{{cgroup_layout="{esc(layout)}",version="{esc(version)}"}} 1.0\n')
    return "".join(out)
