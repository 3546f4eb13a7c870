"""The container metric families as data: name, help, type and how to get
the value from the Stats model (cAdvisor's lib/metrics/prometheus.go layout).
Shared by the collector (prometheus_client families) and the fast text
renderer (exporters/render.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporters.netdev import NetDev
from supervisor.cgroups.stats import Stats


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
    # cAdvisor's name; only where a reservation is set (memory.low > 0 /
    # a soft limit), so hosts without one export nothing rather than 0.
    Spec(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation for the container.",
        "gauge",
        lambda s: s.memory_reservation,
    ),
    Spec(
        "nsvisor_spec_memory_high_bytes",
        "Memory high limit (cgroup v2 memory.high) of the container.",
        "gauge",
        lambda s: s.memory_high,
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
