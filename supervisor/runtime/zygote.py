"""Launching containers: the zygote (daemon side and process side) and a
synchronous launcher for tests and benchmarks.

    daemon --(LaunchSpec JSON + socket end, SCM_RIGHTS)--> zygote
    zygote: clone3(CLONE_PARENT | CLONE_NEWPID | CLONE_PIDFD) the monitor,
            send {"event":"monitor","pid":N} + pidfd
    monitor (PID 1 of its pid namespace, the daemon's child; see
            supervisor.runtime.monitor: forks the workload, execs
            nsvisor-monitor):
            send {"event":"started","workload_pid":N,"started_at":T}
            or {"event":"error","message":...}

One fork of the big Python process per container less than an intermediate
(unshare, fork, exit) would cost: CLONE_NEWPID puts the child straight into
its new pid namespace and CLONE_PARENT makes it the daemon's child, which an
intermediate's exit used to arrange by re-parenting.

The spare: that clone (1.5-1.8 ms of a ~29 MiB process, measured) is made
ahead of need. The zygote keeps one first process cloned in advance, idle in
its own new pid namespace, blocked on a socket; a launch (private pid
namespace, the common case) hands it the LaunchSpec and the launch socket.
The next spare is cloned when the daemon asks (SPARE_REQUEST, sent once the
launch has reported "started"): cloned at once, it took a core from the
monitor and the workload it had just handed over (2 cores here). A spare
dies with the zygote (EOF on its socket); one that is gone is replaced by a
clone on the spot.

The per-launch socket is SOCK_SEQPACKET: every event is one message (one JSON
line) and the pidfd rides on exactly the message it belongs to. The monitor's
"started" can overtake the zygote's "monitor" event (two processes write to
the same socket), so the reader accepts them in either order.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from supervisor.errors import NsvisorError
from supervisor.runtime import linux
from supervisor.runtime.exec import EXEC_MAGIC, spawn_exec
from supervisor.runtime.monitor import monitor_binary, run_monitor
from supervisor.runtime.spec import LaunchSpec

if TYPE_CHECKING:
    import trio

# daemon -> zygote, no fds: clone the next spare now (if there is none).
SPARE_REQUEST = b"SPARE\n"
_MAX_MSG = 1 << 18  # a LaunchSpec is a few KiB; SEQPACKET truncates beyond this
_ANC_SIZE = socket.CMSG_SPACE(4 * array.array("i").itemsize)


class LaunchError(NsvisorError):
    """The container did not start. `pid` is the monitor's host pid when a
    monitor was created (it exits by itself after writing the exit file; the
    caller, its parent, must reap it)."""

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


@dataclass(frozen=True)
class Launched:
    pid: int  # the monitor's host pid
    pidfd: int  # the caller owns it (close it after reaping)
    workload_pid: int  # host pid
    started_at: float  # time.time() when execve succeeded


class _Events:
    """Collects the launch events in whatever order they come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.workload_pid: int | None = None
        self.started_at = 0.0
        self.error: str | None = None
        self.final = False

    @property
    def done(self) -> bool:
        if self.error is not None and self.final:
            # The zygote failed: no monitor will report. (A monitor's own
            # error may arrive before the zygote's monitor event: that one
            # is not final.)
            return True
        return self.pid is not None and (self.workload_pid is not None or self.error is not None)

    def feed(self, data: bytes, fds: list[int]) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise LaunchError(
                f"container {self.name}: garbled launch event {data[:200]!r}"
            ) from None
        kind = event.get("event")
        if kind == "monitor":
            if not fds:
                raise LaunchError(f"container {self.name}: monitor event without a pidfd")
            self.pid, self.pidfd = int(event["pid"]), fds.pop(0)
        elif kind == "started":
            self.workload_pid = int(event["workload_pid"])
            self.started_at = float(event.get("started_at", time.time()))
        elif kind == "error":
            self.error = str(event["message"])
            self.final = bool(event.get("final", False))
        for fd in fds:
            os.close(fd)

    def result(self) -> Launched:
        if self.error is not None:
            if self.pidfd is not None:
                os.close(self.pidfd)
            raise LaunchError(f"container {self.name}: {self.error}", pid=self.pid)
        assert self.pid is not None and self.pidfd is not None and self.workload_pid is not None
        return Launched(self.pid, self.pidfd, self.workload_pid, self.started_at)

    def abandon(self) -> None:
        """Launch interrupted (cancelled, timed out): kill what was started."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = None


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _send(sock: socket.socket, event: dict[str, object], fds: list[int] | None = None) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with contextlib.suppress(OSError):
        sock.sendmsg([json.dumps(event).encode() + b"\n"], anc, socket.MSG_NOSIGNAL)


# clone3(2): one system call makes the container's first process, already in
# its new pid namespace, already the daemon's child (CLONE_PARENT), with its
# pidfd (CLONE_PIDFD).
def _clone(flags: int) -> tuple[int, int]:
    """fork(2) with clone flags: (pid, pidfd) in the parent, (0, -1) in the child."""
    return linux.clone3(flags | linux.CLONE_PIDFD)


def _first_process(spec: LaunchSpec, sock_fd: int) -> NoReturn:
    """The container's first process (PID 1 with a private pid namespace):
    only the launch socket survives, then run_monitor (fork the workload,
    exec nsvisor-monitor). Signals arrive blocked."""
    try:
        gc.disable()  # a short life: no collection copies a frozen page
        if sock_fd != 3:
            os.dup2(sock_fd, 3, inheritable=False)
        linux.close_range(4)
        run_monitor(spec, socket.socket(fileno=3))
    finally:
        os._exit(1)


def _spawn_monitor(spec_json: bytes, sock_fd: int, *, reparent: bool) -> None:
    """Clone the container's first process from this one (the zygote, or
    launch_sync's caller) and report {"event":"monitor","pid":N} with its
    pidfd on the launch socket, or a final error. reparent: the new process
    is our parent's child (the daemon's), not ours."""
    sock = socket.socket(fileno=os.dup(sock_fd))
    try:
        spec = LaunchSpec.from_json(spec_json)
        flags = linux.CLONE_PARENT if reparent else 0
        if spec.namespaces.pid == "private":
            flags |= linux.CLONE_NEWPID
        gc.freeze()  # keep the gc from touching (and copying) inherited pages
        # Blocked until the monitor has its signalfd: a SIGTERM from the
        # daemon in between is then forwarded, not fatal to PID 1.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid, pidfd = _clone(flags)
            if pid == 0:
                sock.close()
                _first_process(spec, sock_fd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        try:
            _send(sock, {"event": "monitor", "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)
    except Exception as e:
        _send(sock, {"event": "error", "message": f"starting the monitor: {e}", "final": True})
    finally:
        sock.close()


def _recv_sync(sock: socket.socket, events: _Events, deadline: float) -> None:
    while not events.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LaunchError(f"container {events.name}: no start event within the timeout")
        sock.settimeout(remaining)
        try:
            data, anc, _, _ = sock.recvmsg(_MAX_MSG, _ANC_SIZE)
        except TimeoutError:
            continue
        if not data:
            raise LaunchError(
                f"container {events.name}: launch socket closed before the start event"
                " (the monitor died during start-up?)",
                pid=events.pid,
            )
        events.feed(data, _fds_from(anc))


def launch_sync(spec: LaunchSpec, timeout_s: float = 30.0) -> Launched:
    """Launch without a zygote: the monitor is cloned from the caller, as
    its child. For tests and benchmarks; the caller must reap the monitor
    (and should be a PR_SET_CHILD_SUBREAPER for what it leaves behind with
    pid "host")."""
    monitor_binary()  # fails naming the fix when nsvisor-monitor was not built
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events = _Events(spec.name)
    try:
        with ours:
            try:
                _spawn_monitor(spec.to_json().encode(), theirs.fileno(), reparent=False)
            finally:
                theirs.close()
            _recv_sync(ours, events, time.monotonic() + timeout_s)
    except BaseException:
        events.abandon()
        raise
    return events.result()


# --- the zygote process --------------------------------------------------------


class _Spare:
    """A first process cloned ahead of need (CLONE_PARENT | CLONE_NEWPID),
    waiting on `sock` for a LaunchSpec and the launch socket."""

    FLAGS = linux.CLONE_PARENT | linux.CLONE_NEWPID

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gc.freeze()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid, pidfd = _clone(self.FLAGS)
            if pid == 0:
                ours.close()
                _spare_main(theirs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        theirs.close()
        self.pid, self.pidfd, self.sock = pid, pidfd, ours

    def take(self, spec_json: bytes, sock_fd: int) -> bool:
        """Hand the launch over; False if the spare is gone (then closed)."""
        try:
            socket.send_fds(self.sock, [spec_json], [sock_fd])
            return True
        except OSError:
            self.close()
            return False
        finally:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = -1


def _spare_main(sock: socket.socket) -> NoReturn:
    """A spare's life: wait for the launch (EOF: the zygote is gone), then
    be the container's first process. Signals arrive blocked."""
    try:
        # Nothing of the zygote's (its control socket) while it waits.
        os.dup2(sock.detach(), 3, inheritable=False)
        linux.close_range(4)  # with it the detached fd
        sock = socket.socket(fileno=3)
        try:
            msg, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, 1)
        except OSError:
            os._exit(0)
        if not msg or not fds:
            os._exit(0)
        sock.detach()  # fd 3 becomes the launch socket's (_first_process)
        _first_process(LaunchSpec.from_json(msg), fds[0])
    finally:
        os._exit(1)


