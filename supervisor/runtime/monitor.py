"""The monitor: the container's PID 1 (tini's job) and its log/exit keeper
(conmon's job), in one process per container.

It stays in the host mount namespace (so it can write the log and exit files)
and is non-dumpable (so container root cannot reach the host through
/proc/1/root or /proc/1/fd). One poll loop over the output pipes and a signal
wake-up pipe; no threads, no event loop library: it is forked per container and
its memory counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import NoReturn

from supervisor.runtime import console, linux
from supervisor.runtime.spec import LaunchSpec
from supervisor.runtime.workload import exec_workload

# Docker's json-file driver splits lines longer than this into partial entries.
MAX_LINE = 16 * 1024
# After every process is gone, how long to wait for EOF on the output pipes (a
# process outside the pid namespace could hold them; only with pid=host).
DRAIN_TIMEOUT_S = 1.0
# After SIGKILL, how long to wait for the last processes before giving up.
KILL_TIMEOUT_S = 10.0

# --- attach ------------------------------------------------------------------
#
# The monitor listens on spec.attach_path (a Unix socket, 0600, in the
# container's state directory) for the daemon's attach connections. Frames both
# ways: 1 byte type, 4 bytes big-endian length, payload. Internal to the
# daemon and the monitor (the CLI speaks websockets to the daemon).
#   monitor -> client: b"1" stdout bytes, b"2" stderr bytes (a pty is "1")
#   client -> monitor: b"i" input, b"r" resize (struct "!HH" rows, cols),
#                      b"e" end of input (closes the workload's stdin pipe)
# Every client gets every output chunk; with a tty a new client first gets the
# last REPLAY_BYTES of output (the prompt, the screen). A client whose unsent
# output exceeds CLIENT_BUFFER is dropped: a slow client never blocks the
# container, the log or the other clients.
FRAME = struct.Struct("!cI")
CLIENT_BUFFER = 1 << 20
REPLAY_BYTES = 64 * 1024
# Input waiting for the workload to read it: beyond this, clients are not
# read (their sockets fill up: backpressure, nothing is dropped).
INPUT_BUFFER = 256 * 1024


def frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def parse_frames(buf: bytearray) -> list[tuple[bytes, bytes]]:
    """Complete frames at the start of buf (consumed); a partial one stays."""
    out: list[tuple[bytes, bytes]] = []
    while len(buf) >= FRAME.size:
        kind, length = FRAME.unpack_from(buf)
        if len(buf) < FRAME.size + length:
            break
        out.append((kind, bytes(buf[FRAME.size : FRAME.size + length])))
        del buf[: FRAME.size + length]
    return out


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()


class AttachServer:
    """The monitor's side of attach: no threads, driven by Monitor.run's poll."""

    def __init__(self, path: str, tty: bool) -> None:
        self.path = path
        self.tty = tty
        self.replay = bytearray()
        self.clients: dict[int, _Client] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bound by its basename from its directory: the absolute path can be
        # longer than sun_path's 108 bytes (deep state directories).
        directory, base = os.path.split(path)
        old_umask = os.umask(0o177)
        old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(directory or ".")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base)
            self.listener.bind(base)
        finally:
            os.umask(old_umask)
            os.fchdir(old_cwd)
            os.close(old_cwd)
        self.listener.listen(16)
        self.listener.setblocking(False)

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        if self.tty and self.replay:
            client.outbuf += frame(b"1", bytes(self.replay))
        self.clients[sock.fileno()] = client
        self.flush(client)

    def drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    def flush(self, client: _Client) -> None:
        try:
            while client.outbuf:
                sent = client.sock.send(client.outbuf, socket.MSG_NOSIGNAL)
                del client.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(client)

    def broadcast(self, stream: str, data: bytes) -> None:
        if self.tty:
            self.replay += data
            if len(self.replay) > REPLAY_BYTES:
                del self.replay[: len(self.replay) - REPLAY_BYTES]
        payload = frame(b"1" if stream == "stdout" else b"2", data)
        for client in list(self.clients.values()):
            client.outbuf += payload
            if len(client.outbuf) > CLIENT_BUFFER:
                self.drop(client)  # too slow: never let it hold the others up
            else:
                self.flush(client)

    def receive(self, client: _Client) -> list[tuple[bytes, bytes]]:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return []
        client.inbuf += data
        return parse_frames(client.inbuf)

    def close(self) -> None:
        """At exit: the last output to every client (briefly), then EOF."""
        for client in list(self.clients.values()):
            with contextlib.suppress(OSError):
                client.sock.settimeout(1.0)
                client.sock.sendall(client.outbuf, socket.MSG_NOSIGNAL)
            client.sock.close()
        self.clients.clear()
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# Never forwarded: SIGCHLD is ours; fault signals are about the monitor itself
# and keep their default action (tini's list).
_FAULT_SIGNALS = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGABRT,
        signal.SIGSYS,
        signal.SIGTRAP,
    }
)
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def rfc3339_nano(ns: int) -> str:
    """2026-11-27T19:00:00.123456789Z from nanoseconds since the epoch."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_oom_kill(text: str) -> int | None:
    """The "oom_kill N" line of v2 memory.events or v1 memory.oom_control."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def read_oom_kill(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return parse_oom_kill(f.read())
    except (OSError, ValueError):
        return None


def exit_record(
    status: int,
    oom_before: int | None,
    oom_after: int | None,
    started_at: float,
    finished_at: float,
) -> dict[str, object]:
    """The exit file's content from a waitpid status. Pure."""
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = 128 + sig if sig is not None else os.waitstatus_to_exitcode(status)
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    return {
        "exit_code": code,
        "signal": sig,
        "oom_killed": oom,
        "started_at": started_at,
        "finished_at": finished_at,
    }


