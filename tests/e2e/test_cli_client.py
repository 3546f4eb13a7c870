"""The C front end of the CLI (supervisor/cliclient.c, installed by
deploy/setup.sh as .venv/bin/nsvisor) and the daemon's command server
(supervisor/cliserver.py): a command runs in a worker forked from the
server with the client's stdio, argv, working directory, environment and
umask; its exit code is the client's; signals sent to the client reach the
command; without a server the client runs the Python CLI itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import ppid

CLIENT = Path(sys.executable).with_name("nsvisor")

pytestmark = pytest.mark.skipif(
    not CLIENT.exists() or CLIENT.read_bytes()[:4] != b"\x7fELF",
    reason="the C client is not installed as .venv/bin/nsvisor (deploy/setup.sh builds it)",
)


def client(d: Daemon, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(CLIENT), "--socket", d.socket, *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def wait_for_server(d: Daemon) -> None:
    """The server is its own Python process, started with the daemon: it
    listens a moment after the daemon answers (meanwhile the client runs
    the Python CLI itself)."""
    path = Path(f"{d.socket}.cli")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.05)
    assert path.exists(), d.log()


def start_talker(d: Daemon) -> None:
    """A container that prints "tick" ten times a second, once the server listens."""
    wait_for_server(d)
    d.cli("run", "-d", "--name", "talker", d.rootfs, "--", "sh", "-c",
          "while true; do echo tick; sleep 0.1; done")  # fmt: skip


def follow_talker(d: Daemon) -> subprocess.Popen[str]:
    """`logs -f talker` through the C client."""
    return subprocess.Popen(
        [str(CLIENT), "--socket", d.socket, "logs", "-f", "talker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _server_pids(d: Daemon) -> list[int]:
    """The daemon's command server and its workers (by their command line)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervisor.cliserver" in cmdline and f"{d.socket}.cli".encode() in cmdline:
            out.append(int(entry))
    return out


def test_a_command_runs_in_the_server_with_the_clients_stdio_cwd_env_and_exit_code(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    wait_for_server(d)
    assert _server_pids(d)
    r = client(
        d, "run", "--rm", "-e", "FROM_ENV", d.rootfs, "--",
        "sh", "-c", 'echo "out $FROM_ENV"; echo err >&2; exit 7',
        env={**os.environ, "FROM_ENV": "env-value"},  # -e NAME takes the client's value
    )  # fmt: skip
    assert r.returncode == 7, r
    assert r.stdout == "out env-value\n"
    assert r.stderr == "err\n"
    # A relative path is the client's: cp writes into the client's directory.
    d.cli("run", "-d", "--name", "src", d.rootfs, "--", "sleep", "1000")
    r = client(d, "cp", "src:/etc/passwd", "copied", cwd=tmp_path)
    assert r.returncode == 0, r
    assert (tmp_path / "copied").read_text() == (Path(d.rootfs) / "etc/passwd").read_text()


def test_stdin_reaches_the_command(running_daemon: Daemon) -> None:
    wait_for_server(running_daemon)
    r = client(running_daemon, "run", "--rm", "-i", running_daemon.rootfs, "--", "cat",
               input="through the server\n")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "through the server\n"), r


def test_usage_errors_and_help_keep_the_python_cli_behaviour(running_daemon: Daemon) -> None:
    wait_for_server(running_daemon)
    r = client(running_daemon, "no-such-command")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = client(running_daemon, "run")  # a known command, bad arguments: in the server
    assert r.returncode == 2 and "usage: nsvisor run" in r.stderr
    r = client(running_daemon, "inspect", "no-such-container")
    assert r.returncode != 0 and "no-such-container" in r.stderr


def test_sigint_to_the_client_reaches_the_command(running_daemon: Daemon) -> None:
    """logs -f runs until interrupted: ^C (SIGINT to the client) ends the
    command in the worker, and the client exits with its code."""
    d = running_daemon
    start_talker(d)
    p = follow_talker(d)
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "tick\n"
        # Still the C client itself: it did not fall back to exec'ing Python.
        assert os.readlink(f"/proc/{p.pid}/exe") == str(CLIENT)
        workers_before = set(_server_pids(d))
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert code == 130, (code, p.stderr.read() if p.stderr else "")
    # The worker that ran logs -f is gone (the server forked a new one to wait).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(workers_before - set(_server_pids(d))) == 0:
        time.sleep(0.05)
    assert workers_before - set(_server_pids(d))


def test_a_killed_client_ends_its_command(running_daemon: Daemon) -> None:
    """SIGKILL of the client (nothing to forward): the worker sees the
    connection close and its command ends, as with a terminal hang-up."""
    d = running_daemon
    assert d.proc is not None
    start_talker(d)
    idle = {pid for pid in _server_pids(d) if ppid(pid) != d.proc.pid}  # the waiting worker
    p = follow_talker(d)
    try:
        assert p.stdout is not None and p.stdout.readline() == "tick\n"
        busy = set(_server_pids(d)) & idle  # the worker that accepted: one of the idle ones
        assert busy
        p.kill()
        p.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and busy & set(_server_pids(d)):
            time.sleep(0.05)
        assert not busy & set(_server_pids(d)), "the worker outlived its client"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_without_a_server_the_client_runs_the_python_cli(daemon: Daemon) -> None:
    """No daemon (so no command server): the same command, the same message
    and exit code as the Python CLI gives."""
    r = client(daemon, "ps")
    assert r.returncode == 1
    assert "cannot connect to the nsvisor daemon" in r.stderr


def test_the_server_goes_with_the_daemon(daemon: Daemon) -> None:
    daemon.start()
    wait_for_server(daemon)
    assert _server_pids(daemon)
    daemon.stop_daemon()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _server_pids(daemon):
        time.sleep(0.05)
    assert not _server_pids(daemon)
    assert not Path(f"{daemon.socket}.cli").exists()
