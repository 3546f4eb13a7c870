"""The control socket's second lock: SO_PEERCRED at accept time.

The first lock is the file mode (0600, root-owned): the kernel refuses
connect() to anyone else. This is the second one, for a process that can get
past the mode without being root (CAP_DAC_OVERRIDE in a uid other than 0, a
socket made group-accessible by hand): each accepted connection's peer uid
(SO_PEERCRED, what the kernel recorded at connect) is checked before a byte
of HTTP is parsed; anyone but root gets a 403 with a JSON error saying why and
the connection is closed.

hypercorn does not expose the connection's socket to the ASGI app, and its
`serve()` builds its listeners itself, so `serve_unix` is hypercorn's own
trio `worker_serve` reduced to what the daemon uses (one plain listener,
lifespan, graceful shutdown) with the listener wrapped. Rejected: a proxy
socket in front of hypercorn (a byte copy for every exec/attach stream), and
patching trio.serve_listeners.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from functools import partial
from typing import Any

import structlog
import trio

log = structlog.get_logger("nsvisor.api")

ALLOWED_UIDS = frozenset({0})
_UCRED = struct.Struct("iII")  # pid, uid, gid


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a connected Unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(data)
    return pid, uid, gid


def forbidden_response(uid: int) -> bytes:
    body = json.dumps(
        {
            "error": (
                f"the nsvisor control API is root-only; uid {uid} was refused. "
                "Run the command as root (sudo nsvisor ...)."
            )
        }
    ).encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


class PeerCheckedListener(trio.abc.Listener[trio.SocketStream]):
    """A SocketListener that only hands on connections from ALLOWED_UIDS."""

    def __init__(
        self,
        inner: trio.SocketListener,
        nursery: trio.Nursery,
        allowed: frozenset[int] = ALLOWED_UIDS,
    ) -> None:
        self.inner = inner
        self._nursery = nursery
        self.allowed = allowed

    async def accept(self) -> trio.SocketStream:
        while True:
            stream = await self.inner.accept()
            try:
                pid, uid, _ = peer_credentials(stream.socket)
            except OSError:
                await stream.aclose()
                continue
            if uid in self.allowed:
                return stream
            log.warning("api.refused", peer_uid=uid, peer_pid=pid)
            # Answer in a task of its own (a slow peer must not hold up the
            # accept loop) and only after reading the request head: closing
            # before the client has written would make its write fail (EPIPE)
            # and it would never read the 403.
            self._nursery.start_soon(_refuse, stream, uid)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _refuse(stream: trio.SocketStream, uid: int) -> None:
    with (
        trio.move_on_after(2.0),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            head += chunk
        await stream.send_all(forbidden_response(uid))
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def serve_unix(
    app: Any,
    config: Any,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI `app` with hypercorn on a bound, listening Unix socket,
    accepting only root peers. Returns when cancelled."""
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.statsd import StatsdLogger
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    config.set_statsd_logger_class(StatsdLogger)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listener = PeerCheckedListener(
                trio.SocketListener(trio.socket.from_stdlib_socket(sock)), server_nursery
            )
            task_status.started()
            try:
                await trio.serve_listeners(
                    partial(
                        TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
                    ),
                    [listener],
                    handler_nursery=server_nursery,
                )
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
