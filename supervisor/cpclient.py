"""The CLI's side of `nsvisor cp`: a tar over the control API
(GET/PUT /v1/containers/NAME/archive?path=P, supervisor.daemon.cp), made and
extracted locally with supervisor.archive, whose openat2 root is the local
destination's directory: an archive from a container cannot write outside it.

Imported only by `nsvisor cp`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from typing import IO
from urllib.parse import quote, urlencode

from supervisor.archive import ArchiveError, extract_tar, write_tar
from supervisor.client import DaemonUnreachable, _connect, _Response

_CONTAINER_REF = re.compile(r"^(?P<name>[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}):(?P<path>.*)$")


class CpError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        self.code = code
        super().__init__(message)


def parse_ref(arg: str) -> tuple[str | None, str]:
    """ "NAME:/path" -> (NAME, "/path"); a local path -> (None, path). A local
    path with a colon is written ./a:b, as with docker cp. Pure."""
    if arg.startswith(("/", ".")):
        return None, arg
    m = _CONTAINER_REF.match(arg)
    if m is None:
        return None, arg
    return m.group("name"), m.group("path") or "/"


def _request(
    socket_path: str, method: str, path: str, body: IO[bytes] | None = None
) -> tuple[socket.socket, _Response]:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    size = 0
    if body is not None:
        size = os.fstat(body.fileno()).st_size
        head += f"Content-Type: application/x-tar\r\nContent-Length: {size}\r\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _connect(sock, socket_path, None)
    except OSError as exc:
        sock.close()
        raise DaemonUnreachable(socket_path, exc.strerror) from exc
    sock.sendall((head + "\r\n").encode())
    if body is not None:
        body.seek(0)
        sock.sendfile(body)
    response = _Response(sock)
    if response.status >= 400:
        try:
            data = response.read()
        finally:
            sock.close()
        try:
            message = str(json.loads(data).get("error") or f"HTTP {response.status}")
        except (ValueError, AttributeError):
            message = data.decode(errors="replace").strip()
        raise CpError(f"nsvisor: {message}", 2 if response.status in (400, 409) else 1)
    return sock, response


def copy_from(socket_path: str, name: str, src: str, dst: str) -> None:
    url = f"/v1/containers/{quote(name, safe='')}/archive?" + urlencode({"path": src})
    sock, response = _request(socket_path, "GET", url)
    with sock, tempfile.TemporaryFile() as spool:
        for chunk in response.chunks():
            spool.write(chunk)
        spool.seek(0)
        dst = os.path.abspath(dst)
        if os.path.isdir(dst):
            root, dest = dst, "/"
        else:
            root, dest = os.path.dirname(dst), "/" + os.path.basename(dst)
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            extract_tar(rootfd, dest, spool, owners=os.geteuid() == 0)
        except ArchiveError as exc:
            raise CpError(f"nsvisor: {dst}: {exc}") from None
        finally:
            os.close(rootfd)


def copy_to(socket_path: str, src: str, name: str, dst: str) -> None:
    src = os.path.abspath(src)
    rootfd = os.open(os.path.dirname(src), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    with tempfile.TemporaryFile() as spool:
        try:
            write_tar(rootfd, "/" + os.path.basename(src), spool)
        except ArchiveError as exc:
            raise CpError(f"nsvisor: {src}: {exc}") from None
        finally:
            os.close(rootfd)
        url = f"/v1/containers/{quote(name, safe='')}/archive?" + urlencode({"path": dst})
        sock, response = _request(socket_path, "PUT", url, spool)
        with sock:
            response.read()
