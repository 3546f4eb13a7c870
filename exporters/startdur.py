"""nsvisor_container_start_duration_seconds: a histogram of container start
latencies (cgroup create + zygote launch until the workload is exec'd).

Observed on the trio side (ContainerManager._launch), collected in the scrape
thread; a lock guards the few integers. Hand-rolled instead of a
prometheus_client Histogram so the exposition has no `_created` timestamp
(golden files stay byte-exact) and no process-global registry is involved.

No per-container label: buckets x containers would be thousands of series on
a big host, and start latency is a property of the host, not of one
container (the per-start number is in the "start" event's start_duration_s).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# 10 ms (a warm zygote) to 30 s (a loaded machine creating cgroups).
BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StartDurations(Collector):
    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*map(_fmt, self.buckets), "+Inf"], counts, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        fam = HistogramMetricFamily(
            "nsvisor_container_start_duration_seconds",
            "Time from a start request to the workload's exec (cgroup set-up and launch).",
        )
        fam.add_metric([], cumulative, total)
        yield fam


def _fmt(bound: float) -> str:
    return repr(float(bound))