def write_atomic(path: str, data: bytes) -> None:
    """tmp + fsync + rename: a reader sees the whole file or none."""
    # 0600: state files are root-only (the exit record names the command's fate).
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def rotated_name(path: str, index: int) -> str:
    """container.log, container.log.1, container.log.2, ... (Docker's names)."""
    return path if index == 0 else f"{path}.{index}"


def rotate_files(path: str, max_files: int) -> None:
    """Shift path.(n) -> path.(n+1) and path -> path.1, keeping max_files
    files in all (the current one included; with 1, the old file is dropped).
    Renames, so a reader holding the old file open reads it to its end and an
    inotify watch on the directory sees IN_MOVED_TO / IN_CREATE."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rotated_name(path, max_files - 1) if max_files > 1 else path)
    for i in range(max_files - 2, -1, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(rotated_name(path, i), rotated_name(path, i + 1))


def open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class LogWriter:
    """Docker json-file lines: {"log":"text\\n","stream":"stdout","time":"..."}.

    With `max_size` (and the file's `path`) it rotates before a line would
    take the file past max_size, keeping `max_files` files (Docker's
    max-size / max-file). The monitor, not the daemon, rotates: it owns the
    file, so rotation goes on while no daemon runs."""

    def __init__(
        self,
        fd: int,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        path: str | None = None,
        max_size: int | None = None,
        max_files: int = 1,
    ) -> None:
        self.fd = fd
        self.clock_ns = clock_ns
        self.pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.path = path
        self.max_size = max_size if path is not None else None
        self.max_files = max(1, max_files)
        self.size = os.fstat(fd).st_size if self.max_size is not None else 0

    def _rotate(self) -> None:
        assert self.path is not None
        try:
            rotate_files(self.path, self.max_files)
            new = open_log(self.path)
        except OSError:
            return  # keep appending to the old file rather than lose lines
        os.close(self.fd)
        self.fd, self.size = new, 0

    def _emit(self, stream: str, chunk: bytes) -> None:
        line = json.dumps(
            {
                "log": chunk.decode(errors="replace"),
                "stream": stream,
                "time": rfc3339_nano(self.clock_ns()),
            },
            separators=(",", ":"),
        )
        data = (line + "\n").encode()
        if self.max_size is not None and self.size and self.size + len(data) > self.max_size:
            self._rotate()
        try:
            while data:
                written = os.write(self.fd, data)
                self.size += written
                data = data[written:]
        except OSError:
            pass  # a full disk must not kill PID 1; the lines are lost

    def feed(self, stream: str, data: bytes) -> None:
        buf = self.pending[stream] + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0 or nl >= MAX_LINE:
                if len(buf) < MAX_LINE:
                    break
                self._emit(stream, buf[:MAX_LINE])
                buf = buf[MAX_LINE:]
                continue
            self._emit(stream, buf[: nl + 1])
            buf = buf[nl + 1 :]
        self.pending[stream] = buf

    def flush(self, stream: str) -> None:
        if self.pending[stream]:
            self._emit(stream, self.pending[stream])
            self.pending[stream] = b""


def _send_event(sock: socket.socket, event: dict[str, object]) -> None:
    # OSError: the launcher went away; the container still runs.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(event).encode() + b"\n", socket.MSG_NOSIGNAL)


class Monitor:
    def __init__(self, spec: LaunchSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.private_pidns = spec.namespaces.pid == "private" and os.getpid() == 1
        self.forward = frozenset(
            s
            for s in signal.valid_signals()
            if s not in _FAULT_SIGNALS | _UNCATCHABLE | {signal.SIGCHLD}
        )
        self.workload_pid = 0
        self.status: int | None = None
        self.started_at = time.time()
        self.console: socket.socket | None = None
        self.stdin_w: int | None = None  # the workload's stdin pipe (spec.stdin, no tty)
        self.master: int | None = None  # the pty master (spec.tty)
        self.attach: AttachServer | None = None
        self.pending_input = bytearray()
        self.input_eof = False

    # -- set-up ---------------------------------------------------------------

    def _setup_process(self) -> None:
        os.setsid()
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        if not self.private_pidns:
            # Not PID 1: become the reaper of the workload's orphans anyway.
            linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        try:
            with open("/proc/self/comm", "w") as f:
                f.write("nsvisor-monitor")
        except OSError:
            pass
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.chdir("/")

    def _setup_signals(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in self.forward | {signal.SIGCHLD}:
            with contextlib.suppress(OSError, ValueError):  # 32/33 belong to glibc
                signal.signal(sig, _noop)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        return wake_r

    def _spawn_workload(self) -> tuple[int, int, int]:
        """Fork the workload; returns (stdout read end, stderr read end, error
        pipe read end). With spec.stdin (and no tty) self.stdin_w is the write
        end of the workload's stdin; with spec.tty self.console is the socket
        the pty master arrives on."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        stdin_r: int | None = None
        console_theirs: socket.socket | None = None
        if self.spec.tty:
            self.console, console_theirs = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
            )
        elif self.spec.stdin:
            stdin_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
        # Blocked around fork so no signal runs a Python handler in the child
        # before it has put the default dispositions back.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        pid = os.fork()
        if pid == 0:
            exec_workload(
                self.spec,
                exec_w,
                out_w,
                err_w,
                stdin_fd=stdin_r,
                console_fd=console_theirs.fileno() if console_theirs is not None else None,
            )
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.workload_pid = pid
        for fd in (out_w, err_w, exec_w):
            os.close(fd)
        if stdin_r is not None:
            os.close(stdin_r)
        if console_theirs is not None:
            console_theirs.close()
        return out_r, err_r, exec_r

    def _read_exec_result(self, exec_r: int) -> tuple[int, str | None]:
        """(workload host pid, error message or None); EOF means exec happened."""
        data = b""
        while chunk := os.read(exec_r, 65536):
            data += chunk
        os.close(exec_r)
        host_pid = 0
        error: str | None = None
        text = data.decode(errors="replace")
        head, _, rest = text.partition("\n")
        if head.startswith("P"):
            host_pid = int(head[1:])
        else:
            rest = text
        if rest.startswith("E"):
            error = rest[1:].partition(" ")[2] or rest
        elif not head.startswith("P"):
            error = "the workload died before it could report (killed during set-up?)"
        return host_pid, error

    # -- the loop -------------------------------------------------------------

    def _reap(self) -> bool:
        """Drain waitpid(-1, WNOHANG). True when no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if pid == self.workload_pid and self.status is None:
                self.status = status

    def _kill_rest(self, sig: int) -> None:
        try:
            if self.private_pidns:
                os.kill(-1, sig)  # everything in our pid namespace but us
            else:
                # With the host's pid namespace kill(-1) would hit the host:
                # only the workload's session (its process group).
                os.killpg(self.workload_pid, sig)
        except OSError:
            pass

    def run(self) -> int:
        self._setup_process()
        log_fd = open_log(self.spec.log_path)
        oom_before = read_oom_kill(self.spec.oom_kill_file)
        wake_r = self._setup_signals()
        if self.spec.attach_path is not None:
            # Before the workload starts: once "started" is reported, the
            # daemon may connect.
            self.attach = AttachServer(self.spec.attach_path, self.spec.tty)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # blocked by the intermediate
        out_r, err_r, exec_r = self._spawn_workload()
        host_pid, error = self._read_exec_result(exec_r)
        self.started_at = time.time()
        if self.console is not None:
            self.master = console.receive_master(self.console)
            self.console.close()
            self.console = None
            if self.master is not None:
                os.set_blocking(self.master, False)
        if self.stdin_w is not None:
            os.set_blocking(self.stdin_w, False)
        if error is None:
            _send_event(
                self.sock,
                {"event": "started", "workload_pid": host_pid, "started_at": self.started_at},
            )
        else:
            _send_event(self.sock, {"event": "error", "message": error})
        self.sock.close()

        log = LogWriter(
            log_fd,
            path=self.spec.log_path,
            max_size=self.spec.log_max_size,
            max_files=self.spec.log_max_files,
        )
        streams = {out_r: "stdout", err_r: "stderr"}
        if self.master is not None:
            streams[self.master] = "stdout"
        deadline: float | None = None
        phase = "running"  # -> "terminating" -> "killing" -> "draining"
        while True:
            if phase != "running" and deadline is not None and time.monotonic() >= deadline:
                if phase == "terminating":
                    self._kill_rest(signal.SIGKILL)
                    phase, deadline = "killing", time.monotonic() + KILL_TIMEOUT_S
                else:
                    break  # killing or draining took too long: give up waiting
            if phase == "draining" and not streams:
                break
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            for fd, events in self._poller(wake_r, streams).poll(timeout):
                if fd == wake_r:
                    try:
                        signals = os.read(wake_r, 4096)
                    except BlockingIOError:
                        continue
                    for sig in signals:
                        if sig in self.forward and self.status is None:
                            with contextlib.suppress(OSError):
                                os.kill(self.workload_pid, sig)
                    continue
                if self.attach is not None and fd == self.attach.listener.fileno():
                    self.attach.accept()
                    continue
                if self.attach is not None and fd in self.attach.clients:
                    client = self.attach.clients[fd]
                    if events & select.POLLOUT:
                        self.attach.flush(client)
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        for kind, payload in self.attach.receive(client):
                            self._client_frame(kind, payload)
                    continue
                if events & select.POLLOUT and fd == self._input_target():
                    self._write_input()
                if fd not in streams or not events & (
                    select.POLLIN | select.POLLHUP | select.POLLERR
                ):
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: a pty master once no slave is open
                    chunk = b""
                if chunk:
                    log.feed(streams[fd], chunk)
                    if self.attach is not None:
                        self.attach.broadcast(streams[fd], chunk)
                else:
                    log.flush(streams.pop(fd))
                    if fd == self.master:
                        self.master = None
                    os.close(fd)
            if self.input_eof and not self.pending_input and self.stdin_w is not None:
                os.close(self.stdin_w)
                self.stdin_w = None
            if phase in ("draining",):
                continue
            none_left = self._reap()
            if phase == "running" and self.status is not None:
                self._kill_rest(signal.SIGTERM)
                phase, deadline = "terminating", time.monotonic() + self.spec.teardown_grace_s
            if phase in ("terminating", "killing") and none_left:
                phase, deadline = "draining", time.monotonic() + DRAIN_TIMEOUT_S
        for stream in ("stdout", "stderr"):
            log.flush(stream)
        os.close(log.fd)
        if self.stdin_w is not None:
            os.close(self.stdin_w)
        if self.master is not None:
            os.close(self.master)

        status = self.status if self.status is not None else 0xFF00  # exit 255: lost
        record = exit_record(
            status, oom_before, read_oom_kill(self.spec.oom_kill_file), self.started_at, time.time()
        )
        write_atomic(self.spec.exit_path, json.dumps(record).encode() + b"\n")
        if self.attach is not None:
            # After the exit file: a client that sees EOF finds the exit code.
            self.attach.close()
        code = record["exit_code"]
        assert isinstance(code, int)
        return code

    # -- attach ---------------------------------------------------------------

    def _input_target(self) -> int | None:
        if self.spec.tty:
            return self.master if self.spec.stdin else None
        return self.stdin_w

    def _poller(self, wake_r: int, streams: dict[int, str]) -> select.poll:
        """Built afresh each turn: a handful of fds, and the interest in each
        changes with the buffers."""
        interest: dict[int, int] = {wake_r: select.POLLIN}
        for fd in streams:
            interest[fd] = select.POLLIN
        target = self._input_target()
        if target is not None and self.pending_input:
            interest[target] = interest.get(target, 0) | select.POLLOUT
        if self.attach is not None:
            interest[self.attach.listener.fileno()] = select.POLLIN
            reading = len(self.pending_input) < INPUT_BUFFER
            for fd, client in self.attach.clients.items():
                mask = (select.POLLIN if reading else 0) | (select.POLLOUT if client.outbuf else 0)
                interest[fd] = mask or select.POLLHUP
        poller = select.poll()
        for fd, mask in interest.items():
            poller.register(fd, mask)
        return poller

    def _client_frame(self, kind: bytes, payload: bytes) -> None:
        if kind == b"i":
            if self._input_target() is not None and not self.input_eof:
                self.pending_input += payload
                self._write_input()
        elif kind == b"r" and self.master is not None and len(payload) == 4:
            rows, cols = struct.unpack("!HH", payload)
            with contextlib.suppress(OSError):
                console.set_size(self.master, rows, cols)
        elif kind == b"e" and not self.spec.tty:
            self.input_eof = True

    def _write_input(self) -> None:
        target = self._input_target()
        if target is None or not self.pending_input:
            return
        # A write to a pipe whose reader is gone raises SIGPIPE: blocked
        # around the write and consumed, so it is not forwarded to the workload.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        try:
            written = os.write(target, self.pending_input)
            del self.pending_input[:written]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE/EIO: nobody reads the input any more
            self.pending_input.clear()
            if target == self.stdin_w:
                os.close(target)
                self.stdin_w = None
        finally:
            if signal.SIGPIPE in signal.sigpending():
                signal.sigtimedwait({signal.SIGPIPE}, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _noop(signum: int, frame: object) -> None:
    """The wake-up fd does the work; the handler only has to exist."""


def run_monitor(spec: LaunchSpec, sock: socket.socket) -> NoReturn:
    """Entry point in the forked monitor process. Never returns."""
    code = 255
    try:
        code = Monitor(spec, sock).run()
    except BaseException as e:
        _send_event(sock, {"event": "error", "message": f"monitor failed: {e!r}"})
    finally:
        os._exit(code & 0xFF)
