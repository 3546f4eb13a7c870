"""The container lifecycle as one table of (state, event) -> state (STYLE habit 3).

No I/O here: the daemon asks `transition()` before every state change, so an
illegal request (starting a container that is being removed, say) fails in one
place with a message the API can return as-is.
"""

from __future__ import annotations

from typing import Literal

from supervisor.errors import StateError

State = Literal["created", "starting", "running", "stopping", "exited", "restarting", "removing"]
Event = Literal["start", "started", "failed", "stop", "exit", "schedule_restart", "remove"]

STATES: tuple[State, ...] = (
    "created",
    "starting",
    "running",
    "stopping",
    "exited",
    "restarting",
    "removing",
)

TRANSITIONS: dict[tuple[State, Event], State] = {
    ("created", "start"): "starting",
    ("exited", "start"): "starting",
    ("restarting", "start"): "starting",
    ("starting", "started"): "running",
    ("starting", "failed"): "exited",
    ("running", "exit"): "exited",
    ("running", "stop"): "stopping",
    ("stopping", "exit"): "exited",
    ("exited", "schedule_restart"): "restarting",
    ("restarting", "stop"): "exited",
    ("created", "remove"): "removing",
    ("exited", "remove"): "removing",
}


class IllegalTransition(StateError):
    def __init__(self, name: str, state: State, event: Event) -> None:
        self.state = state
        self.event = event
        hint = {
            "start": "it is already running or being removed",
            "stop": "it is not running",
            "remove": "stop it first, or use rm -f",
        }.get(event, "")
        msg = f"container {name} cannot {event} while {state}"
        super().__init__(f"{msg}: {hint}" if hint else msg)


def transition(name: str, state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(name, state, event) from None


def is_active(state: State) -> bool:
    """Whether the container has (or is about to have) a live monitor or a pending restart."""
    return state in ("starting", "running", "stopping", "restarting")
