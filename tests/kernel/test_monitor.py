"""The C monitor (nsvisor-monitor) through the real binary, with a stand-in
workload: supervisor.runtime.monitor.run_monitor forks a Python function
instead of exec_workload, then execs the binary as in a container. Host pid
namespace (the monitor is a subreaper, not PID 1), no root needed.

Covers what the Python monitor's unit tests covered (log lines, partial
lines, JSON escaping, rotation, the exit record, OOM detection, the launch
events, attach fan-out and the slow-client drop) plus the exact JSON text.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from supervisor.runtime import monitor
from supervisor.runtime.monitor import CLIENT_BUFFER, frame, parse_frames, run_monitor
from supervisor.runtime.spec import LaunchSpec, Namespaces
from supervisor.runtime.zygote import Zygote, launch_sync

TIMEOUT_S = 30.0
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")

Script = Callable[[int, int, int | None, int | None], int]


def _workload(script: Script) -> Callable[..., NoReturn]:
    """exec_workload's stand-in: reports its pid, sends a pty master with
    spec.tty, "execs" (closes the exec-result pipe), runs script(stdout,
    stderr, stdin, pty slave) and exits with its return value."""

    def workload(
        spec: LaunchSpec,
        errfd: int,
        out_fd: int,
        err_fd: int,
        *,
        gate_fd: int,
        stdin_fd: int | None = None,
        console_fd: int | None = None,
    ) -> NoReturn:
        code = 99
        try:
            if os.read(gate_fd, 1) != b"G":  # as exec_workload before execve
                os._exit(125)
            os.setsid()
            os.write(errfd, f"P{os.getpid()}\n".encode())
            slave = None
            if console_fd is not None:  # as setup_console: the master goes before exec
                master, slave = os.openpty()
                socket.send_fds(socket.socket(fileno=console_fd), [b"M"], [master])
                os.close(master)
            os.close(errfd)
            code = script(out_fd, err_fd, stdin_fd, slave)
        finally:
            os._exit(code)

    return workload


@dataclass
class Run:
    pid: int
    sock: socket.socket
    spec: LaunchSpec
    status: int | None = None

    def event(self) -> dict[str, Any]:
        assert select.select([self.sock], [], [], TIMEOUT_S)[0], "no launch event"
        data = self.sock.recv(1 << 16)
        assert data.endswith(b"\n")
        event: dict[str, Any] = json.loads(data)
        return event

    def wait(self) -> int:
        pidfd = os.pidfd_open(self.pid)
        try:
            assert select.select([pidfd], [], [], TIMEOUT_S)[0], "monitor did not exit"
        finally:
            os.close(pidfd)
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        return os.waitstatus_to_exitcode(status)

    def exit_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(Path(self.spec.exit_path).read_text())
        return record

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.spec.log_path).read_text().splitlines()]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def _start(
        script: Script | None = None,
        *,
        workload: Callable[..., NoReturn] | None = None,
        **overrides: Any,
    ) -> Run:
        fields: dict[str, Any] = {
            "name": "t",
            "rootfs": "/",
            "argv": ("fake",),
            "log_path": str(tmp_path / "container.log"),
            "exit_path": str(tmp_path / "exit.json"),
            "namespaces": Namespaces(pid="host"),
            **overrides,
        }
        spec = LaunchSpec(**fields)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                assert script is not None or workload is not None
                run_monitor(spec, theirs, workload or _workload(script))  # type: ignore[arg-type]
            finally:
                os._exit(1)
        theirs.close()
        run = Run(pid, ours, spec)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        if run.status is None:
            os.kill(run.pid, signal.SIGKILL)
            os.waitpid(run.pid, 0)
        run.sock.close()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_started_event_log_lines_partials_and_exit(start: Callable[..., Run]) -> None:
    def script(out: int, err: int, _in: int | None, _con: int | None) -> int:
        _write(out, b"a\nb")
        _write(err, b"e\n")
        _write(out, b"c\n" + b"x" * 20000)
        return 7

    before = time.time()
    run = start(script)
    event = run.event()
    assert event["event"] == "started" and event["workload_pid"] > 0
    assert run.wait() == 7
    after = time.time()
    entries = run.log()
    assert [e["log"] for e in entries if e["stream"] == "stdout"] == [
        "a\n",
        "bc\n",
        "x" * 16384,
        "x" * (20000 - 16384),
    ]
    assert [e["log"] for e in entries if e["stream"] == "stderr"] == ["e\n"]
    for e in entries:
        assert TIME_RE.match(e["time"]), e["time"]
    record = run.exit_record()
    assert record == {
        "exit_code": 7,
        "signal": None,
        "oom_killed": False,
        "started_at": record["started_at"],
        "finished_at": record["finished_at"],
    }
    assert before <= event["started_at"] == record["started_at"] <= record["finished_at"] <= after
    assert oct(os.stat(run.spec.exit_path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(run.spec.log_path).st_mode & 0o777) == "0o640"


def test_log_text_is_pythons_json_of_the_replaced_utf8(start: Callable[..., Run]) -> None:
    """Byte for byte what json.dumps(chunk.decode(errors="replace")) gives:
    one U+FFFD per maximal invalid subsequence, ensure_ascii escapes."""
    tricky = (
        b'q"\\\t\x01\x1f\x7f \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xff \xe2\x82 \xed\xa0\x80'
        b" \xf4\x90\x80\x80 \xc0\xaf \xe0\x80\xaf \xf0\x9f\x98 \r\x08\x0c end\n"
    )
    cut = b"y" * (16384 - 1) + "é".encode()  # a MAX_LINE split inside a character

    def script(out: int, _err: int, _in: int | None, _con: int | None) -> int:
        _write(out, tricky + cut + b"\n")
        return 0

    run = start(script)
    run.wait()
    raw = Path(run.spec.log_path).read_text().splitlines()
    chunks = [tricky, cut[:16384], cut[16384:] + b"\n"]
    assert len(raw) == len(chunks)
    for line, chunk in zip(raw, chunks, strict=True):
        when = json.loads(line)["time"]
        want = json.dumps(
            {"log": chunk.decode(errors="replace"), "stream": "stdout", "time": when},
            separators=(",", ":"),
        )
        assert line == want


def test_rotation_before_a_line_would_pass_max_size(start: Callable[..., Run]) -> None:
    def script(out: int, _err: int, _in: int | None, _con: int | None) -> int:
        for i in range(10):
            _write(out, f"line {i}\n".encode())
        return 0

    run = start(script, log_max_size=300, log_max_files=2)
    run.wait()
    path = run.spec.log_path
    current = Path(path).read_text().splitlines()
    older = Path(path + ".1").read_text().splitlines()
    assert not Path(path + ".2").exists()
    for name in (path, path + ".1"):
        assert os.path.getsize(name) <= 300
    texts = [json.loads(line)["log"] for line in older + current]
    assert texts == [f"line {i}\n" for i in range(10 - len(texts), 10)]


@pytest.mark.parametrize("max_files", [3, 1])
def test_rotation_shifts_the_old_files(
    start: Callable[..., Run], tmp_path: Path, max_files: int
) -> None:
    """log -> log.1 -> log.2, the oldest dropped; with one file the old one
    is dropped. An empty new file takes one line without rotating."""
    log = tmp_path / "container.log"
    for i, name in enumerate(["container.log", "container.log.1", "container.log.2"]):
        (tmp_path / name).write_text(f"old{i}\n")

    def script(out: int, _err: int, _in: int | None, _con: int | None) -> int:
        _write(out, b"new\n")
        return 0

    run = start(script, log_max_size=10, log_max_files=max_files)
    run.wait()
    assert [e["log"] for e in run.log()] == ["new\n"]
    if max_files == 3:
        assert (tmp_path / "container.log.1").read_text() == "old0\n"
        assert (tmp_path / "container.log.2").read_text() == "old1\n"
    else:  # the old log is gone; the other files are not its to touch
        assert (tmp_path / "container.log.1").read_text() == "old1\n"
    assert log.exists()


def test_signal_exit_and_oom_from_the_kill_count(start: Callable[..., Run], tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n")

    def script(_out: int, _err: int, _in: int | None, _con: int | None) -> int:
        events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 3\noom_group_kill 0\n")
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    run = start(script, oom_kill_file=str(events))
    assert run.event()["event"] == "started"
    assert run.wait() == 137
    record = run.exit_record()
    assert (record["exit_code"], record["signal"], record["oom_killed"]) == (137, 9, True)


def test_no_oom_when_the_count_is_unreadable(start: Callable[..., Run], tmp_path: Path) -> None:
    def script(_out: int, _err: int, _in: int | None, _con: int | None) -> int:
        return 3

    run = start(script, oom_kill_file=str(tmp_path / "missing"))
    assert run.wait() == 3
    assert run.exit_record()["oom_killed"] is False


def test_exec_failure_is_an_error_event(start: Callable[..., Run]) -> None:
    def fail(spec: LaunchSpec, errfd: int, out: int, err: int, **_: object) -> NoReturn:
        os.write(errfd, f"P{os.getpid()}\n".encode() + b"E127 exec 'x' \"q\": \xc3\xa9 gone")
        os._exit(127)

    run = start(workload=fail)
    assert run.event() == {"event": "error", "message": "exec 'x' \"q\": é gone"}
    assert run.wait() == 127
    assert run.exit_record()["exit_code"] == 127


def test_a_workload_that_dies_before_reporting(start: Callable[..., Run]) -> None:
    def die(spec: LaunchSpec, errfd: int, out: int, err: int, **_: object) -> NoReturn:
        os._exit(125)

    run = start(workload=die)
    assert run.event() == {
        "event": "error",
        "message": "the workload died before it could report (killed during set-up?)",
    }
    assert run.wait() == 125


def test_attach_fans_out_replays_resizes_and_drops_a_slow_client(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    """With a tty: a new client first gets the output so far; every client
    gets every chunk; one that never reads is dropped once 1 MiB waits for
    it while the others go on; input and resize reach the terminal. (The
    workload writes the next 64 KiB once the fast client acknowledged the
    last: a fast client under load must not fall 1 MiB behind.)"""
    flood = 4 * CLIENT_BUFFER

    def script(_out: int, _err: int, _in: int | None, slave: int | None) -> int:
        assert slave is not None
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        _write(slave, b"ready\n")

        def wait_for(word: bytes) -> None:
            got = b""
            while word not in got:
                got += os.read(slave, 1024)

        wait_for(b"go")
        chunk = b"x" * 65536
        for _ in range(flood // len(chunk)):
            _write(slave, chunk)
            wait_for(b"n")  # the fast client has it: it never falls behind
        wait_for(b"stop")
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        _write(slave, f"size {rows} {cols}\n".encode())
        return 0

    sock_path = tmp_path / "attach.sock"
    run = start(script, tty=True, stdin=True, attach_path=str(sock_path))
    assert run.event()["event"] == "started"
    assert sock_path.stat().st_mode & 0o777 == 0o600
    deadline = time.monotonic() + TIMEOUT_S
    while not any("ready" in e["log"] for e in run.log()):
        assert time.monotonic() < deadline, "no ready line"
        time.sleep(0.01)
    fast = socket.socket(socket.AF_UNIX)
    slow = socket.socket(socket.AF_UNIX)
    try:
        fast.connect(str(sock_path))
        slow.connect(str(sock_path))
        fast.settimeout(TIMEOUT_S)
        fast.sendall(frame(b"r", struct.pack("!HH", 33, 101)) + frame(b"i", b"go\n"))
        got = bytearray()
        out = bytearray()
        xs = 0
        while xs < flood:
            data = fast.recv(1 << 20)
            assert data, "the fast client was dropped"
            got += data
            acked = xs // 65536
            for kind, payload in parse_frames(got):
                assert kind == b"1"
                xs += payload.count(b"x")
                if len(out) < 64:
                    out += payload
            for _ in range(xs // 65536 - acked):
                fast.sendall(frame(b"i", b"n\n"))
        assert out.startswith(b"ready\r\n")
        # The slow client: its buffered output, then EOF while the container runs.
        slow.settimeout(TIMEOUT_S)
        received = 0
        while data := slow.recv(1 << 20):
            received += len(data)
        assert 0 < received < flood
        assert run.status is None and os.waitpid(run.pid, os.WNOHANG) == (0, 0)
        fast.sendall(frame(b"i", b"stop\n"))
        while b"size" not in out or not out.endswith(b"\n"):
            data = fast.recv(1 << 20)
            assert data, "EOF before the size line"
            got += data
            for _, payload in parse_frames(got):
                out += payload
        assert out.rstrip().endswith(b"size 33 101")
        assert fast.recv(1 << 20) == b""  # EOF once the container is gone
    finally:
        fast.close()
        slow.close()
    assert run.wait() == 0
    assert not sock_path.exists()
    assert run.exit_record()["exit_code"] == 0


def test_stdin_pipe_input_and_end_of_input(start: Callable[..., Run], tmp_path: Path) -> None:
    """Without a tty: input frames go to the workload's stdin pipe, "e"
    closes it (the workload sees EOF)."""

    def script(out: int, _err: int, stdin: int | None, _con: int | None) -> int:
        assert stdin is not None
        data = b""
        while chunk := os.read(stdin, 65536):
            data += chunk
        _write(out, b"got %d %s\n" % (len(data), data[:5]))
        return 0

    sock_path = tmp_path / "attach.sock"
    run = start(script, stdin=True, attach_path=str(sock_path))
    assert run.event()["event"] == "started"
    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect(str(sock_path))
        payload = b"hello" + b"z" * 300_000  # beyond the input buffer: backpressure
        c.sendall(frame(b"i", payload) + frame(b"e", b""))
        c.settimeout(TIMEOUT_S)
        got = bytearray()
        frames: list[tuple[bytes, bytes]] = []
        while data := c.recv(65536):
            got += data
            frames += parse_frames(got)
        assert frames == [(b"1", b"got 300005 hello\n")]
    finally:
        c.close()
    assert run.wait() == 0


def test_a_missing_binary_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(monitor, "MONITOR_BINARY", tmp_path / "nsvisor-monitor")
    with pytest.raises(monitor.MonitorMissing, match=r"deploy/setup\.sh"):
        Zygote.spawn()
    spec = LaunchSpec(name="t", rootfs="/", argv=("x",), log_path="/l", exit_path="/e")
    with pytest.raises(monitor.MonitorMissing, match=r"deploy/setup\.sh"):
        launch_sync(spec)
