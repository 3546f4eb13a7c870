"""The one place in the daemon that reaps children (STYLE habit 6).

The daemon is a PR_SET_CHILD_SUBREAPER: every container monitor is re-parented
to it when the zygote's intermediate process exits. Container tasks wait on a
monitor's pidfd (readable once it has exited) and read the monitor's exit
file; they ask the Reaper only for the raw wait status, as a fallback for a
monitor that died without writing one (SIGKILL, OOM). Nothing else in the
daemon calls wait*(), and the daemon never uses trio.Process, whose own
waitid() would race with this one.
"""

from __future__ import annotations

import os
import signal

import structlog
import trio

log = structlog.get_logger("nsvisor.reaper")


class Reaper:
    def __init__(self) -> None:
        self._expected: set[int] = set()
        self._statuses: dict[int, int] = {}

    def expect(self, pid: int) -> None:
        """Keep the status of this pid when it is reaped (a monitor we started)."""
        self._expected.add(pid)

    def reap_all(self) -> None:
        while True:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                return
            if res is None or res.si_pid == 0:
                return
            code = res.si_status if res.si_code == os.CLD_EXITED else 128 + res.si_status
            if res.si_pid in self._expected:
                self._statuses[res.si_pid] = code
            else:
                log.debug("reaped", pid=res.si_pid, exit_code=code)

    def collect(self, pid: int) -> int | None:
        """The exit code (128+signal for a signal) of a monitor that has
        exited; None if it was not our child (an adopted container)."""
        self.reap_all()
        self._expected.discard(pid)
        return self._statuses.pop(pid, None)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            self.reap_all()
            task_status.started()
            async for _ in signals:
                self.reap_all()
