"""The daemon's side of exec: ask the zygote for an exec shim, then follow
the exec'd process through the shim's events (supervisor.runtime.exec has
the process tree and why).

The daemon never waits for the exec'd process itself: the shim waits and
sends the exit code; the daemon only holds a pidfd of it, to kill it when
the caller goes away or a health probe times out.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from supervisor.cgroups import CgroupManager
from supervisor.config import ContainerSpec, resolve_user
from supervisor.errors import NsvisorError
from supervisor.runtime.exec import EXEC_MAGIC, ExecSpec

_ANC = socket.CMSG_SPACE(array.array("i").itemsize)


class ExecError(NsvisorError):
    """The command did not start: exit_code is Docker's 125 (nsvisor failed),
    126 (cannot invoke) or 127 (not found)."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        self.exit_code = exit_code
        super().__init__(message)


@dataclass
class ExecRequest:
    """What the caller asks for (API body / health probe)."""

    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    tty: bool = False


class ExecSession:
    """One exec'd process. `start` returns once it has been exec'd."""

    def __init__(self, sock: trio.socket.SocketType, pid: int, pidfd: int) -> None:
        self._sock = sock
        self.pid = pid
        self._pidfd = pidfd
        self.exit_code: int | None = None

    @classmethod
    async def start(cls, zygote: _Submitter, spec: ExecSpec, stdio: Sequence[int]) -> ExecSession:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tsock = trio.socket.from_stdlib_socket(ours)
        try:
            try:
                await zygote.submit(EXEC_MAGIC + spec.to_json(), [theirs.fileno(), *stdio])
            finally:
                theirs.close()
            event, fds = await _receive(tsock)
        except BaseException:
            tsock.close()
            raise
        if event.get("event") == "started" and fds:
            for extra in fds[1:]:
                os.close(extra)
            return cls(tsock, int(event["pid"]), fds[0])
        for fd in fds:
            os.close(fd)
        tsock.close()
        raise ExecError(
            str(event.get("message") or "the exec shim ended without a word"),
            int(event.get("exit_code", 125)),
        )

    async def wait(self) -> int:
        """The exit code (128+signal when killed; 255 if the shim vanished)."""
        if self.exit_code is None:
            try:
                event, fds = await _receive(self._sock)
            except ExecError:
                event, fds = {}, []  # the shim vanished
            for fd in fds:
                os.close(fd)
            self.exit_code = int(event["exit_code"]) if event.get("event") == "exit" else 255
            self.close()
        return self.exit_code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._sock.close()


class _Submitter(Protocol):  # the part of runtime.zygote.Zygote that exec uses
    async def submit(self, payload: bytes, fds: list[int]) -> None: ...


async def _receive(sock: trio.socket.SocketType) -> tuple[dict[str, Any], list[int]]:
    data, anc, _, _ = await sock.recvmsg(1 << 16, _ANC)
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        raise ExecError("the exec shim ended without a word (killed?)")
    event = json.loads(data)
    return (event if isinstance(event, dict) else {}), list(fds)


async def read_capped(stream: trio.lowlevel.FdStream, limit: int) -> bytes:
    """Everything from a pipe until EOF, keeping the first `limit` bytes."""
    out = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            break
        if not chunk:
            break
        if len(out) < limit:
            out += chunk[: limit - len(out)]
    return out


def exec_spec_for(
    spec: ContainerSpec,
    cgroups: CgroupManager,
    req: ExecRequest,
    *,
    target_pid: int,
    target_starttime: int | None,
) -> ExecSpec:
    """The container's own identity, capabilities and environment, with the
    request's overrides (-e, -u, -w). ConfigError for an unknown user."""
    uid, gid, groups = spec.uid, spec.gid, spec.additional_gids
    if req.user:
        uid, gid, groups = resolve_user(req.user, spec.rootfs)
    env = dict(e.split("=", 1) for e in spec.env)
    for item in req.env:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    if req.tty:
        env.setdefault("TERM", "xterm")
    return ExecSpec(
        name=spec.name,
        argv=req.argv,
        env=tuple(f"{k}={v}" for k, v in env.items()),
        cwd=req.workdir or spec.workdir,
        uid=uid,
        gid=gid,
        additional_gids=groups,
        capabilities=tuple(sorted(spec.capabilities)),
        cgroup_procs=tuple(cgroups.procs_files(spec.name)),
        target_pid=target_pid,
        target_starttime=target_starttime,
        tty=req.tty,
        seccomp=spec.seccomp,
    )


# ioctls of asm-generic/ioctls.h the termios module lacks
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_PTMX = (5, 2)  # major, minor of /dev/ptmx and every devpts ptmx


def container_pty(workload_pid: int) -> tuple[int, int]:
    """(master, slave) of a new pty of the container's own devpts instance,
    as `exec -t` needs it: a pty of the host's /dev/ptmx would be a path that
    does not exist inside (`tty` says "not a tty"). The ptmx is opened
    through the container's root without following links (the container
    owns its /dev), checked to be a ptmx, and the slave comes from the master
    itself (TIOCGPTPEER), never from a path."""
    import fcntl

    from supervisor.archive import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

    root = os.open(f"/proc/{workload_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        master = openat2(
            root,
            "/dev/pts/ptmx",
            os.O_RDWR | os.O_NOCTTY,
            resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | 0x04,  # RESOLVE_NO_SYMLINKS
        )
    finally:
        os.close(root)
    try:
        rdev = os.fstat(master).st_rdev
        if (os.major(rdev), os.minor(rdev)) != _PTMX:
            raise OSError(
                f"the container's /dev/pts/ptmx is no ptmx ({os.major(rdev)}:{os.minor(rdev)})"
            )
        fcntl.ioctl(master, _TIOCSPTLCK, b"\0\0\0\0")
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, slave
