"""The /metrics endpoint: a threaded WSGI server (prometheus_client's) in its
own thread.

Collection runs in that thread, reading cgroup files and an immutable tuple of
container views, so a slow scrape never blocks the trio loop on I/O; it still
holds the GIL while it formats, hence the fast renderer.

The text format (0.0.4) is assembled from three parts: prometheus_client's
own process/platform/gc collectors, the container families written by
exporters/render.py (byte for byte what prometheus_client would write, ten
times faster at 500 containers), and the start-duration histogram. A client
that accepts text/plain (or anything: no Accept header, */*) gets that, also
when it prefers OpenMetrics, as Prometheus does: cAdvisor and every
client_golang exporter without EnableOpenMetrics answer the same way. Only a
client that accepts nothing but OpenMetrics, or a `?name[]=` filter, goes
through prometheus_client's own encoders (same families, slower).
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    ThreadingWSGIServer,
    choose_encoder,
    generate_latest,
    gzip_accepted,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.registry import Collector

from exporters.collector import ContainerCollector
from exporters.collectord import CollectorProcess
from exporters.process import ProcessCollector

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
COLLECTOR_PROCESS = True
"""Render the container families in a collector process (exporters/collectord.py);
False: in the metrics server's thread of the daemon (the benchmark's "thread"
variant)."""
GZIP_LEVEL = 1
"""prometheus_client compresses at 9: ~50 ms for 3.6 MiB, where 1 takes ~6 ms
for a body ~10% larger."""


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def text_acceptable(accept: str | None) -> bool:
    """Does the Accept header allow the Prometheus text format?"""
    if not accept:
        return True
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media in ("text/plain", "text/*", "*/*") and "q=0" not in params:
            return True
    return False


class MetricsApp:
    """The WSGI application; `before` and `after` are the collectors around
    the container families, in registry order."""

    def __init__(
        self, before: list[Collector], containers: ContainerCollector, after: list[Collector]
    ) -> None:
        self.containers = containers
        self.before = _registry(before)
        self.after = _registry(after)
        self.full = _registry([*before, containers, *after])

    def text(self) -> bytes:
        """The whole exposition in the text format."""
        return b"".join(
            (
                generate_latest(self.before),
                self.containers.render_bytes(),
                generate_latest(self.after),
            )
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        headers: list[tuple[str, str]]
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", "OPTIONS,GET")])
            return [b""]
        if method != "GET":
            start_response("405 Method Not Allowed", [("Allow", "OPTIONS,GET")])
            return [f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode()]
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("200 OK", [])
            return [b""]
        accept = environ.get("HTTP_ACCEPT")
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if "name[]" in params or not text_acceptable(accept):
            encoder, content_type = choose_encoder(accept or "")
            registry: Collector = self.full
            if "name[]" in params:
                registry = self.full.restricted_registry(params["name[]"])
            output = encoder(registry)
        else:
            output, content_type = self.text(), CONTENT_TYPE_PLAIN_0_0_4
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING") or ""):
            output = gzip.compress(output, GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]


def _registry(collectors: list[Collector]) -> CollectorRegistry:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return registry


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def start_server(
    app: MetricsApp, host: str, port: int
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    # What prometheus_client's start_http_server does: IPv6 addresses work too.
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    host = str(sockaddr[0])

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(host, port, app, Server, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread


async def serve_metrics(
    addr: str, manager: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    # They register themselves somewhere; MetricsApp builds its own registries.
    scratch = CollectorRegistry()
    before: list[Collector] = [
        ProcessCollector(registry=scratch),
        PlatformCollector(registry=scratch),
        GCCollector(registry=scratch),
    ]
    process = (
        CollectorProcess(manager.cgroups.root, manager.cgroups.parent)
        if COLLECTOR_PROCESS
        else None
    )
    containers = ContainerCollector(
        manager.cgroups,
        lambda: manager.views,
        memory_events=manager.memwatch.store.snapshot,
        remote=None if process is None else process.render,
    )
    app = MetricsApp(before, containers, [manager.start_durations])
    host, port = parse_addr(addr)
    server, thread = start_server(app, host, port)
    if process is not None:
        process.start_soon()  # ready, usually, before the first scrape
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        if process is not None:
            process.close()
