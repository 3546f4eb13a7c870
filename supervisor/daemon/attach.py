"""`nsvisor attach` and `run -i/-t`: the daemon relays between a CLI's
websocket (WS /v1/containers/NAME/attach on the control socket) and the
container's monitor (its attach socket, supervisor.runtime.monitor).

The monitor, not the daemon, owns the terminal and the stdin pipe, so a
detached interactive container keeps its pty across the CLI's exit and the
daemon's restart. One monitor connection per websocket: the monitor fans
the output out to every client and drops a client that cannot keep up; the
relay here awaits the websocket, so a slow CLI only slows its own relay
(and is then dropped by the monitor), never the container or other clients.

Protocol (the same framing as exec). Client -> daemon: first a text message
{"stdin": bool, "start": bool, "size": [rows, cols] | null}; start=true
starts a created container first (run -it: create, attach, start, so the
first output is not missed). Then binary messages are input, text messages
{"resize": [rows, cols]} or {"eof": true}. Daemon -> client: a text
{"attached": true, "tty": bool, "stdin": bool}; binary output messages whose
first byte is the stream (1 stdout, 2 stderr); a text {"exit_code": N} when
the container's run ends, or {"error": str, "status": 404|409|500}. A
client that closes the websocket has detached; the container runs on.

Output of a run started here comes from the log file, opened before the
start, when there is no pty (so nothing written before the monitor accepts
is lost, and stdout/stderr stay apart) or when the monitor is already gone
(a command that exits at once); with a pty it is the monitor's live stream,
whose first bytes replay what was written before the connection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import IO, Any

import trio

from supervisor.daemon.containers import Container, ContainerManager, Run
from supervisor.daemon.logs import follow_log
from supervisor.errors import NotFoundError
from supervisor.runtime.monitor import frame, parse_frames

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STREAM_PREFIX = {b"1": b"\x01", b"2": b"\x02"}


def attach_path(c: Container) -> str:
    return os.path.join(c.dir, "attach.sock")


def _connect_blocking(path: str) -> socket.socket:
    """Connect by the directory's /proc/self/fd path: the state directory can
    be deeper than sun_path's 108 bytes allow."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    directory, base = os.path.split(path)
    dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dfd}/{base}")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return sock


async def connect_monitor(c: Container, run: Run) -> trio.SocketStream | None:
    """The monitor's attach socket, or None once the run is over. A monitor
    that has just been started has its socket before it reports "started"."""
    while not run.done.is_set():
        try:
            sock = await trio.to_thread.run_sync(_connect_blocking, attach_path(c))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
            with trio.move_on_after(0.05):
                await run.done.wait()
            continue
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    return None


async def attach_session(
    m: ContainerManager,
    name: str,
    receive: Receive,
    send: Send,
    discard: Callable[[str], Awaitable[None]],
) -> None:
    async def send_json(obj: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": json.dumps(obj)})

    msg = await receive()
    try:
        body = json.loads(msg.get("text") or msg.get("bytes") or b"{}")
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        want_stdin = bool(body.get("stdin", True))
        start = bool(body.get("start"))
        size = body.get("size")
    except ValueError as exc:
        await send_json({"error": f"bad attach request: {exc}", "status": 400})
        return
    try:
        c = m.get(name)
    except NotFoundError as exc:
        await send_json({"error": str(exc), "status": 404})
        return

    logf: IO[bytes] | None = None
    try:
        if start:
            logf = open(c.log_path, "rb")  # noqa: SIM115 - closed in finally
            if c.state in ("created", "exited"):
                try:
                    await m.start(name)
                except Exception as exc:
                    await discard(name)
                    await send_json({"error": str(exc), "status": 500})
                    return
        if c.state not in ("running", "stopping") or c.run is None:
            await send_json(
                {"error": f"container {name} is not running ({c.state})", "status": 409}
            )
            return
        run = c.run
        conn = await connect_monitor(c, run)
        tty = c.spec.tty
        from_log = logf is not None and (not tty or conn is None)
        await send_json({"attached": True, "tty": tty, "stdin": c.spec.interactive})
        await _relay(run, conn, logf if from_log else None, want_stdin, size, receive, send)
    finally:
        if logf is not None:
            logf.close()


async def _relay(
    run: Run,
    conn: trio.SocketStream | None,
    logf: IO[bytes] | None,
    want_stdin: bool,
    size: Any,
    receive: Receive,
    send: Send,
) -> None:
    async def to_monitor(kind: bytes, payload: bytes) -> None:
        if conn is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await conn.send_all(frame(kind, payload))

    def resize_payload(value: Any) -> bytes | None:
        try:
            rows, cols = (int(v) for v in value)
            return struct.pack("!HH", rows, cols)
        except (TypeError, ValueError, struct.error):
            return None

    async def output(cancel: trio.CancelScope) -> None:
        if logf is not None:
            async for record in follow_log(logf, stop=run.done):
                prefix = b"\x02" if record.get("stream") == "stderr" else b"\x01"
                data = str(record.get("log", "")).encode()
                await send({"type": "websocket.send", "bytes": prefix + data})
        elif conn is not None:
            buf = bytearray()
            while True:
                try:
                    data = await conn.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                buf += data
                for kind, payload in parse_frames(buf):
                    if kind in STREAM_PREFIX:
                        await send(
                            {"type": "websocket.send", "bytes": STREAM_PREFIX[kind] + payload}
                        )
        # The monitor closes its clients after it wrote the exit file.
        with trio.move_on_after(10):
            await run.done.wait()
        if run.done.is_set():
            await send({"type": "websocket.send", "text": json.dumps({"exit_code": run.exit_code})})
        else:
            await send(
                {
                    "type": "websocket.send",
                    "text": json.dumps(
                        {"error": "the container's monitor dropped this client", "status": 500}
                    ),
                }
            )
        cancel.cancel()

    async def feed(cancel: trio.CancelScope) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                cancel.cancel()  # detached: the container runs on
                return
            if msg.get("bytes") is not None:
                if want_stdin:
                    await to_monitor(b"i", msg["bytes"])
                continue
            try:
                control = json.loads(msg.get("text") or "{}")
            except ValueError:
                continue
            if not isinstance(control, dict):
                continue
            if "resize" in control:
                payload = resize_payload(control["resize"])
                if payload is not None:
                    await to_monitor(b"r", payload)
            if control.get("eof") and want_stdin:
                await to_monitor(b"e", b"")

    async def discard_monitor_output() -> None:
        # Output comes from the log: read the monitor's copy all the same, or
        # the monitor would count us as slow and drop us (and our input).
        assert conn is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await conn.receive_some(65536):
                pass

    try:
        if size is not None:
            payload = resize_payload(size)
            if payload is not None:
                await to_monitor(b"r", payload)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output, nursery.cancel_scope)
            if logf is not None and conn is not None:
                nursery.start_soon(discard_monitor_output)
            nursery.start_soon(feed, nursery.cancel_scope)
    finally:
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()
