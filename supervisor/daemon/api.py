"""The control API: HTTP/1.1 + JSON over a Unix socket (mode 0600), served by
hypercorn on trio. A small ASGI application with a table of routes; streams
(attached run, logs -f, events) are newline-delimited JSON.

Routes (all under /v1):
  GET    /version
  GET    /containers?all=0|1
  POST   /containers[?attach=1]        body {"spec": {...}, "start": bool}
  GET    /containers/NAME
  POST   /containers/NAME/start|stop|restart|kill   (?timeout=S, ?signal=SIG)
  DELETE /containers/NAME[?force=1]
  GET    /containers/NAME/logs?follow=0|1&tail=N&since=EPOCH
  POST   /containers/NAME/wait
  GET    /events
  GET    /stats?stream=0|1&names=A,B    ndjson {"time", "seq", "containers": [...]} (daemon/stats.py)
  GET    /containers/NAME/top           the container's processes
  GET|PUT /containers/NAME/archive?path=P  a tar of P / extract a tar at P (cp; daemon/cp.py)
  POST   /reload                       re-read the config file (as SIGHUP)
  WS     /containers/NAME/exec         websocket: exec (see _exec_session)
  WS     /containers/NAME/attach       websocket: attach (supervisor.daemon.attach)
Errors: {"error": str, "problems": [{"field", "message"}]} with 400 (bad
input), 404 (no such container), 409 (state conflict), 500 (kernel/launch).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import structlog
import trio

from supervisor import __version__
from supervisor.daemon.containers import ContainerManager
from supervisor.daemon.events import EventBus
from supervisor.daemon.execs import container_pty
from supervisor.daemon.logs import follow_log
from supervisor.errors import ConfigError, KernelError, NotFoundError, Problem, StateError
from supervisor.runtime.zygote import LaunchError
from supervisor.units import parse_signal

log = structlog.get_logger("nsvisor.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.query = {
            k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()
        }

    async def json(self) -> Any:
        body = b""
        while True:
            msg = await self.receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if not body:
            return {}
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ConfigError([Problem("body", f"request body is not valid JSON: {exc}")]) from None

    def flag(self, key: str) -> bool:
        return self.query.get(key, "0").lower() in ("1", "true", "yes")

    def number(self, key: str) -> float | None:
        value = self.query.get(key)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except ValueError:
            raise ConfigError([Problem(key, f"{value!r} is not a number")]) from None


class Stream:
    """An ndjson response body produced by an async iterator."""

    def __init__(self, lines: AsyncIterator[dict[str, Any]]) -> None:
        self.lines = lines


class Raw:
    """A binary response body (the tar of `cp`)."""

    def __init__(self, content_type: str, chunks: AsyncIterator[bytes]) -> None:
        self.content_type = content_type
        self.chunks = chunks


Handler = Callable[[Request], Awaitable[Any]]


class Api:
    def __init__(
        self,
        manager: ContainerManager,
        events: EventBus,
        *,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        ready: trio.Event | None = None,
    ) -> None:
        self.m = manager
        self.events = events
        self._reload = reload
        # Set once every persisted and configured container is registered
        # (restored, started): until then requests wait, so that no client
        # sees a daemon without the containers it has (only /v1/version,
        # the liveness probe, answers at once).
        self._ready = ready
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._stats_hub: Any = None  # supervisor.daemon.stats.StatsHub, made on first use
        n = r"(?P<name>[^/]+)"
        for method, pattern, handler in [
            ("GET", r"/v1/version", self.version),
            ("GET", r"/v1/containers", self.list),
            ("POST", r"/v1/containers", self.create),
            ("GET", rf"/v1/containers/{n}", self.inspect),
            ("DELETE", rf"/v1/containers/{n}", self.remove),
            ("POST", rf"/v1/containers/{n}/start", self.start),
            ("POST", rf"/v1/containers/{n}/stop", self.stop),
            ("POST", rf"/v1/containers/{n}/restart", self.restart),
            ("POST", rf"/v1/containers/{n}/kill", self.kill),
            ("POST", rf"/v1/containers/{n}/wait", self.wait),
            ("POST", rf"/v1/containers/{n}/update", self.update),
            ("GET", rf"/v1/containers/{n}/logs", self.logs),
            ("GET", rf"/v1/containers/{n}/top", self.top),
            ("GET", rf"/v1/containers/{n}/archive", self.archive_get),
            ("PUT", rf"/v1/containers/{n}/archive", self.archive_put),
            ("GET", r"/v1/stats", self.stats),
            ("GET", r"/v1/events", self.event_stream),
            ("GET", r"/v1/networks", self.network_list),
            ("POST", r"/v1/networks", self.network_create),
            ("GET", rf"/v1/networks/{n}", self.network_inspect),
            ("DELETE", rf"/v1/networks/{n}", self.network_remove),
            ("POST", r"/v1/reload", self.reload),
        ]:
            self.routes.append((method, re.compile(pattern + "$"), handler))

    # ---- ASGI plumbing -------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if (
            scope["type"] in ("http", "websocket")
            and self._ready is not None
            and not self._ready.is_set()
            and scope.get("path") != "/v1/version"
        ):
            await self._ready.wait()
        if scope["type"] == "websocket":
            match = re.match(
                r"/v1/containers/(?P<name>[^/]+)/(?P<kind>exec|attach)$", scope["path"]
            )
            await self._websocket(
                scope,
                receive,
                send,
                match.group("name") if match else None,
                match.group("kind") if match else "exec",
            )
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        allowed = False
        for m, pattern, handler in self.routes:
            match = pattern.match(path)
            if not match:
                continue
            allowed = True
            if m != method:
                continue
            req = Request(scope, receive, match.groupdict())
            try:
                result = await handler(req)
            except ConfigError as exc:
                problems = [
                    {"field": p.field, "message": p.message, "text": p.render(exc.source)}
                    for p in exc.problems
                ]
                await _reply(send, 400, {"error": "invalid request", "problems": problems})
            except NotFoundError as exc:
                await _reply(send, 404, {"error": str(exc)})
            except StateError as exc:
                await _reply(send, 409, {"error": str(exc)})
            except (LaunchError, KernelError, OSError) as exc:
                log.error("api.error", path=path, error=str(exc))
                await _reply(send, 500, {"error": str(exc)})
            else:
                if isinstance(result, Stream):
                    await _stream(send, receive, result)
                elif isinstance(result, Raw):
                    await _raw(send, result)
                else:
                    await _reply(send, 200, result)
            return
        if allowed:
            await _reply(send, 405, {"error": f"method {method} not allowed on {path}"})
        else:
            await _reply(send, 404, {"error": f"no such endpoint: {method} {path}"})

    # ---- handlers ------------------------------------------------------------

    async def version(self, req: Request) -> Any:
        return {"version": __version__, "cgroup_layout": self.m.cgroups.layout}

    async def list(self, req: Request) -> Any:
        show_all = req.flag("all")
        return [
            self.m.summary(c)
            for c in sorted(self.m.containers.values(), key=lambda c: c.created_at)
            if show_all or c.state in ("running", "starting", "stopping", "restarting")
        ]

    async def create(self, req: Request) -> Any:
        body = await req.json()
        if not isinstance(body, dict) or not isinstance(body.get("spec", {}), dict):
            raise ConfigError([Problem("body", 'expected {"spec": {...}, "start": true|false}')])
        c = self.m.create(dict(body.get("spec", {})))
        attach = req.flag("attach")
        if not (body.get("start") or attach):
            return {"name": c.name}
        if not attach:
            try:
                await self.m.start(c.name)
            except Exception:
                await self._discard(c.name)
                raise
            return {"name": c.name}
        return Stream(self._attached_run(c.name))

    async def _discard(self, name: str) -> None:
        """A container whose very first start failed is removed again, so a
        failed `run` leaves nothing behind (no state entry, no cgroup)."""
        with trio.CancelScope(shield=True):
            if name in self.m.containers:
                await self.m.remove(name, force=True)

    async def _attached_run(self, name: str) -> AsyncIterator[dict[str, Any]]:
        c = self.m.get(name)
        yield {"name": name}
        with open(c.log_path, "rb") as logf:
            try:
                await self.m.start(name)
            except Exception as exc:
                await self._discard(name)
                yield {"error": str(exc)}
                return
            run = c.run
            assert run is not None
            async for record in follow_log(logf, stop=run.done):
                yield record
            # Like `docker run --rm`: return only once the container is gone,
            # so the next command never sees it.
            while c.spec.auto_remove and self.m.containers.get(name) is c:
                await c.changed.wait()
            yield {"exit_code": run.exit_code, "oom_killed": run.oom_killed}

    # ---- networks (supervisor.network) ---------------------------------------

    async def network_list(self, req: Request) -> Any:
        net = self.m.network
        return [net.describe(n) for _, n in sorted(net.networks.items())]

    async def network_create(self, req: Request) -> Any:
        body = await req.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ConfigError([Problem("body", 'expected {"name": NAME, "subnet": CIDR}')])
        mtu = body.get("mtu")
        created = await self.m.network.create_network(
            body["name"], str(body.get("subnet", "")), int(mtu) if mtu is not None else None
        )
        return self.m.network.describe(created)

    async def network_inspect(self, req: Request) -> Any:
        net = self.m.network
        return net.describe(net.get_network(req.params["name"]))

    async def network_remove(self, req: Request) -> Any:
        await self.m.network.remove_network(req.params["name"])
        return {"name": req.params["name"]}

    async def update(self, req: Request) -> Any:
        """Body {"spec": {raw keys to change}}: the limits of a container,
        changed in place while it runs (docker update)."""
        body = await req.json()
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise ConfigError([Problem("body", 'expected {"spec": {"memory": "64m", ...}}')])
        c = await self.m.update(req.params["name"], dict(body["spec"]))
        return {"name": c.name, "state": c.state, "limits": self.m.limits_in_force(c)}

    async def inspect(self, req: Request) -> Any:
        return self.m.inspect(self.m.get(req.params["name"]))

    async def remove(self, req: Request) -> Any:
        await self.m.remove(req.params["name"], force=req.flag("force"))
        return {"name": req.params["name"]}

    async def start(self, req: Request) -> Any:
        c = await self.m.start(req.params["name"])
        return {"name": c.name, "state": c.state}

    async def stop(self, req: Request) -> Any:
        await self.m.stop(req.params["name"], req.number("timeout"))
        return {"name": req.params["name"]}

    async def restart(self, req: Request) -> Any:
        c = await self.m.restart(req.params["name"], req.number("timeout"))
        return {"name": c.name, "state": c.state}

    async def kill(self, req: Request) -> Any:
        try:
            sig = parse_signal(req.query.get("signal", "KILL"))
        except ValueError as exc:
            raise ConfigError([Problem("signal", str(exc))]) from None
        await self.m.kill(req.params["name"], sig)
        return {"name": req.params["name"]}

    async def wait(self, req: Request) -> Any:
        c = self.m.get(req.params["name"])
        while c.state in ("starting", "running", "stopping", "restarting"):
            await c.changed.wait()
        return {"name": c.name, "exit_code": c.exit_code, "oom_killed": c.oom_killed}

    async def logs(self, req: Request) -> Any:
        c = self.m.get(req.params["name"])
        tail = req.number("tail")
        since = req.number("since")
        follow = req.flag("follow")

        async def lines() -> AsyncIterator[dict[str, Any]]:
            with open(c.log_path, "rb") as logf:
                async for record in follow_log(
                    logf,
                    stop=None if follow else _SET,
                    tail=int(tail) if tail is not None and tail >= 0 else None,
                    since=since,
                    path=c.log_path,
                    still_active=lambda: (
                        c.state in ("starting", "running", "stopping", "restarting")
                    ),
                    changed=lambda: c.changed,
                ):
                    yield record

        return Stream(lines())

    async def reload(self, req: Request) -> Any:
        if self._reload is None:
            raise StateError("reload is not available")
        return await self._reload()

    # ---- exec over a websocket ----------------------------------------------

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, name: str | None, kind: str = "exec"
    ) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if name is None:
            await send({"type": "websocket.close", "code": 4404})
            return
        await send({"type": "websocket.accept"})
        try:
            if kind == "attach":
                from supervisor.daemon.attach import attach_session

                await attach_session(self.m, name, receive, send, self._discard)
            else:
                await _exec_session(self.m, name, receive, send)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1000})

    async def stats(self, req: Request) -> Any:
        import time

        from supervisor.daemon.stats import StatsHub, StatsSource

        names = [n for n in req.query.get("names", "").split(",") if n]
        for name in names:
            self.m.get(name)  # 404 for an unknown name
        if self._stats_hub is None:
            cgroups = self.m.cgroups
            self._stats_hub = StatsHub(lambda: StatsSource(cgroups.stats), lambda: self.m.views)
        hub: StatsHub = self._stats_hub

        def pick(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if not names or r["name"] in names]

        if not req.flag("stream"):
            seq, rows = await hub.next(hub.seq)
            return {"time": time.time(), "seq": seq, "containers": pick(rows)}

        async def lines() -> AsyncIterator[dict[str, Any]]:
            # A recent snapshot is shown at once; then one per interval.
            fresh = trio.current_time() - hub.taken_at < hub.interval_s
            seq = hub.seq - 1 if fresh else hub.seq
            while True:
                seq, rows = await hub.next(seq)
                yield {"time": time.time(), "seq": seq, "containers": pick(rows)}

        return Stream(lines())

    async def top(self, req: Request) -> Any:
        from supervisor.daemon.stats import process_row

        c = self.m.get(req.params["name"])
        if c.state not in ("running", "stopping"):
            raise StateError(f"container {c.name} is not running ({c.state})")
        pids = await trio.to_thread.run_sync(self.m.cgroups.pids, c.name)
        rows = await trio.to_thread.run_sync(lambda: [process_row(p) for p in pids])
        return {"name": c.name, "processes": [r for r in rows if r is not None]}

    async def archive_get(self, req: Request) -> Any:
        from supervisor.daemon.cp import archive_get

        content_type, chunks = await archive_get(self.m.get(req.params["name"]), req.query)
        return Raw(content_type, chunks)

    async def archive_put(self, req: Request) -> Any:
        from supervisor.daemon.cp import archive_put

        return await archive_put(self.m.get(req.params["name"]), req.query, req.receive)

    async def event_stream(self, req: Request) -> Any:
        async def lines() -> AsyncIterator[dict[str, Any]]:
            async with self.events.subscribe() as recv:
                yield {"action": "subscribed", "type": "stream"}
                async for event in recv:
                    yield event

        return Stream(lines())


_SET = trio.Event()
_SET.set()


async def _reply(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _raw(send: Send, raw: Raw) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", raw.content_type.encode())],
        }
    )
    async for chunk in raw.chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream(send: Send, receive: Receive, stream: Stream) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
    )
    async with trio.open_nursery() as nursery:

        async def watch_disconnect() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_disconnect)
        try:
            async for line in stream.lines:
                await send(
                    {
                        "type": "http.response.body",
                        "body": json.dumps(line).encode() + b"\n",
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            nursery.cancel_scope.cancel()


# --- exec ---------------------------------------------------------------------
#
# One websocket per exec. Client -> daemon: first a text message with the
# request {"cmd": [...], "env": ["K=V"], "user": str|null, "workdir": str|null,
# "tty": bool, "interactive": bool, "size": [rows, cols]|null}; then binary
# messages are stdin, text messages {"resize": [rows, cols]} or {"eof": true}.
# Daemon -> client: binary messages are output, the first byte the stream
# (1 stdout, 2 stderr; a tty has only 1); a text {"exit_code": N} ends it, or
# {"error": str, "exit_code": 125|126|127, "status": 400|404|409|500} when
# the command could not start. A disconnect kills the exec'd process.

STDOUT, STDERR = b"\x01", b"\x02"


def open_exec_pty(m: ContainerManager, name: str) -> tuple[int, int]:
    """A pty of the container's devpts (supervisor.daemon.execs.container_pty);
    a host pty when it is not running (exec_start then refuses the request)."""
    c = m.containers.get(name)
    run = c.run if c is not None and c.state == "running" else None
    if run is None or run.workload_pid is None:
        return os.openpty()
    return container_pty(run.workload_pid)


async def _exec_session(m: ContainerManager, name: str, receive: Receive, send: Send) -> None:
    import fcntl
    import os
    import struct
    import termios

    from supervisor.daemon.execs import ExecError, ExecRequest

    async def send_json(obj: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": json.dumps(obj)})

    msg = await receive()
    try:
        body = json.loads(msg.get("text") or msg.get("bytes") or b"")
        cmd = body["cmd"]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise ValueError("cmd must be a non-empty list of strings")
        req = ExecRequest(
            argv=tuple(cmd),
            env=tuple(str(e) for e in body.get("env") or ()),
            user=body.get("user") or None,
            workdir=body.get("workdir") or None,
            tty=bool(body.get("tty")),
        )
        interactive = bool(body.get("interactive"))
        size = body.get("size")
    except (ValueError, KeyError, TypeError) as exc:
        await send_json({"error": f"bad exec request: {exc}", "exit_code": 125, "status": 400})
        return

    def set_size(fd: int, rows_cols: Any) -> None:
        rows, cols = (int(v) for v in rows_cols)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    ours: list[int] = []  # the daemon's ends: stdin writer, stdout, stderr readers
    theirs: list[int] = []  # the exec'd process's stdin, stdout, stderr
    if req.tty:
        try:
            master, slave = open_exec_pty(m, name)
        except OSError as exc:
            await send_json({"error": f"exec -t: {exc}", "exit_code": 125, "status": 500})
            return
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        if size:
            with contextlib.suppress(OSError, ValueError, TypeError):
                set_size(master, size)
        ours, theirs = [master], [slave, slave, slave]
    else:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ours, theirs = [in_w, out_r, err_r], [in_r, out_w, err_w]
    try:
        session = await m.exec_start(name, req, theirs)
    except (ExecError, ConfigError, NotFoundError, StateError, LaunchError, OSError) as exc:
        for fd in ours:
            os.close(fd)
        status = (
            400
            if isinstance(exc, ConfigError)
            else 404
            if isinstance(exc, NotFoundError)
            else 409
            if isinstance(exc, StateError)
            else 500
        )
        code = exc.exit_code if isinstance(exc, ExecError) else 125
        problems = (
            [{"field": p.field, "message": p.message} for p in exc.problems]
            if isinstance(exc, ConfigError)
            else []
        )
        text = str(exc) if not isinstance(exc, ConfigError) else "invalid request"
        await send_json({"error": text, "exit_code": code, "status": status, "problems": problems})
        return
    finally:
        for fd in set(theirs):
            os.close(fd)

    if req.tty:
        master_stream = trio.lowlevel.FdStream(ours[0])
        stdin: trio.lowlevel.FdStream | None = master_stream
        outputs = [(STDOUT, master_stream)]
    else:
        stdin = trio.lowlevel.FdStream(ours[0])
        outputs = [
            (STDOUT, trio.lowlevel.FdStream(ours[1])),
            (STDERR, trio.lowlevel.FdStream(ours[2])),
        ]
        if not interactive:
            await stdin.aclose()
            stdin = None

    async def pump(prefix: bytes, stream: trio.lowlevel.FdStream) -> None:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # a pty master reads EIO once the last slave fd is closed
            if not data:
                return
            await send({"type": "websocket.send", "bytes": prefix + data})

    async def feed(cancel: trio.CancelScope) -> None:
        nonlocal stdin
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                session.kill()
                cancel.cancel()
                return
            if msg.get("bytes") is not None:
                if stdin is not None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stdin.send_all(msg["bytes"])
                continue
            try:
                control = json.loads(msg.get("text") or "{}")
            except ValueError:
                continue
            if "resize" in control and req.tty:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    set_size(ours[0], control["resize"])
            if control.get("eof") and stdin is not None and not req.tty:
                await stdin.aclose()
                stdin = None

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, nursery.cancel_scope)
            async with trio.open_nursery() as readers:
                for prefix, stream in outputs:
                    readers.start_soon(pump, prefix, stream)
                code = await session.wait()
                # The output of the exec'd process's background children may
                # keep the pipes open: read on for at most a second.
                readers.cancel_scope.deadline = trio.current_time() + 1.0
            await send_json({"exit_code": code})
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            session.kill()
            if session.exit_code is None:
                with trio.move_on_after(5):
                    await session.wait()
            session.close()
            for _, stream in outputs:
                await stream.aclose()
            if stdin is not None and not req.tty:
                await stdin.aclose()
