"""`nsvisor exec`: a process inside a running container, in all its
namespaces and its cgroup, with its capabilities, no_new_privs and rootfs
view; its exit code is the CLI's; nothing is left a zombie."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import cgroup_procs, ppid, until

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def box(running_daemon: Daemon) -> Daemon:
    d = running_daemon
    d.cli("run", "-d", "--name", "box", "--hostname", "boxhost", d.rootfs, "--", "sleep", "1000")
    d.wait_for("box", lambda i: i["state"] == "running")
    return d


def test_exit_codes_stdout_and_stderr(box: Daemon) -> None:
    d = box
    r = d.cli("exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert d.cli("exec", "box", "--", "true").returncode == 0
    r = d.cli("exec", "box", "--", "no-such-command", check=False)
    assert r.returncode == 127 and "no-such-command" in r.stderr
    r = d.cli("exec", "box", "--", "/etc/passwd", check=False)
    assert r.returncode == 126
    r = d.cli("exec", "box", "--", "sh", "-c", "kill -9 $$", check=False)
    assert r.returncode == 137


def test_same_namespaces_rootfs_capabilities_and_no_new_privs(box: Daemon) -> None:
    """The exec'd process sees what the workload (pid 2, under the monitor)
    sees: hostname, pid namespace, filesystem, capability sets."""
    d = box
    assert d.cli("exec", "box", "--", "hostname").stdout == "boxhost\n"
    ps = d.cli("exec", "box", "--", "ps", "-o", "pid,comm").stdout.split()
    assert ps[:6] == ["PID", "COMMAND", "1", "nsvisor-monitor", "2", "sleep"], ps
    status = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/{}/status"
    mine = d.cli("exec", "box", "--", "sh", "-c", status.format("self")).stdout
    workload = d.cli("exec", "box", "--", "sh", "-c", status.format("2")).stdout
    assert mine == workload and "NoNewPrivs:\t1" in mine, (mine, workload)
    # The rootfs view: the container's /etc/hostname-less busybox tree, not the host's /.
    assert (
        d.cli("exec", "box", "--", "ls", "/").stdout.split()
        == d.cli("exec", "box", "--", "sh", "-c", "ls /proc/2/root/").stdout.split()
    )
    root_ino = os.stat(Path(d.rootfs) / "bin" / "busybox").st_ino
    assert d.cli("exec", "box", "--", "stat", "-c", "%i", "/bin/busybox").stdout.strip() == str(
        root_ino
    )


def test_env_user_and_workdir(box: Daemon) -> None:
    d = box
    r = d.cli(
        "exec", "-e", "FOO=bar", "-u", "1000:1000", "-w", "/tmp", "box", "--",
        "sh", "-c", 'echo "$FOO $(id -u):$(id -g) $(pwd)"; grep CapEff /proc/self/status',
    )  # fmt: skip
    first, cap = r.stdout.splitlines()
    assert first == "bar 1000:1000 /tmp"
    assert cap.split()[1] == "0000000000000000"  # no capabilities as a non-root user
    r = d.cli("exec", "-u", "nobody", "box", "--", "id", "-un")
    assert r.stdout.strip() == "nobody"
    r = d.cli("exec", "-u", "no-such-user", "box", "--", "true", check=False)
    assert r.returncode == 2 and "no-such-user" in r.stderr


def test_the_exec_process_is_in_the_containers_cgroup_and_gets_stdin(box: Daemon) -> None:
    d = box
    (workload,) = cgroup_procs(d, "box")
    p = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", d.socket, "exec", "-i", "box", "--",
         "sh", "-c", "read line; echo got $line; exit 4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        procs = until(lambda: cgroup_procs(d, "box") - {workload}, 30, "the exec'd process")
        (pid,) = procs

        def argv0() -> bytes:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                return b""

        # It joins the cgroup before it execs: wait for the exec, not a sleep.
        until(lambda: argv0() == b"sh", 30, "the process in the cgroup to exec sh")
        out, err = p.communicate("hello\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert (p.returncode, out) == (4, "got hello\n"), err


def test_exec_processes_are_reaped_never_left_as_zombies(box: Daemon) -> None:
    """The exec'd process is reaped by its shim, which the daemon reaps; a
    background child it leaves behind is re-parented to the container's
    monitor (PID 1 of its pid namespace), which reaps it."""
    d = box
    monitor = d.inspect("box")["pid"]
    assert d.proc is not None
    daemon_pid = d.proc.pid
    r = d.cli("exec", "box", "--", "sh", "-c", "sleep 1 & echo $!")
    assert r.returncode == 0
    (workload,) = until(lambda: len(cgroup_procs(d, "box")) == 1 and cgroup_procs(d, "box"))

    def zombies() -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z" and int(fields[1]) in (monitor, daemon_pid):
                out.append(int(entry.name))
        return out

    until(lambda: not zombies(), 10, "no zombie under the monitor or the daemon")
    assert cgroup_procs(d, "box") == {workload}
    assert ppid(workload) == monitor


def _read_until(fd: int, needle: bytes, buf: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} in {bytes(buf)!r}")
        if select.select([fd], [], [], 0.2)[0]:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    assert needle in buf, bytes(buf)


def test_tty_with_resize(box: Daemon) -> None:
    """exec -it: the command gets a terminal (of the container's devpts: `tty`
    names it) of the CLI's size; a SIGWINCH
    of the CLI resizes it; the exit code comes back.

    The resize travels beside the typed input, so the command reports its
    size after every line until it sees the new one (waiting for the resize
    itself, not for an ordering between the two)."""
    d = box
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    script = (
        "test -t 0 && echo is-a-tty; echo tty=$(tty) owner=$(stat -c %u $(tty)); echo size $(stty size);"
        ' while read x; do s=$(stty size); echo size $s; [ "$s" = "40 120" ] && break; done;'
        " echo got $x; exit 5"
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--socket", d.socket, "exec", "-i", "-t", "box", "--",
         "sh", "-c", script],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    buf = bytearray()
    try:
        _read_until(master, b"size 30 100", buf)
        assert b"is-a-tty" in buf
        # A pty of the container's own devpts: its path exists inside.
        assert re.search(rb"tty=/dev/pts/\d+ owner=0", buf), bytes(buf)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        p.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 30
        while b"size 40 120" not in buf:
            assert time.monotonic() < deadline, bytes(buf)
            reports = buf.count(b"size ")
            os.write(master, b"hello\r")  # one line, then wait for its report
            while buf.count(b"size ") == reports or not buf.endswith(b"\n"):
                assert time.monotonic() < deadline, bytes(buf)
                if select.select([master], [], [], 0.2)[0]:
                    buf += os.read(master, 4096)
        _read_until(master, b"got hello", buf)
        assert p.wait(timeout=30) == 5
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
