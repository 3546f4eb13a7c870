"""Interactive use: `run -it` gives the command a terminal of the container's
own devpts, kept by the container's monitor; Ctrl-C and window resizes
reach it; Ctrl-P Ctrl-Q detaches without stopping it; `attach` comes back,
also after a daemon restart, with several clients at once; `run -i`
forwards stdin and its EOF.

Each test owns the master side of a pty (pty.fork) the CLI runs on, as a
user's terminal emulator would."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import until

pytestmark = [pytest.mark.e2e]

CTRL_C, CTRL_P, CTRL_Q = b"\x03", b"\x10", b"\x11"


@dataclass
class Terminal:
    """The CLI running on a pty whose master the test holds."""

    pid: int
    fd: int
    buf: bytearray = field(default_factory=bytearray)
    status: int | None = None

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        """Read until needle appears after what was consumed; returns the text
        up to and including it, and consumes it."""
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in {bytes(self.buf)!r}")
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the CLI exited and closed the slave
                    data = b""
                if not data:
                    raise AssertionError(f"EOF before {needle!r} in {bytes(self.buf)!r}")
                self.buf += data
        end = self.buf.index(needle) + len(needle)
        text = bytes(self.buf[:end])
        del self.buf[:end]
        return text

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, rows: int, cols: int) -> None:
        # The terminal emulator's part: set the size, and the kernel signals
        # the foreground process group (the CLI) with SIGWINCH.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not exit; output {bytes(self.buf)!r}")
            # Drain the pty so the CLI never blocks on a full terminal.
            if select.select([self.fd], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    self.buf += os.read(self.fd, 65536)
        return self.status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextlib.contextmanager
def terminal(d: Daemon, *args: str, rows: int = 30, cols: int = 100) -> Iterator[Terminal]:
    argv = [sys.executable, "-m", "supervisor", "--socket", d.socket, *args]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    term = Terminal(pid, fd)
    try:
        yield term
    finally:
        term.close()


PROMPT = b"# "


def sh(t: Terminal, command: bytes) -> bytes:
    """Type a command line; its output, up to a marker only the shell's
    arithmetic produces (the echo of the typed line does not match it)."""
    t.type(command + b"; echo END-$((6*7))\r")
    return t.read_until(b"END-42")


def test_run_it_shell_tty_ctrl_c_resize_and_exit_code(running_daemon: Daemon) -> None:
    """run -it --rm ... sh: /dev/pts/0 of the container's devpts, the CLI's
    window size, Ctrl-C interrupts the running `sleep` and not the shell,
    job control is on, a resize follows, `exit 3` is the CLI's exit code and
    --rm removes the container."""
    d = running_daemon
    with terminal(d, "run", "-it", "--rm", "--name", "itbox", d.rootfs, "--", "sh") as t:
        t.read_until(PROMPT)
        out = sh(t, b"tty; stty size; ls -l /dev/console | cut -c1; set -o | grep monitor")
        assert b"/dev/pts/0\r\n" in out and b"30 100\r\n" in out, out
        assert b"\r\nc\r\n" in out, out  # /dev/console is the pty (a char device)
        assert b"monitor" in out and b"on" in out.split(b"monitor")[-1], out  # job control
        t.type(b"sleep 1000\r")
        until(lambda: b"sleep" in _ps(d, "itbox"), 30, "the sleep")
        t.type(CTRL_C)
        until(lambda: b"sleep" not in _ps(d, "itbox"), 30, "the sleep interrupted")
        assert b"alive 2\r\n" in sh(t, b"echo alive $$")  # the same shell, pid 2
        t.resize(40, 120)
        os.kill(t.pid, signal.SIGWINCH)  # a terminal emulator's resize signals the CLI
        until(lambda: _stty_size(t) == b"40 120", 30, "the new size inside")
        t.type(b"exit 3\r")
        assert t.wait() == 3
    until(lambda: "itbox" not in d.cli("ps", "-a").stdout, 30, "--rm removed it")


def _ps(d: Daemon, name: str) -> bytes:
    r = d.cli("exec", name, "--", "ps", "-o", "comm", check=False)
    return r.stdout.encode()


def _stty_size(t: Terminal) -> bytes:
    out = sh(t, b"stty size")
    lines = [line.strip() for line in out.split(b"\n")]
    return next((line for line in lines if line and line[0:1].isdigit()), b"")


def test_detach_reattach_several_clients_and_daemon_restart(running_daemon: Daemon) -> None:
    """run -d -it keeps the pty in the monitor; Ctrl-P Ctrl-Q detaches an
    attach session without stopping the container; two clients see the
    same output; the terminal survives a daemon restart; the output also
    reaches the log file; `exit` ends attach with the container's code."""
    d = running_daemon
    assert d.cli("run", "-d", "-it", "--name", "box", d.rootfs, "--", "sh").stdout == "box\n"
    d.wait_for("box", lambda i: i["state"] == "running")
    with terminal(d, "attach", "box") as t:
        t.read_until(PROMPT)
        t.type(b"echo one-$((1+1))\r")
        t.read_until(b"one-2\r\n")
        t.type(CTRL_P + CTRL_Q)
        t.read_until(b"detached")
        assert t.wait() == 0
    assert d.inspect("box")["state"] == "running"

    d.stop_daemon()  # live restore: the monitor, and so the terminal, stays
    d.start()
    d.wait_for("box", lambda i: i["state"] == "running")

    with terminal(d, "attach", "box") as a, terminal(d, "attach", "box") as b:
        a.read_until(b"one-2")  # the replay of the screen, then live
        b.read_until(b"one-2")
        time.sleep(0.5)  # both connected (the replay proves the connection)
        a.type(b"echo two-$((2+1))\r")
        a.read_until(b"two-3\r\n")
        b.read_until(b"two-3\r\n")
        b.type(CTRL_P + b"x")  # not the detach sequence: both bytes go to the shell
        b.type(b"\x15echo still-$((3+1))\r")  # ^U clears the line first
        b.read_until(b"still-4\r\n")
        b.type(CTRL_P + CTRL_Q)
        b.read_until(b"detached")
        assert b.wait() == 0
        a.type(b"exit 4\r")
        assert a.wait() == 4
    info = d.wait_for("box", lambda i: i["state"] == "exited")
    assert info["exit_code"] == 4
    logs = d.cli("logs", "box").stdout
    assert "one-2" in logs and "two-3" in logs and "still-4" in logs


