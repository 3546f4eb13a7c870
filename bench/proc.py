"""Process helpers: time a command, read a process's memory and CPU time,
remove the benchmark's own cgroup trees.

Every external command is started the same way (posix_spawn, stdio on
/dev/null, stderr kept in a file for the error message), so no contender pays
for a heavier launcher than another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
BENCH_PREFIX = "nsvisor-bench-"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark step failed; the message says which command and why."""


def _which(name: str) -> str:
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK):
            return path
    raise BenchError(f"{name} not found on PATH")


def which(name: str) -> str | None:
    try:
        return _which(name)
    except BenchError:
        return None


def time_spawn(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Seconds from posix_spawn to the end of waitpid; raises on a non-zero exit."""
    path = argv[0] if "/" in argv[0] else _which(argv[0])
    with tempfile.TemporaryFile() as err:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        t0 = time.perf_counter()
        pid = os.posix_spawn(path, list(argv), env or dict(os.environ), file_actions=actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - t0
        if status != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()[-2000:]
            raise BenchError(f"{' '.join(argv)} exited {os.waitstatus_to_exitcode(status)}: {text}")
    return elapsed


def time_fork_exec(path: str, argv: Sequence[str]) -> float:
    """The floor: os.fork + os.execv + waitpid, as the reference figures did."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execv(path, list(argv))
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise BenchError(f"fork+exec {path} exited {os.waitstatus_to_exitcode(status)}")
    return elapsed


def _kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their sharers)."""
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_kib(pid: int) -> int | None:
    return _kib(f"/proc/{pid}/status", "VmRSS:")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its exited threads included."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _check_parent(parent: str) -> None:
    # Only ever the benchmark's own trees: never anything else on the machine
    # (its agent lives in other cgroups of the same hierarchies).
    if not parent.startswith(BENCH_PREFIX) or "/" in parent or parent in ("", ".", ".."):
        raise ValueError(f"refusing to touch cgroup {parent!r}: not a benchmark parent")


def cgroup_dirs(parent: str) -> list[Path]:
    """This parent's directory in every mounted hierarchy (v2: just one)."""
    _check_parent(parent)
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        tops = [CGROUP_ROOT / parent]
    else:
        tops = [
            h / parent for h in sorted(CGROUP_ROOT.iterdir()) if h.is_dir() and not h.is_symlink()
        ]
    return [d for d in tops if d.exists()]


def remove_cgroup_tree(parent: str, timeout_s: float = 10.0) -> list[str]:
    """Kill what is left in the benchmark's own cgroup parent, then rmdir it
    deepest first. Returns what could not be removed."""
    left: list[str] = []
    for top in cgroup_dirs(parent):
        kill = top / "cgroup.kill"
        if kill.exists():
            with contextlib.suppress(OSError):
                kill.write_text("1")
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.05)
    return left


def stop_process(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM one child we started, then SIGKILL on a deadline; reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
