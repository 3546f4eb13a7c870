"""The CLI's side of `nsvisor exec`: one websocket to the daemon
(WS /v1/containers/NAME/exec on the control socket; the protocol is in
supervisor/daemon/api.py), spoken with wsproto, the sans-IO websocket library
hypercorn itself uses, over a blocking Unix socket and select().

Imported only by `nsvisor exec`: the other commands do not pay for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
from typing import Any
from urllib.parse import quote

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class ExecFailed(Exception):
    """The daemon could not run the command: message, CLI exit code, problems."""

    def __init__(self, message: str, code: int, problems: list[dict[str, Any]]) -> None:
        self.code = code
        self.problems = problems
        super().__init__(message)


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return rows, cols


class _Connection:
    def __init__(self, socket_path: str, target: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.connect(socket_path)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.text = ""
        self.closed = False
        self.sock.sendall(self.ws.send(Request(host="localhost", target=target)))
        while True:
            for event in self._events(self._recv()):
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection | RejectData):
                    raise ExecFailed("the daemon refused the exec connection", 1, [])

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
        return data

    def _events(self, data: bytes) -> list[Any]:
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def send_text(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(obj))))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data=data)))

    def read(self) -> list[tuple[str, Any]]:
        """Whatever complete messages arrived: ("bytes", b"...") / ("json", {...}) / ("closed", None)."""
        out: list[tuple[str, Any]] = []
        data = self._recv()
        if self.closed and not data:
            return [("closed", None)]
        for event in self._events(data):
            if isinstance(event, BytesMessage):
                out.append(("bytes", bytes(event.data)))
            elif isinstance(event, TextMessage):
                self.text += event.data
                if event.message_finished:
                    with contextlib.suppress(ValueError):
                        out.append(("json", json.loads(self.text)))
                    self.text = ""
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(Exception):
                    self.sock.sendall(self.ws.send(event.response()))
                out.append(("closed", None))
        return out

    def close(self) -> None:
        self.sock.close()


def run_exec(
    socket_path: str,
    name: str,
    request: dict[str, Any],
    *,
    interactive: bool,
    tty: bool,
) -> int:
    """Run the exec; relay stdin/stdout/stderr (and the terminal size with a
    tty); return the exec'd process's exit code."""
    stdin_fd = sys.stdin.fileno() if interactive else None
    stdin_is_tty = stdin_fd is not None and os.isatty(stdin_fd)
    if tty:
        size = terminal_size(stdin_fd if stdin_is_tty and stdin_fd is not None else 1)
        request = {**request, "size": list(size) if size else None}
    conn = _Connection(socket_path, f"/v1/containers/{quote(name, safe='')}/exec")
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    saved_tty: list[Any] | None = None
    try:
        conn.send_text(request)
        if tty and stdin_is_tty and stdin_fd is not None:
            import tty as ttymod

            saved_tty = termios.tcgetattr(stdin_fd)
            ttymod.setraw(stdin_fd)
        reading_stdin = stdin_fd is not None
        while True:
            fds = [conn.sock.fileno(), wake_r] + (
                [stdin_fd] if reading_stdin and stdin_fd is not None else []
            )
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                signals = os.read(wake_r, 256)
                if signal.SIGWINCH in signals and tty:
                    size = terminal_size(stdin_fd if stdin_is_tty and stdin_fd is not None else 1)
                    if size:
                        conn.send_text({"resize": list(size)})
            if stdin_fd is not None and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if data:
                    conn.send_bytes(data)
                else:
                    reading_stdin = False
                    conn.send_text({"eof": True})
            if conn.sock.fileno() in ready:
                for kind, value in conn.read():
                    if kind == "bytes":
                        out = sys.stderr.buffer if value[:1] == b"\x02" else sys.stdout.buffer
                        out.write(value[1:])
                        out.flush()
                    elif kind == "json" and "error" in value:
                        status = int(value.get("status", 500))
                        code = (
                            1
                            if status == 404
                            else 2
                            if status in (400, 409)
                            else int(value.get("exit_code", 125))
                        )
                        raise ExecFailed(
                            str(value["error"]), code, list(value.get("problems") or [])
                        )
                    elif kind == "json" and "exit_code" in value:
                        return int(value["exit_code"])
                    elif kind == "closed":
                        raise ExecFailed("the daemon closed the exec connection", 1, [])
    finally:
        if saved_tty is not None and stdin_fd is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_tty)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        conn.close()
