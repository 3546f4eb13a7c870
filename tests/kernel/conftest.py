"""Kernel-tier fixtures: a busybox rootfs built once per session, the test
process as a child subreaper (monitors are re-parented to it), and a launcher
that kills and reaps by pid whatever a test started, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.runtime import linux
from supervisor.runtime.rootfs import build_busybox_rootfs
from supervisor.runtime.spec import LaunchSpec
from supervisor.runtime.zygote import Launched, LaunchError, launch_sync

TIMEOUT_S = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="kernel tests need root (namespaces, mounts, cgroups)")
        for item in items:
            if "kernel" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    dest = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    build_busybox_rootfs(dest)
    return dest


@pytest.fixture(scope="session")
def subreaper() -> Iterator[None]:
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    yield
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 0)


def wait_readable(fd: int, timeout_s: float = TIMEOUT_S) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def wait_until(predicate: Callable[[], Any], timeout_s: float = TIMEOUT_S, what: str = "") -> Any:
    """Poll a condition with a deadline (for states that have no fd to wait on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.01)


@dataclass
class Container:
    spec: LaunchSpec
    launched: Launched
    status: int | None = None
    _exit: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.launched.pid

    def signal(self, sig: int) -> None:
        signal.pidfd_send_signal(self.launched.pidfd, sig)

    def wait(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """Wait on the monitor's pidfd, reap it, return the exit file."""
        self.reap(timeout_s)
        if self._exit is None:
            with open(self.spec.exit_path) as f:
                self._exit = json.load(f)
        return self._exit

    def reap(self, timeout_s: float = TIMEOUT_S) -> None:
        if self.status is None:
            assert wait_readable(self.launched.pidfd, timeout_s), "monitor did not exit in time"
            result = os.waitid(os.P_PIDFD, self.launched.pidfd, os.WEXITED)
            assert result is not None
            self.status = result.si_status
            os.close(self.launched.pidfd)

    def logs(self) -> list[dict[str, str]]:
        try:
            with open(self.spec.log_path) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def output(self, stream: str = "stdout") -> str:
        return "".join(e["log"] for e in self.logs() if e["stream"] == stream)

    def wait_output(self, text: str, timeout_s: float = TIMEOUT_S) -> None:
        wait_until(lambda: text in self.output(), timeout_s, f"{text!r} in the log")

    def kill(self) -> None:
        """Kill and reap (teardown; PID 1 dying takes the pid namespace along)."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGKILL)
            with contextlib.suppress(AssertionError, ChildProcessError):
                self.reap(10)


@dataclass
class Run:
    exit: dict[str, Any]
    stdout: str
    stderr: str
    container: Container


class Launcher:
    def __init__(self, rootfs: str, tmp: Path) -> None:
        self.rootfs = rootfs
        self.tmp = tmp
        self.count = 0
        self.started: list[Container] = []
        self.failed_pids: list[int] = []

    def spec(self, argv: list[str] | tuple[str, ...], **kw: Any) -> LaunchSpec:
        self.count += 1
        name = kw.pop("name", f"t{self.count}")
        base = LaunchSpec(
            name=name,
            rootfs=self.rootfs,
            argv=tuple(argv),
            log_path=str(self.tmp / f"{name}.log"),
            exit_path=str(self.tmp / f"{name}.exit"),
            teardown_grace_s=kw.pop("teardown_grace_s", 2.0),
        )
        return replace(base, **kw)

    def start(self, argv: list[str] | tuple[str, ...], **kw: Any) -> Container:
        spec = self.spec(argv, **kw)
        try:
            launched = launch_sync(spec, timeout_s=TIMEOUT_S)
        except LaunchError as e:
            if e.pid:
                self.failed_pids.append(e.pid)
            raise
        c = Container(spec, launched)
        self.started.append(c)
        return c

    def run(self, script: str, **kw: Any) -> Run:
        c = self.start(["sh", "-c", script], **kw)
        record = c.wait()
        return Run(record, c.output("stdout"), c.output("stderr"), c)

    def cleanup(self) -> None:
        for c in self.started:
            c.kill()
        for pid in self.failed_pids:
            # The monitor of a failed launch exits by itself; reap it by pid.
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                pidfd = os.pidfd_open(pid)
                try:
                    if not wait_readable(pidfd, 10):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
                finally:
                    os.close(pidfd)


@pytest.fixture
def launcher(rootfs: str, tmp_path: Path, subreaper: None) -> Iterator[Launcher]:
    lch = Launcher(rootfs, tmp_path)
    try:
        yield lch
    finally:
        lch.cleanup()
