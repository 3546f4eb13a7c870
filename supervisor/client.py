"""A tiny client for the control API (HTTP + JSON over the daemon's Unix socket).

Stdlib only and no trio: the CLI imports this on every command, and its start
time is what a user feels. The HTTP/1.1 is spoken by hand (one request per
connection, Connection: close; bodies by Content-Length, chunked, or to EOF):
http.client alone took 17 ms of a 30 ms CLI start on the build machines
(`python -X importtime`), for email.parser and friends we never need.
"""

from __future__ import annotations

import json
import socket
import time

TYPE_CHECKING = False  # typing costs ~1.5 ms of every CLI start; only mypy needs it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_SOCKET = "/run/nsvisor/nsvisor.sock"


class ClientError(Exception):
    """Root of the client's errors."""


class DaemonUnreachable(ClientError):
    """Nothing answers on the socket (daemon not running, wrong path, no permission)."""

    def __init__(self, socket_path: str, reason: str | None = None) -> None:
        self.socket_path = socket_path
        self.reason = reason
        message = (
            f"cannot connect to the nsvisor daemon at {socket_path}: is it running? "
            "start it with `nsvisor daemon --config FILE`"
        )
        if reason:
            message += f" ({reason})"
        super().__init__(message)


class ApiError(ClientError):
    """The daemon answered with an error status; body {"error": str, "problems": [...]}."""

    def __init__(
        self, status: int, message: str, problems: list[dict[str, str]] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.problems = list(problems or [])
        super().__init__(f"{status}: {message}")


class _Response:
    """One HTTP/1.1 response read straight off the socket: the status line,
    the headers, then the body by Content-Length, chunked, or to EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        line = self._line()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP status line: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        while line := self._line():
            key, _, value = line.decode("latin-1").partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._buf += data
        return bool(data)

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise ValueError("connection closed in the middle of the headers")
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives. A body cut short (the daemon went away)
        just ends: the caller sees what arrived."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                try:
                    size = int(self._line().split(b";", 1)[0], 16)
                except ValueError:
                    return
                if size == 0:
                    return
                while len(self._buf) < size + 2:
                    if not self._fill():
                        yield self._buf[:size]
                        return
                chunk, self._buf = self._buf[:size], self._buf[size + 2 :]
                yield chunk
        length = self.headers.get("content-length")
        remaining = int(length) if length is not None and length.isdigit() else -1
        while remaining != 0:
            if not self._buf and not self._fill():
                return
            take = self._buf if remaining < 0 else self._buf[:remaining]
            self._buf = self._buf[len(take) :]
            remaining = remaining - len(take) if remaining > 0 else remaining
            yield take

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            yield from complete
        if pending:
            yield pending


def _connect(sock: socket.socket, path: str, timeout: float | None) -> None:
    """A Unix socket whose listen backlog is full makes a non-blocking (timed)
    connect fail with EAGAIN at once, where TCP would wait: retry until the
    timeout (200 clients at once against a backlog of 128 hit this)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _decode(data: bytes) -> Any:
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"error": data.decode("utf-8", "replace").strip()}


class Client:
    """One request per connection: simple, and the daemon is local."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any) -> tuple[socket.socket, _Response]:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        elif method in ("POST", "PUT", "DELETE"):
            head += "Content-Length: 0\r\n"
        request = (head + "Connection: close\r\n\r\n").encode() + payload
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            _connect(sock, self.socket_path, self.timeout)
            sock.sendall(request)
            response = _Response(sock)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnreachable(self.socket_path) from exc
        except PermissionError as exc:
            sock.close()
            raise DaemonUnreachable(self.socket_path, "permission denied; run as root") from exc
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(self.socket_path, exc.strerror or str(exc)) from exc
        except ValueError as exc:
            sock.close()
            raise DaemonUnreachable(self.socket_path, f"bad answer: {exc}") from exc
        if response.status >= 400:
            try:
                data = _decode(response.read())
            finally:
                sock.close()
            raise _api_error(response.status, data)
        return sock, response

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; (status, decoded JSON body). ApiError on status >= 400."""
        sock, response = self._send(method, path, body)
        try:
            return response.status, _decode(response.read())
        finally:
            sock.close()

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """Send one request and yield each JSON line of an ndjson answer as it arrives."""
        sock, response = self._send(method, path, body)
        try:
            for line in response.lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            sock.close()


def _api_error(status: int, data: Any) -> ApiError:
    if isinstance(data, dict):
        problems = data.get("problems")
        return ApiError(
            status,
            str(data.get("error") or f"HTTP {status}"),
            [p for p in problems if isinstance(p, dict)] if isinstance(problems, list) else None,
        )
    return ApiError(status, f"HTTP {status}")
