"""The lifecycle event stream served at GET /v1/events (and `nsvisor events`).

Every lifecycle transition is published once: logged as one structlog event
and fanned out to subscribers. A subscriber that does not keep up is dropped
rather than allowed to block the daemon.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio

log = structlog.get_logger("nsvisor")


class EventBus:
    def __init__(self, backlog: int = 1024) -> None:
        self._subscribers: list[trio.MemorySendChannel[dict[str, Any]]] = []
        self._backlog = backlog

    def publish(self, action: str, name: str, **attributes: Any) -> dict[str, Any]:
        event = {"time": time.time(), "type": "container", "action": action, "name": name}
        if attributes:
            event["attributes"] = attributes
        log.info(f"container.{action}", container=name, **attributes)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self._subscribers.remove(send)
                send.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)
        return event

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        send, recv = trio.open_memory_channel[dict[str, Any]](self._backlog)
        self._subscribers.append(send)
        try:
            yield recv
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()
            recv.close()
