"""The /metrics endpoint: prometheus_client's HTTP server in its own thread.

Collection runs in that thread, reading cgroup files and an immutable tuple of
container views, so a slow scrape never blocks the trio loop that makes
restart decisions.
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporters.collector import ContainerCollector


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_metrics(
    addr: str, manager: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(
        ContainerCollector(
            manager.cgroups,
            lambda: manager.views,
            memory_events=manager.memwatch.store.snapshot,
        )
    )
    registry.register(manager.start_durations)
    host, port = parse_addr(addr)
    server, thread = start_http_server(port, addr=host, registry=registry)
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