def _launch_from_zygote(spec_json: bytes, sock_fd: int, spare: _Spare | None) -> bool:
    """A launch request: through the spare when it fits (True: it was used),
    else a clone now."""
    if spare is not None and LaunchSpec.from_json(spec_json).namespaces.pid == "private":
        pid, pidfd = spare.pid, spare.pidfd
        if spare.take(spec_json, sock_fd):
            with socket.socket(fileno=os.dup(sock_fd)) as sock:
                _send(sock, {"event": "monitor", "pid": pid}, [pidfd])
            os.close(pidfd)
            return True
        _spawn_monitor(spec_json, sock_fd, reparent=True)
        return True  # the spare is gone: a new one is due all the same
    _spawn_monitor(spec_json, sock_fd, reparent=True)
    return False


def _new_spare() -> _Spare | None:
    try:
        return _Spare()
    except OSError:
        return None  # clone refused (pids limit...): launches clone on the spot


def _zygote_main(ctl: socket.socket, daemon_pid: int) -> NoReturn:
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != daemon_pid:
            os._exit(0)  # the daemon died before PDEATHSIG was armed
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the daemon
        os.chdir("/")
        os.dup2(ctl.fileno(), 3, inheritable=False)
        linux.close_range(4)
        ctl = socket.socket(fileno=3)
        spare = _new_spare()
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, _MAX_MSG, 4)
            except InterruptedError:
                continue
            if not msg:
                os._exit(0)  # the daemon closed the control socket (spares: EOF)
            if not fds:
                if msg == SPARE_REQUEST and spare is None:
                    spare = _new_spare()
                continue
            if msg.startswith(EXEC_MAGIC):  # nsvisor exec (supervisor.runtime.exec)
                pid = spawn_exec(msg, fds)
                if pid:
                    os.waitpid(pid, 0)
                continue
            for extra in fds[1:]:
                os.close(extra)
            try:
                used = _launch_from_zygote(msg, fds[0], spare)
            except Exception as e:  # a garbled spec: the daemon hears of it
                with socket.socket(fileno=os.dup(fds[0])) as sock:
                    _send(sock, {"event": "error", "message": f"starting the monitor: {e}",
                                 "final": True})  # fmt: skip
                used = False
            finally:
                os.close(fds[0])
            if used:
                spare = None  # the next one when the daemon asks (SPARE_REQUEST)
    finally:
        os._exit(1)


