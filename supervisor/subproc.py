"""Helper commands the daemon runs itself (nft), safe beside its Reaper.

The daemon is a subreaper whose Reaper waits for any child (supervisor/daemon/
reaper.py). A plain subprocess.run would race with it: a child reaped by the
Reaper first makes subprocess report exit status 0 for a command that failed.
run_helper registers the child under HELPERS_LOCK before the Reaper can see
it; the Reaper leaves registered children to subprocess.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence

HELPERS_LOCK = threading.Lock()
HELPERS: set[int] = set()


def run_helper(
    args: Sequence[str], *, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(args, input=..., capture_output=True, text=True) for a
    command the daemon runs itself, safe beside the Reaper."""
    with HELPERS_LOCK:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        HELPERS.add(proc.pid)
    try:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    finally:
        with HELPERS_LOCK:
            HELPERS.discard(proc.pid)
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)
