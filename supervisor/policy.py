"""Restart policies and backoff: pure decisions, no clock, no trio (STYLE habit 2).

The daemon's container task asks `decide()` what to do after every exit and
only sleeps and acts on the answer, so the whole policy is tested without an
event loop (tests/unit/test_policy.py).

Semantics follow Docker's restart manager (moby/restartmanager):
- no: never restart.
- on-failure[:N]: restart when the exit code is non-zero, at most N times
  (N = 0 or absent: no limit).
- always: restart whatever the exit code.
- unless-stopped: like always; the difference shows only when the daemon starts
  (a container the user stopped stays stopped, see `start_on_boot`).
- A container stopped by the user (`nsvisor stop`) is never restarted.
- Backoff: the first restart waits `initial_s` (100 ms), each further one
  `factor` (2) times longer, capped at `max_s` (60 s); a run that lasted at
  least `reset_after_s` (10 s) resets the delay to `initial_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PolicyName = Literal["no", "on-failure", "always", "unless-stopped"]
POLICY_NAMES: tuple[PolicyName, ...] = ("no", "on-failure", "always", "unless-stopped")


@dataclass(frozen=True)
class RestartPolicy:
    name: PolicyName = "no"
    max_retries: int = 0  # on-failure only; 0 = unlimited

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


def parse_restart_policy(text: str) -> RestartPolicy:
    """Parse Docker's --restart syntax. Raises ValueError with the accepted forms."""
    name, sep, count = text.strip().partition(":")
    if name not in POLICY_NAMES:
        raise ValueError(
            f"unknown restart policy {text!r}; use one of no, on-failure[:N], always, unless-stopped"
        )
    if not sep:
        return RestartPolicy(name)
    if name != "on-failure":
        raise ValueError(f"restart policy {name!r} takes no count; only on-failure:N does")
    try:
        retries = int(count)
    except ValueError:
        raise ValueError(
            f"on-failure count {count!r} is not a whole number; e.g. on-failure:3"
        ) from None
    if retries < 0:
        raise ValueError(f"on-failure count must be 0 or more, got {retries}")
    return RestartPolicy("on-failure", retries)


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.1
    factor: float = 2.0
    max_s: float = 60.0
    reset_after_s: float = 10.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float  # how long to wait before the restart (0 when not restarting)
    reason: str


def next_delay(backoff: Backoff, previous_delay_s: float | None, run_s: float) -> float:
    """The delay before the next restart, given the one before (None: first restart)."""
    if previous_delay_s is None or run_s >= backoff.reset_after_s:
        return min(backoff.initial_s, backoff.max_s)
    return min(previous_delay_s * backoff.factor, backoff.max_s)


def decide(
    policy: RestartPolicy,
    backoff: Backoff,
    *,
    exit_code: int,
    restart_count: int,
    stopped_by_user: bool,
    run_s: float,
    previous_delay_s: float | None,
) -> Decision:
    """Whether and when to restart a container whose workload just exited.

    restart_count counts the restarts already done for this container run
    (reset by an explicit `start`); run_s is how long the exited run lasted.
    """
    if stopped_by_user:
        return Decision(False, 0.0, "stopped by user")
    if policy.name == "no":
        return Decision(False, 0.0, "restart policy is no")
    if policy.name == "on-failure":
        if exit_code == 0:
            return Decision(False, 0.0, "exited 0 under on-failure")
        if policy.max_retries and restart_count >= policy.max_retries:
            return Decision(False, 0.0, f"gave up after {restart_count} restarts")
    delay = next_delay(backoff, previous_delay_s, run_s)
    return Decision(True, delay, f"restart policy {policy}")


def start_on_boot(policy: RestartPolicy, *, stopped_by_user: bool, was_running: bool) -> bool:
    """Whether the daemon starts a known container when it (re)starts.

    always: yes, even if the user stopped it (Docker does the same);
    unless-stopped: yes unless the user stopped it; on-failure: only if it was
    running when the daemon went away; no: only if it was running.
    """
    if policy.name == "always":
        return True
    if policy.name == "unless-stopped":
        return not stopped_by_user
    return was_running and not stopped_by_user
