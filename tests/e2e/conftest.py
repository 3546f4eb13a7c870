"""End-to-end fixtures: the real daemon as a subprocess, driven only through
the real CLI, each test with its own state dir, socket, metrics port and
cgroup parent, all removed afterwards (also when the test fails)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")

pytestmark = [pytest.mark.e2e]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (namespaces, cgroups, mounts)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    _require_root()
    dest = tmp_path_factory.mktemp("rootfs") / "busybox"
    subprocess.run(
        [sys.executable, "-m", "supervisor", "rootfs", "busybox", str(dest)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return str(dest)


def cgroup_dirs(parent: str) -> list[Path]:
    """Every directory of this cgroup parent in every mounted hierarchy."""
    out = []
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        out.append(CGROUP_ROOT / parent)
    else:
        for h in sorted(CGROUP_ROOT.iterdir()):
            if h.is_dir() and not h.is_symlink():
                out.append(h / parent)
    return [d for d in out if d.exists()]


def remove_cgroup_tree(parent: str) -> None:
    """Kill whatever the test left in its own cgroup parent, then rmdir it,
    deepest first. Touches nothing outside `parent`."""
    for top in cgroup_dirs(parent):
        kill = top / "cgroup.kill"
        if kill.exists():
            with contextlib.suppress(OSError):
                kill.write_text("1")
        for d in [
            *sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)),
            top,
        ]:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@dataclass
class Daemon:
    tmp: Path
    rootfs: str
    socket: str
    state_dir: str
    metrics_addr: str
    cgroup_parent: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.tmp / "daemon.log"

    def start(self, config: str | None = None, extra: list[str] | None = None) -> None:
        args = [sys.executable, "-m", "supervisor", "daemon"]
        if config:
            args += ["--config", config]
        args += [
            "--state-dir", self.state_dir,
            "--socket", self.socket,
            "--metrics-addr", self.metrics_addr,
            "--cgroup-parent", self.cgroup_parent,
            *(extra or []),
        ]  # fmt: skip
        logf = open(self.log_path, "ab")  # noqa: SIM115 - kept by the Popen
        self.proc = subprocess.Popen(args, stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            r = self.cli("version", check=False)
            if r.returncode == 0 and "daemon" in r.stdout:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not answer within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"nsvisor {' '.join(args)} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--socket", self.socket, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def inspect(self, name: str) -> dict[str, Any]:
        data = json.loads(self.cli("inspect", name).stdout)
        assert isinstance(data, list)
        return dict(data[0])

    def wait_for(self, name: str, pred: Any, timeout: float = 60, what: str = "") -> dict[str, Any]:
        """Poll inspect until pred(info) holds (state changes are the event;
        inspect is cheap)."""
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.inspect(name)
            if pred(info):
                return info
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what or pred}: {json.dumps(info, indent=1)}\n{self.log()}"
        )

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        """Remove every container, stop the daemon, remove the cgroup tree:
        each step runs even if the one before failed."""
        try:
            if self.proc and self.proc.poll() is None:
                r = self.cli("ps", "-a", "--format", "json", check=False, timeout=60)
                if r.returncode == 0:
                    names = [c["name"] for c in json.loads(r.stdout)]
                    if names:
                        self.cli("rm", "-f", *names, check=False, timeout=60)
        finally:
            try:
                self.stop_daemon()
            finally:
                remove_cgroup_tree(self.cgroup_parent)


@pytest.fixture
def daemon(tmp_path: Path, rootfs: str) -> Iterator[Daemon]:
    _require_root()
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    d = Daemon(
        tmp=tmp_path,
        rootfs=rootfs,
        socket=str(tmp_path / "nsvisor.sock"),
        state_dir=str(tmp_path / "state"),
        metrics_addr=f"127.0.0.1:{free_port()}",
        cgroup_parent=f"nsvisor-test-{tag}",
    )
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def running_daemon(daemon: Daemon) -> Daemon:
    daemon.start()
    return daemon