def test_run_i_forwards_stdin_and_its_eof(running_daemon: Daemon) -> None:
    """echo hi | run -i --rm ... cat prints hi and exits 0; stdout and stderr
    stay apart; without -i the command's stdin is empty."""
    d = running_daemon
    r = d.cli("run", "-i", "--rm", d.rootfs, "--", "cat", input="hi\n")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    r = d.cli(
        "run", "-i", "--rm", d.rootfs, "--", "sh", "-c", "wc -l; echo err >&2; exit 5",
        input="a\nb\nc\n", check=False,
    )  # fmt: skip
    assert (r.returncode, r.stdout.strip(), r.stderr) == (5, "3", "err\n")
    big = "".join(f"line {i}\n" for i in range(20000))  # more than any pipe buffer
    r = d.cli("run", "-i", "--rm", d.rootfs, "--", "sh", "-c", "wc -c", input=big)
    assert r.stdout.strip() == str(len(big))
    r = d.cli("run", "--rm", d.rootfs, "--", "cat", input="ignored\n")
    assert (r.returncode, r.stdout) == (0, "")


def test_attach_errors(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli("attach", "nosuch", check=False)
    assert r.returncode == 1 and "no such container" in r.stderr
    d.cli("run", "-d", "--name", "done", d.rootfs, "--", "true")
    d.wait_for("done", lambda i: i["state"] == "exited")
    r = d.cli("attach", "done", check=False)
    assert r.returncode == 2 and "not running" in r.stderr


def test_run_i_proxies_signals_and_a_third_sigint_detaches(running_daemon: Daemon) -> None:
    """run -i without -t (Docker's sig-proxy): SIGINT/SIGTERM sent to the
    CLI reach the command; a command that ignores SIGINT is left running
    when a third one detaches the CLI."""
    d = running_daemon
    p = d.popen(
        "run", "-i", "--rm", d.rootfs, "--", "sh", "-c",
        'trap "echo got-int; exit 7" INT; echo ready; while true; do sleep 0.1; done',
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 7
        assert p.stdout.read() == "got-int\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    p = d.popen(
        "run", "-i", "--name", "stubborn", d.rootfs, "--", "sh", "-c",
        'trap "" INT; echo ready; while true; do sleep 0.1; done',
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        def kills() -> int:
            return d.log().count('"event": "container.kill"')

        for i in range(2):  # each one forwarded before the next is sent (no coalescing)
            before = kills()
            p.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 60
            while kills() == before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert kills() == before + 1, f"SIGINT {i + 1} was not forwarded"
        p.send_signal(signal.SIGINT)  # the third
        assert p.wait(timeout=60) == 0
        assert p.stderr is not None and "detached" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert d.inspect("stubborn")["state"] == "running"
