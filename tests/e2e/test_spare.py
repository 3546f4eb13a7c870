"""The zygote's spare first process (supervisor.runtime.zygote._Spare): one
is kept cloned ahead of need, idle in a pid namespace of its own, as the
daemon's child; a start uses it and the next one is cloned afterwards; a
spare that was killed is replaced by a clone on the spot, and the start
works all the same."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.e2e.conftest import Daemon


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def spares(d: Daemon) -> list[int]:
    """The daemon's children in a pid namespace of their own that are still
    Python (monitors are nsvisor-monitor by then)."""
    assert d.proc is not None
    ours = os.stat("/proc/self/ns/pid").st_ino
    out = []
    for kid in _children(d.proc.pid):
        try:
            exe = os.readlink(f"/proc/{kid}/exe")
            ns = os.stat(f"/proc/{kid}/ns/pid").st_ino
        except OSError:
            continue
        if "python" in os.path.basename(exe) and ns != ours:
            out.append(kid)
    return out


def wait_spare(d: Daemon, not_in: frozenset[int] = frozenset()) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [p for p in spares(d) if p not in not_in]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no spare first process:\n{d.log()}")


def test_a_start_takes_the_spare_and_a_killed_spare_is_replaced(running_daemon: Daemon) -> None:
    d = running_daemon
    first = wait_spare(d)
    d.cli("run", "-d", "--name", "a", d.rootfs, "--", "sleep", "1000")
    # The spare became the container's monitor (same pid), a new one waits.
    assert d.inspect("a")["pid"] == first
    second = wait_spare(d, frozenset({first}))
    os.kill(second, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and second in spares(d):
        time.sleep(0.05)
    # Gone: this start clones on the spot, and works as ever.
    d.cli("run", "-d", "--name", "b", d.rootfs, "--", "sleep", "1000")
    info = d.inspect("b")
    assert info["state"] == "running" and info["pid"] not in (first, second)
    assert d.cli("exec", "b", "cat", "/proc/1/comm").stdout == "nsvisor-monitor\n"
    wait_spare(d, frozenset({first, second}))  # and the next one is there again
