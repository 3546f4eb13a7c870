"""The lifecycle table: every legal path, and illegal events rejected with a reason."""

import pytest

from supervisor.lifecycle import STATES, TRANSITIONS, IllegalTransition, transition


def test_a_restart_cycle_walks_the_table() -> None:
    s = "created"
    for event in (
        "start",
        "started",
        "exit",
        "schedule_restart",
        "start",
        "started",
        "stop",
        "exit",
    ):
        s = transition("web", s, event)  # type: ignore[arg-type]
    assert s == "exited"


def test_every_target_is_a_known_state() -> None:
    assert set(TRANSITIONS.values()) <= set(STATES)


@pytest.mark.parametrize(
    ("state", "event"),
    [("running", "start"), ("running", "remove"), ("removing", "start"), ("exited", "stop")],
)
def test_illegal_events_name_the_container_and_state(state: str, event: str) -> None:
    with pytest.raises(IllegalTransition) as err:
        transition("web", state, event)  # type: ignore[arg-type]
    assert "web" in str(err.value) and state in str(err.value)
