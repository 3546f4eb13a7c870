"""Health checks: Docker's HEALTHCHECK semantics, plus `on_unhealthy`.

The verdict after each probe is a pure function (`judge`) tested without an
event loop; `watch` is the trio task that only sleeps, probes (through the
exec path) and reports.

Docker's rules: the first probe runs one interval after the start; a probe
fails when it exits non-zero or outlives its timeout; `retries` failures in a
row make the container unhealthy, one success makes it healthy; failures
during the start period do not count (a success there ends it early).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import trio

from supervisor.config import HealthCheck

Status = Literal["starting", "healthy", "unhealthy"]
LOG_KEEP = 5  # probe results kept for inspect (Docker keeps 5)
OUTPUT_LIMIT = 4096  # bytes of a probe's output kept (Docker: 4 KiB)


@dataclass(frozen=True)
class ProbeResult:
    start: float  # time.time()
    end: float
    exit_code: int  # -1: timed out or could not run
    output: str

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "exit_code": self.exit_code,
            "output": self.output,
        }


@dataclass(frozen=True)
class Verdict:
    status: Status
    failing_streak: int


def judge(check: HealthCheck, previous: Verdict, *, ok: bool, since_start_s: float) -> Verdict:
    """The health after one probe. Pure."""
    if ok:
        return Verdict("healthy", 0)
    if previous.status == "starting" and since_start_s < check.start_period_s:
        return previous  # still starting: failures do not count yet
    streak = previous.failing_streak + 1
    if streak >= check.retries:
        return Verdict("unhealthy", streak)
    return Verdict(previous.status, streak)


Probe = Callable[[], Awaitable[ProbeResult]]
Report = Callable[[Verdict, ProbeResult, bool], None]


async def watch(
    check: HealthCheck,
    probe: Probe,
    report: Report,
    *,
    initial: Verdict | None = None,
    running_for_s: float = 0.0,
) -> Verdict:
    """Probe every interval until the container is unhealthy and the check
    says to restart it (then return the verdict); otherwise run until
    cancelled (the run ends). report(verdict, result, changed) after each probe.
    `initial` and `running_for_s`: where a run adopted after a daemon restart
    had got to (its verdict, and how long it has run: the start period)."""
    started = trio.current_time() - running_for_s
    verdict = initial or Verdict("starting", 0)
    while True:
        await trio.sleep(check.interval_s)
        result = await probe()
        new = judge(
            check, verdict, ok=result.exit_code == 0, since_start_s=trio.current_time() - started
        )
        changed = new.status != verdict.status
        verdict = new
        report(verdict, result, changed)
        if verdict.status == "unhealthy" and check.on_unhealthy == "restart":
            return verdict


def timed_out(start: float, timeout_s: float) -> ProbeResult:
    return ProbeResult(
        start, time.time(), -1, f"health check exceeded its timeout ({timeout_s:g}s)"
    )
