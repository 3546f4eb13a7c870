"""`nsvisor cp` on the daemon's side: GET/PUT /v1/containers/NAME/archive?path=P
with a tar body (Docker's archive API). Paths are resolved inside the
container's root by supervisor.archive (openat2 RESOLVE_IN_ROOT): from
/proc/<workload pid>/root while it runs (its mount namespace: volumes and
tmpfs mounts as the container sees them), else from the rootfs directory.

The tar is spooled to a temporary file in a worker thread, so a path that
cannot be read fails with an error status before any byte is sent, and the
event loop never blocks on the disk.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

import trio

from supervisor.archive import ArchiveError, as_container_root, extract_tar, shifted_view, write_tar
from supervisor.daemon.containers import Container
from supervisor.errors import ConfigError, NotFoundError, Problem, StateError


def _starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def open_root(c: Container) -> int:
    """An O_PATH fd that stands for the container's "/"."""
    run = c.run
    if c.state in ("running", "stopping") and run is not None and run.workload_pid:
        try:
            fd = os.open(
                f"/proc/{run.workload_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError:
            fd = -1
        # The pid is still the workload (a recycled pid would be another root).
        if fd >= 0 and (
            run.workload_starttime is None or _starttime(run.workload_pid) == run.workload_starttime
        ):
            return fd
        if fd >= 0:
            os.close(fd)
    return os.open(c.spec.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _error(exc: ArchiveError, c: Container) -> Exception:
    if exc.errno == errno.ENOENT:
        return NotFoundError(f"no such file or directory in container {c.name}: {exc}")
    if exc.errno in (errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
        return StateError(f"container {c.name}: {exc}")
    return OSError(exc.errno, f"container {c.name}: {exc}")


def _path(query: dict[str, str]) -> str:
    path = query.get("path", "")
    if not path:
        raise ConfigError([Problem("path", "give the path inside the container (?path=/etc)")])
    return path


async def archive_get(c: Container, query: dict[str, str]) -> tuple[str, AsyncIterator[bytes]]:
    path = _path(query)

    def build() -> IO[bytes]:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by chunks()
        root = open_root(c)
        try:
            write_tar(root, path, spool, shifted_view(root, c.idmap))
        except BaseException:
            spool.close()
            raise
        finally:
            os.close(root)
        spool.seek(0)
        return spool

    try:
        spool = await trio.to_thread.run_sync(build)
    except ArchiveError as exc:
        raise _error(exc, c) from None

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while data := await trio.to_thread.run_sync(spool.read, 1 << 20):
                yield data
        finally:
            spool.close()

    return "application/x-tar", chunks()


async def archive_put(
    c: Container, query: dict[str, str], receive: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    path = _path(query)
    with tempfile.TemporaryFile() as spool:
        while True:
            msg = await receive()
            body = msg.get("body", b"")
            if body:
                await trio.to_thread.run_sync(spool.write, body)
            if not msg.get("more_body"):
                break

        def extract() -> int:
            spool.seek(0)
            root = open_root(c)
            try:
                idmap = shifted_view(root, c.idmap)
                with as_container_root(idmap):
                    return extract_tar(root, path, spool, idmap=idmap)
            finally:
                os.close(root)

        try:
            count = await trio.to_thread.run_sync(extract)
        except ArchiveError as exc:
            raise _error(exc, c) from None
    return {"name": c.name, "path": path, "entries": count}
