"""The daemon's one reaper beside the daemon's own helper commands (nft): real
child processes, no root needed."""

from __future__ import annotations

import os
import threading
import time

from supervisor.daemon.reaper import Reaper
from supervisor.subproc import run_helper


def test_a_helper_commands_exit_status_survives_a_busy_reaper() -> None:
    """While the Reaper drains children as fast as it can, a failing helper
    command still reports its own status (a reaper that took it first would
    make subprocess report 0)."""
    reaper = Reaper()
    stop = threading.Event()

    def reap_loop() -> None:
        while not stop.is_set():
            reaper.reap_all()

    t = threading.Thread(target=reap_loop)
    t.start()
    try:
        codes = [run_helper(["sh", "-c", "exit 3"]).returncode for _ in range(20)]
    finally:
        stop.set()
        t.join()
    assert codes == [3] * 20


def test_expected_children_keep_their_status_and_others_are_reaped() -> None:
    reaper = Reaper()
    mine = os.fork()
    if mine == 0:
        os._exit(7)
    stray = os.fork()
    if stray == 0:
        os._exit(9)
    reaper.expect(mine)
    deadline = time.monotonic() + 30
    code = None
    while code is None and time.monotonic() < deadline:
        code = reaper.collect(mine) if _exited(mine) else None
        time.sleep(0.01)
    assert code == 7
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{stray}") and time.monotonic() < deadline:
        reaper.reap_all()
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{stray}")  # reaped, not left a zombie


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
