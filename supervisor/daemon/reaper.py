"""The one place in the daemon that reaps children (STYLE habit 6).

Every container monitor is the daemon's child: the zygote clones it with
CLONE_PARENT (the daemon is also a PR_SET_CHILD_SUBREAPER, for what the
monitors leave behind). Container tasks wait on a
monitor's pidfd (readable once it has exited) and read the monitor's exit
file; they ask the Reaper only for the raw wait status, as a fallback for a
monitor that died without writing one (SIGKILL, OOM). Nothing else in the
daemon calls wait*(), and the daemon never uses trio.Process, whose own
waitid() would race with this one.

The one exception is a helper command the daemon runs itself (nft): it goes
through `supervisor.subproc.run_helper`, which registers the child under a lock before the
Reaper can look at it, and the Reaper leaves such a child to subprocess.
(A plain subprocess.run would race: a Reaper that reaped its child first
would make subprocess report exit status 0 for a command that failed.)
"""

from __future__ import annotations

import os
import signal

import structlog
import trio

from supervisor.subproc import HELPERS, HELPERS_LOCK

log = structlog.get_logger("nsvisor.reaper")


def _code(res: os.waitid_result) -> int:
    return res.si_status if res.si_code == os.CLD_EXITED else 128 + res.si_status


class Reaper:
    def __init__(self) -> None:
        self._expected: set[int] = set()
        self._statuses: dict[int, int] = {}

    def expect(self, pid: int) -> None:
        """Keep the status of this pid when it is reaped (a monitor we started)."""
        self._expected.add(pid)

    def reap_all(self) -> None:
        # Our monitors first, each by pid (ECHILD: adopted, not our child).
        for pid in list(self._expected):
            try:
                res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                continue
            if res is not None and res.si_pid:
                self._statuses[pid] = _code(res)
        # Then orphans re-parented to us, looked at before they are reaped
        # (WNOWAIT) so that a helper command's child is left to its owner.
        while True:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if res is None or res.si_pid == 0:
                return
            with HELPERS_LOCK:
                if res.si_pid in HELPERS:
                    return  # subprocess waits for it; other orphans go next SIGCHLD
                try:
                    os.waitid(os.P_PID, res.si_pid, os.WEXITED | os.WNOHANG)
                except ChildProcessError:
                    continue
            if res.si_pid in self._expected:
                self._statuses[res.si_pid] = _code(res)
            else:
                log.debug("reaped", pid=res.si_pid, exit_code=_code(res))

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
