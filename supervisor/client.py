"""A tiny client for the control API (HTTP + JSON over the daemon's Unix socket).

Stdlib only and no trio: the CLI imports this on every command, and its start
time is what a user feels. http.client does the HTTP; only `connect` changes,
to dial an AF_UNIX socket instead of TCP.
"""

from __future__ import annotations

import http.client
import json
import socket
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


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a Unix stream socket."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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

    def _send(
        self, method: str, path: str, body: Any
    ) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise DaemonUnreachable(self.socket_path) from exc
        except PermissionError as exc:
            conn.close()
            raise DaemonUnreachable(self.socket_path, "permission denied; run as root") from exc
        except OSError as exc:
            conn.close()
            raise DaemonUnreachable(self.socket_path, exc.strerror or str(exc)) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise DaemonUnreachable(self.socket_path, f"bad answer: {exc!r}") from exc
        if response.status >= 400:
            data = _decode(response.read())
            conn.close()
            raise _api_error(response.status, data)
        return conn, response

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; (status, decoded JSON body). ApiError on status >= 400."""
        conn, response = self._send(method, path, body)
        try:
            return response.status, _decode(response.read())
        finally:
            conn.close()

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """Send one request and yield each JSON line of an ndjson answer as it arrives."""
        conn, response = self._send(method, path, body)
        try:
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def _api_error(status: int, data: Any) -> ApiError:
    if isinstance(data, dict):
        problems = data.get("problems")
        return ApiError(
            status,
            str(data.get("error") or f"HTTP {status}"),
            [p for p in problems if isinstance(p, dict)] if isinstance(problems, list) else None,
        )
    return ApiError(status, f"HTTP {status}")
