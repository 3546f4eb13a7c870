"""The thin shell both backends share: read, write, mkdir and rmdir of cgroup
files, with errors turned into KernelError messages that say how to fix them.

Plain paths under an injectable root: unit tests point the root at a fixture
tree in tmp_path, kernel tests at the real /sys/fs/cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from supervisor.errors import KernelError

from . import parse
from .stats import Pressure

T = TypeVar("T")


@dataclass(frozen=True)
class Write:
    """One planned write of a limit file.

    `required` is False for writes that only reset a file to its default
    (the field was None): those are skipped when the file does not exist.
    """

    controller: str
    file: str
    value: str
    field: str
    required: bool
    missing_hint: str = ""
    """Why the file may be missing, for the error message."""


def validate_name(name: str, what: str = "cgroup name") -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid {what} {name!r}: use relative names like 'web' or 'a/b'")


def read_text(path: str) -> str:
    # os.open/os.read instead of open(): no buffered reader and text wrapper
    # per file, about half the cost; a scrape of 500 containers reads ~10^4
    # files. Loop: seq_file may return a large file in several reads.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


class StatFiles:
    """Open fds of the cgroup files that stats() reads on every scrape,
    re-read with pread(fd, size, 0) instead of open/read/close: 0.4-1 us a
    file instead of 3-6 us (kernel 6.18, hybrid; measured per file). A
    cgroup file is a seq_file: a read at offset 0 resets the iterator and
    calls the show handler again, so every pread sees the value of now
    (tests/kernel/test_cgroups_kernel.py checks it per file). Not for v1
    cgroup.procs / tasks: their pid list is cached per open file and only
    rebuilt on open (cgroup_pidlist_start), so a kept fd reads a stale list.

    Bounded: at most `capacity` fds (0, the default of the managers: none
    kept; the daemon passes stat_fd_budget()); beyond that a file is read
    the old way (open, read, close). Every fd is O_CLOEXEC, opened after the zygote was
    forked: nothing reaches a container. A read that fails on a kept fd
    (ENODEV: the cgroup was removed, perhaps made again under the same
    name) closes it and tries once more with a fresh open, so a stale fd
    costs one extra open and never a wrong value. Thread-safe: scrapes run
    in the metrics server's threads, close_under() in a trio worker thread;
    the lock keeps an fd from being closed (and its number reused) between
    lookup and pread."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._fds)

    def __del__(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def read(self, path: str) -> str:
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                try:
                    return _pread_all(fd)
                except OSError:
                    del self._fds[path]
                    os.close(fd)
            if len(self._fds) >= self.capacity:
                return read_text(path)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = _pread_all(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fds[path] = fd
            return text

    def close_under(self, directory: str) -> None:
        """Close the fds of every file in `directory` and below (a removed
        cgroup)."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            for path in [p for p in self._fds if p.startswith(prefix)]:
                os.close(self._fds.pop(path))

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
            for fd in fds:
                os.close(fd)


FD_RESERVE = 1024
"""fds left for everything else (sockets, pidfds, logs, inotify) when the
stat fds' budget is taken from RLIMIT_NOFILE."""


def stat_fd_budget() -> int:
    """How many stat fds a manager may keep: half of what RLIMIT_NOFILE's
    soft limit leaves after FD_RESERVE (0 under the default 1024: then
    every file is opened per read, as before). The daemon raises the soft
    limit to the hard one at start (supervisor.daemon.app)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, (soft - FD_RESERVE) // 2)


def pread_all(fd: int) -> bytes:
    """The whole content of a seq_file (a cgroup or /proc file) through a
    kept fd: pread from offset 0 runs its show handler again."""
    data = os.pread(fd, 65536, 0)
    if len(data) < 65536:
        return data
    # Rare (memory.stat of a big NUMA machine is ~2 KiB per node): go on
    # from where the first read stopped, as read() would.
    chunks = [data]
    offset = len(data)
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pread_all(fd: int) -> str:
    return pread_all(fd).decode()


def write_text(path: str, value: str) -> None:
    # One write() call: cgroup files act on each write, and a partial or
    # buffered write would be a different request. O_TRUNC is what a shell
    # redirect does; cgroupfs ignores it, and fixture trees need it.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def apply_write(directory: str, w: Write) -> None:
    """Perform one planned write; raise a KernelError naming the file and the fix."""
    path = os.path.join(directory, w.file)
    if not os.path.exists(path):
        if not w.required:
            return
        hint = w.missing_hint or f"the {w.controller} controller is not available here"
        raise KernelError(
            f"{w.file} missing in {directory}: {hint}; remove {w.field}",
            errno=errno.ENOENT,
            path=path,
        )
    try:
        write_text(path, w.value)
    except OSError as e:
        raise KernelError(
            f"cannot write {w.value!r} to {path}: {e.strerror}; {_errno_hint(w, e.errno)}",
            errno=e.errno,
            path=path,
        ) from e


def _errno_hint(w: Write, err: int | None) -> str:
    if err == errno.EINVAL:
        return f"the kernel rejected the value of {w.field} (out of range for {w.file}?)"
    if err == errno.EBUSY and w.controller == "memory":
        return f"current memory usage is above the new limit; raise {w.field} or stop the container"
    if err in (errno.EACCES, errno.EPERM):
        return "run as root or delegate this cgroup subtree to the daemon's user"
    return f"check {w.field}"


def io_error(path: str, e: OSError, action: str, fix: str) -> KernelError:
    return KernelError(f"cannot {action} {path}: {e.strerror}; {fix}", errno=e.errno, path=path)


def mkdirs(path: str, stop: str, created: list[str]) -> None:
    """mkdir path and its missing parents below `stop`; append each directory
    this call made to `created` (outermost first) so a failure can undo it."""
    missing: list[str] = []
    p = path
    while p != stop and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        except OSError as e:
            raise io_error(
                d, e, "create cgroup", "run as root and check the hierarchy is mounted read-write"
            ) from e
        created.append(d)


def rmdir_retry(path: str, timeout_s: float = 2.0) -> None:
    """rmdir a cgroup directory; gone already is fine. EBUSY right after the
    last process died is normal (the kernel frees it asynchronously), so retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                raise io_error(
                    path,
                    e,
                    "remove cgroup",
                    "kill its processes (kill()) and remove child cgroups first",
                ) from e
            time.sleep(0.02)


def rmdir_tree(path: str, timeout_s: float = 2.0) -> None:
    """Remove a cgroup and every child cgroup in it, deepest first."""
    try:
        os.rmdir(path)  # the common case: no child cgroups, nothing left in it
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # children (EBUSY, ENOTEMPTY) or tasks still leaving: the walk
    if not os.path.isdir(path):
        return
    for d in reversed(list(walk_dirs(path))):
        rmdir_retry(d, timeout_s)


def walk_dirs(path: str) -> Iterator[str]:
    """path and its descendant directories, parents before children."""
    if not os.path.isdir(path):
        return
    yield path
    for dirpath, dirnames, _ in os.walk(path):
        for d in sorted(dirnames):
            yield os.path.join(dirpath, d)


def read_procs_tree(path: str) -> set[int]:
    """Every pid in cgroup.procs of path and its descendants."""
    pids: set[int] = set()
    for d in walk_dirs(path):
        try:
            text = read_text(os.path.join(d, "cgroup.procs"))
        except FileNotFoundError:
            continue  # removed while we walked
        pids.update(int(x) for x in text.split())
    return pids


def wait_for(predicate: Callable[[], bool], deadline: float, interval_s: float = 0.01) -> bool:
    """Poll until predicate() or the monotonic deadline; True if it held.

    Polling is fine here: kill() is called from a worker thread, and the
    event-driven path (inotify on cgroup.events) belongs to the daemon."""
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
        interval_s = min(interval_s * 2, 0.1)


class StatReader:
    """Best-effort reads for stats(): a missing, unreadable or unparsable file
    is recorded in `errors` and yields None; nothing raises."""

    def __init__(self, files: StatFiles | None = None) -> None:
        self.errors: list[str] = []
        self._read = read_text if files is None else files.read

    def _error(self, path: str) -> None:
        name = os.path.basename(path)
        if name not in self.errors:
            self.errors.append(name)

    def read(
        self,
        path: str | None,
        parser: Callable[[str], T],
        optional: bool = False,
        *,
        fresh: bool = False,
    ) -> T | None:
        """`optional`: the file exists only on newer kernels (memory.peak since
        5.19), so its absence is not an error. `fresh`: open the file anew
        even with StatFiles (v1 cgroup.procs, see StatFiles)."""
        if path is None:
            return None
        try:
            return parser(read_text(path) if fresh else self._read(path))
        except FileNotFoundError:
            if not optional:
                self._error(path)
        except (OSError, ValueError):
            self._error(path)
        return None


class SpecCache(Generic[T]):
    """The limit ("spec") values of each cgroup as stats() last read them:
    files that change only when the daemon writes them (create(), update())
    are read once per change, not on every scrape. The manager calls
    invalidate() whenever it writes a cgroup's limits or removes it; an
    entry also expires after `max_age_s` (spread out by up to half again,
    so a fleet started together is not re-read in one scrape), which bounds
    how long a write made behind the daemon's back stays unseen.

    A read that could not be completed (an error in Stats.errors) is never
    kept: the next scrape tries again and counts the error again, as
    without the cache. A read that overlapped an invalidate() is not kept
    either (the generation check), so an update() during a scrape cannot
    leave the old values cached."""

    def __init__(
        self, max_age_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, T]] = {}
        self._gen: dict[str, int] = {}

    def get(self, name: str, read: Callable[[StatReader], T], r: StatReader) -> T:
        """The cached values of `name`, or read() them (with a reader of its
        own that opens each file per read; its errors are added to `r`)."""
        now = self.clock()
        entry = self._entries.get(name)
        if entry is not None and entry[0] > now:
            return entry[1]
        gen = self._gen.get(name, 0)
        own = StatReader()  # opened per read, not kept: read once a minute at most
        values = read(own)
        for e in own.errors:
            r._error(e)
        if not own.errors and self.max_age_s > 0:
            expires = now + self.max_age_s * (1.0 + 0.5 * random.random())
            with self._lock:
                if self._gen.get(name, 0) == gen:
                    self._entries[name] = (expires, values)
        return values

    def generation(self, name: str) -> int:
        """Moves on every invalidate() of `name` (the collector process
        compares it with what it saw last: see exporters/collectord.py)."""
        return self._gen.get(name, 0)

    def invalidate(self, name: str) -> None:
        with self._lock:
            self._gen[name] = self._gen.get(name, 0) + 1
            self._entries.pop(name, None)


def freeze_kill_loop(
    *,
    list_pids: Callable[[], list[int]],
    freeze: Callable[[], None] | None,
    is_frozen: Callable[[], bool],
    thaw: Callable[[], None],
    deadline: float,
    what: str,
) -> None:
    """Kill every process without cgroup.kill, the way runc does it on v1:
    freeze (so nothing forks between reading the pid list and the kill),
    SIGKILL each pid, thaw (a frozen task cannot die until thawed), and repeat
    until the cgroup is empty. `freeze` None: no freezer, just kill in a loop
    (racy against forks, hence the loop)."""
    while True:
        if not list_pids():
            return
        if time.monotonic() >= deadline:
            raise KernelError(
                f"processes {list_pids()} still in {what} after kill; "
                "they may be stuck in uninterruptible sleep (check /proc/PID/stack)",
                errno=errno.ETIMEDOUT,
                path=what,
            )
        if freeze is not None:
            freeze()
        try:
            if freeze is not None:
                # A task in uninterruptible sleep delays FROZEN; kill anyway
                # after a short wait rather than hang (runc retries the same way).
                wait_for(is_frozen, min(deadline, time.monotonic() + 1.0))
            for pid in list_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        finally:
            if freeze is not None:
                thaw()
        wait_for(lambda: not list_pids(), min(deadline, time.monotonic() + 0.5))


def read_pressure(r: StatReader, directory: str) -> dict[str, Pressure] | None:
    """PSI files (4.20+; absent when booted with psi=0, so optional)."""
    result: dict[str, Pressure] = {}
    for kind in ("cpu", "memory", "io"):
        p = r.read(f"{directory}/{kind}.pressure", parse.parse_pressure, optional=True)
        if p is not None:
            result[kind] = p
    return result or None


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file, or {} when it does not exist."""
    try:
        return parse.parse_keyed(read_text(path))
    except FileNotFoundError:
        return {}
