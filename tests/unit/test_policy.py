"""Restart policy and backoff: pure decisions, no event loop."""

import pytest

from supervisor.policy import (
    Backoff,
    RestartPolicy,
    decide,
    next_delay,
    parse_restart_policy,
    start_on_boot,
)

B = Backoff()


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("no", RestartPolicy("no")),
        ("always", RestartPolicy("always")),
        ("unless-stopped", RestartPolicy("unless-stopped")),
        ("on-failure", RestartPolicy("on-failure", 0)),
        ("on-failure:3", RestartPolicy("on-failure", 3)),
    ],
)
def test_parse_valid(text: str, policy: RestartPolicy) -> None:
    assert parse_restart_policy(text) == policy
    assert str(policy) in (text, "on-failure")


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1", ""])
def test_parse_invalid_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_restart_policy(text)
    assert "on-failure" in str(err.value)


def run(policy: str, code: int, count: int = 0, **kw: object) -> tuple[bool, float]:
    d = decide(
        parse_restart_policy(policy),
        B,
        exit_code=code,
        restart_count=count,
        stopped_by_user=bool(kw.get("stopped", False)),
        run_s=float(kw.get("run_s", 0.0)),  # type: ignore[arg-type]
        previous_delay_s=kw.get("prev"),  # type: ignore[arg-type]
    )
    return d.restart, d.delay_s


def test_no_never_restarts() -> None:
    assert run("no", 1) == (False, 0.0)
    assert run("no", 0) == (False, 0.0)


def test_on_failure_restarts_only_failures_and_at_most_n_times() -> None:
    assert run("on-failure:3", 0)[0] is False
    assert [run("on-failure:3", 1, count=n)[0] for n in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert run("on-failure", 1, count=1000)[0] is True  # no count = unlimited


def test_always_and_unless_stopped_restart_on_success_too() -> None:
    assert run("always", 0)[0] is True
    assert run("unless-stopped", 0)[0] is True


def test_user_stop_wins_over_every_policy() -> None:
    for p in ("always", "unless-stopped", "on-failure"):
        assert run(p, 1, stopped=True) == (False, 0.0)


def test_backoff_doubles_from_100ms_to_a_60s_cap() -> None:
    delays = []
    prev = None
    for _ in range(12):
        d = next_delay(B, prev, run_s=0.5)
        delays.append(d)
        prev = d
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(delays) == 60.0
    assert delays[-1] == 60.0


def test_backoff_resets_after_a_10s_run() -> None:
    assert next_delay(B, 6.4, run_s=9.9) == pytest.approx(12.8)
    assert next_delay(B, 6.4, run_s=10.0) == pytest.approx(0.1)


def test_backoff_numbers_are_configurable() -> None:
    b = Backoff(initial_s=1.0, factor=3.0, max_s=5.0, reset_after_s=2.0)
    assert next_delay(b, None, 0) == 1.0
    assert next_delay(b, 1.0, 0) == 3.0
    assert next_delay(b, 3.0, 0) == 5.0
    assert next_delay(b, 5.0, 2.0) == 1.0


def test_decide_carries_the_backoff_delay() -> None:
    assert run("always", 1, prev=0.4) == (True, pytest.approx(0.8))


def test_start_on_boot() -> None:
    assert start_on_boot(RestartPolicy("always"), stopped_by_user=True, was_running=False)
    assert not start_on_boot(
        RestartPolicy("unless-stopped"), stopped_by_user=True, was_running=True
    )
    assert start_on_boot(RestartPolicy("unless-stopped"), stopped_by_user=False, was_running=False)
    assert not start_on_boot(RestartPolicy("no"), stopped_by_user=False, was_running=False)
    assert start_on_boot(RestartPolicy("no"), stopped_by_user=False, was_running=True)