class Zygote:
    """The daemon's handle on the zygote process.

    `Zygote.spawn()` must run before trio.run() and before any thread starts:
    the zygote is a fork of the daemon at that moment, with everything the
    monitor and the workload need already imported.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._tsock: trio.socket.SocketType | None = None
        self._lock: trio.Lock | None = None

    @classmethod
    def spawn(cls) -> Zygote:
        monitor_binary()  # fails naming the fix when nsvisor-monitor was not built
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        daemon_pid = os.getpid()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _zygote_main(theirs, daemon_pid)
        theirs.close()
        return cls(pid, ours)

    async def launch(self, spec: LaunchSpec) -> Launched:
        import trio

        if self._tsock is None or self._lock is None:
            self._tsock = trio.socket.from_stdlib_socket(self._sock)
            self._lock = trio.Lock()
        payload = spec.to_json().encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tsock = trio.socket.from_stdlib_socket(ours)
        events = _Events(spec.name)
        try:
            with tsock:
                try:
                    async with self._lock:
                        anc = [
                            (
                                socket.SOL_SOCKET,
                                socket.SCM_RIGHTS,
                                array.array("i", [theirs.fileno()]).tobytes(),
                            )
                        ]
                        try:
                            await self._tsock.sendmsg([payload], anc, socket.MSG_NOSIGNAL)
                        except OSError as e:
                            raise LaunchError(
                                f"container {spec.name}: the zygote is gone ({e})"
                            ) from e
                finally:
                    theirs.close()
                while not events.done:
                    data, ancdata, _, _ = await tsock.recvmsg(_MAX_MSG, _ANC_SIZE)
                    if not data:
                        raise LaunchError(
                            f"container {spec.name}: launch socket closed before the start event"
                            " (the zygote or the monitor died?)",
                            pid=events.pid,
                        )
                    events.feed(data, _fds_from(ancdata))
        except BaseException:
            with trio.CancelScope(shield=True):
                events.abandon()
            raise
        launched = events.result()
        # The launch is done: the zygote may clone the next spare now.
        with contextlib.suppress(OSError):
            async with self._lock:
                await self._tsock.sendmsg([SPARE_REQUEST], [], socket.MSG_NOSIGNAL)
        return launched

    async def submit(self, payload: bytes, fds: list[int]) -> None:
        """Send one request with fds (SCM_RIGHTS) to the zygote; the fds are
        the caller's to close afterwards. Used by exec (supervisor.runtime.exec)."""
        import trio

        if self._tsock is None or self._lock is None:
            self._tsock = trio.socket.from_stdlib_socket(self._sock)
            self._lock = trio.Lock()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        async with self._lock:
            try:
                await self._tsock.sendmsg([payload], anc, socket.MSG_NOSIGNAL)
            except OSError as e:
                raise LaunchError(f"the zygote is gone ({e})") from e

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the zygote (EOF on its control socket), reap it, SIGKILL it if
        it does not go within timeout_s. Running containers are not touched."""
        self._sock.close()
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            poller = select.poll()  # not select(): the daemon's fds may be numbered past 1024
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(timeout_s * 1000):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # the daemon's reaper got it first
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        finally:
            os.close(pidfd)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
