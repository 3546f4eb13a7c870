"""The cgroup backends against the real kernel, as root.

The layout is whatever /sys/fs/cgroup is: on the build machines that is the
hybrid layout (so these tests exercise supervisor/cgroups/v1.py), inside the
cgroup v2 VM (tests/vm) it is pure v2 (v2.py). Every test works under its own
parent cgroup, "nsvisor-test-<pid>-<random>", in every hierarchy, and removes
it afterwards, also when the test fails. Only processes the test started are
ever signalled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervisor.cgroups import CgroupManager, Limits, V1Manager, V2Manager, open_manager
from supervisor.errors import KernelError

ROOT = "/sys/fs/cgroup"
TIMEOUT_S = 60.0  # generous: the v2 VM runs under TCG, ~20-40x slower

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.cgroups,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
    pytest.mark.skipif(
        not os.path.isdir(ROOT) or not os.listdir(ROOT),
        reason=f"no cgroup filesystem mounted at {ROOT}",
    ),
]


class Cgroups:
    """A manager on a unique parent, plus the processes the test started."""

    def __init__(self) -> None:
        self.parent = f"nsvisor-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.m: CgroupManager = open_manager(ROOT, self.parent)
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, argv: list[str], manager: CgroupManager | None = None
    ) -> subprocess.Popen[bytes]:
        """Start argv as a member of cgroup `name`: the child writes "0" into
        every cgroup.procs file before exec, as the runtime's workload does."""
        files = (manager or self.m).procs_files(name)

        def join() -> None:
            for f in files:
                with open(f, "w") as fh:
                    fh.write("0")

        p = subprocess.Popen(
            argv, preexec_fn=join, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(p)
        return p

    def dirs(self, name: str) -> list[str]:
        """The cgroup's directory in every hierarchy."""
        return [os.path.dirname(f) for f in self.m.procs_files(name)]

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(TIMEOUT_S)
        # Only our own cgroups: every child of our unique parent.
        for top in {os.path.dirname(d) for d in self.dirs("x")}:
            if os.path.isdir(top):
                for child in os.listdir(top):
                    if os.path.isdir(os.path.join(top, child)):
                        with contextlib.suppress(KernelError):
                            self.m.kill(child)
        self.m.remove_parent()


@pytest.fixture
def cg() -> Iterator[Cgroups]:
    c = Cgroups()
    try:
        yield c
    finally:
        c.cleanup()
        leftovers = [os.path.dirname(d) for d in c.dirs("x") if os.path.exists(os.path.dirname(d))]
        assert not leftovers, f"cleanup left {leftovers}"


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def read_keyed(path: str) -> dict[str, int]:
    with open(path) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def find_file(cg: Cgroups, name: str, file: str) -> str:
    for d in cg.dirs(name):
        if os.path.exists(os.path.join(d, file)):
            return os.path.join(d, file)
    raise AssertionError(f"{file} not in any hierarchy of {name}")


def create_or_skip(cg: Cgroups, name: str, limits: Limits) -> None:
    """Create; skip only when the host lacks the file a limit needs (the
    KernelError says which)."""
    try:
        cg.m.create(name, limits)
    except KernelError as e:
        if e.errno == errno.ENOENT:
            pytest.skip(f"host lacks a cgroup capability: {e}")
        raise


# --- create and read back -------------------------------------------------------


def test_create_writes_limits_the_kernel_reads_back(cg: Cgroups) -> None:
    limits = Limits(
        memory_max=64 << 20,
        swap_max=0,
        cpu_quota_us=50_000,
        cpu_shares=512,
        pids_max=16,
    )
    create_or_skip(cg, "web", limits)
    for d in cg.dirs("web"):
        assert os.path.isdir(d)
    back = cg.m.read_limits("web")
    assert back.memory_max == 64 << 20
    assert back.swap_max == 0
    assert (back.cpu_quota_us, back.cpu_period_us) == (50_000, 100_000)
    assert back.pids_max == 16
    if cg.m.layout == "v2":
        assert back.cpu_weight == 20
        with open(find_file(cg, "web", "cpu.max")) as f:
            assert f.read() == "50000 100000\n"
    else:
        assert back.cpu_shares == 512
        with open(find_file(cg, "web", "cpu.cfs_quota_us")) as f:
            assert f.read() == "50000\n"
    assert cg.m.path("web") == f"/{cg.parent}/web"

    # create() again reapplies, update() changes, None resets to unlimited
    cg.m.create("web", Limits(memory_max=32 << 20, swap_max=0, pids_max=4))
    assert cg.m.read_limits("web").memory_max == 32 << 20
    cg.m.update("web", Limits())
    back = cg.m.read_limits("web")
    assert (back.memory_max, back.swap_max, back.cpu_quota_us, back.pids_max) == (None,) * 4


def test_io_weight_is_written_in_the_backends_units(cg: Cgroups) -> None:
    create_or_skip(cg, "web", Limits(io_weight=300))
    assert cg.m.read_limits("web").io_weight == 300


def test_a_rejected_value_raises_and_rolls_back_every_directory(cg: Cgroups) -> None:
    with pytest.raises(KernelError) as e:
        cg.m.create("bad", Limits(pids_max=-5))
    assert e.value.errno == errno.EINVAL
    assert "pids.max" in str(e.value) and "pids_max" in str(e.value)
    for d in cg.dirs("bad"):
        assert not os.path.exists(d), d


# --- membership -------------------------------------------------------------


def test_a_joined_process_shows_in_pids_and_populated(cg: Cgroups) -> None:
    cg.m.create("web", Limits())
    assert not cg.m.populated("web")
    p = cg.spawn("web", ["sleep", "1000"])
    wait_until(lambda: p.pid in cg.m.pids("web"), "the sleeper in pids()")
    assert cg.m.populated("web")
    for procs in cg.m.procs_files("web"):  # joined every hierarchy
        with open(procs) as f:
            assert str(p.pid) in f.read().split(), procs
    events = cg.m.events_file("web")
    if events is not None:
        assert read_keyed(events)["populated"] == 1
    cg.m.kill("web", timeout_s=TIMEOUT_S)
    assert p.wait(TIMEOUT_S) == -signal.SIGKILL
    assert cg.m.pids("web") == []
    assert not cg.m.populated("web")


def test_stats_of_a_running_cgroup(cg: Cgroups) -> None:
    cg.m.create("web", Limits(memory_max=256 << 20, pids_max=32))
    script = "x = bytearray(16 << 20); x[::4096] = b'y' * len(x[::4096]); t = 0\nfor i in range(10**6): t += i\nprint('ok', flush=True)\nimport time; time.sleep(1000)"
    p = cg.spawn("web", [sys.executable, "-c", script])
    wait_until(lambda: (cg.m.stats("web").memory_rss or 0) >= 16 << 20, "16 MiB of anon memory")
    s = cg.m.stats("web")
    assert s.errors == [], s.errors
    assert s.cpu_usage_ns is not None and s.cpu_usage_ns > 0
    assert s.memory_usage is not None and s.memory_usage >= 16 << 20
    assert s.memory_working_set is not None and s.memory_working_set > 0
    assert s.memory_limit == 256 << 20
    assert s.pids_current == 1 and s.pids_max == 32
    assert s.cpu_quota_us is None  # unlimited, not a fake 0
    if cg.m.layout == "v2" or cg.m.events_file("web") is not None:
        assert s.pressure is not None and {"cpu", "memory", "io"} <= set(s.pressure)
    if cg.m.layout == "hybrid":
        assert s.memory_failcnt == 0
    else:
        assert s.memory_failcnt is None
    assert p.poll() is None


# --- limits enforced ---------------------------------------------------------


def test_a_memory_hog_is_oom_killed_and_counted(cg: Cgroups) -> None:
    create_or_skip(cg, "hog", Limits(memory_max=32 << 20, swap_max=0))
    assert cg.m.oom_kill_count("hog") == 0
    # bytearray() is calloc'ed: touch every page so it is really charged.
    p = cg.spawn(
        "hog",
        [sys.executable, "-c", "x = bytearray(256 << 20); x[::4096] = b'y' * len(x[::4096])"],
    )
    assert p.wait(TIMEOUT_S * 2) == -signal.SIGKILL
    count = wait_until(lambda: cg.m.oom_kill_count("hog"), "oom_kill >= 1")
    assert count >= 1
    oom_file = cg.m.oom_kill_file("hog")
    assert oom_file is not None and read_keyed(oom_file)["oom_kill"] == count
    events = cg.m.memory_events("hog")
    assert events["oom_kill"] >= 1
    if cg.m.layout == "v2":
        assert events["max"] >= 1 and events["oom"] >= 1
    else:
        # v1 "max" is memory.failcnt (+ memsw.failcnt); measured on 6.18 both
        # stay 0 even when the limit is hit, so only its presence is checked.
        assert "max" in events
    s = cg.m.stats("hog")
    assert s.memory_events is not None and s.memory_events["oom_kill"] == count
    assert s.memory_max_usage is None or s.memory_max_usage <= 32 << 20


FORK_LOOP = """
import os, time
failed = 0
for _ in range(30):
    try:
        pid = os.fork()
    except BlockingIOError:  # EAGAIN: pids.max reached
        failed += 1
        continue
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
os._exit(failed)
"""


def test_pids_max_stops_a_fork_loop(cg: Cgroups) -> None:
    cg.m.create("forks", Limits(pids_max=8))
    p = cg.spawn("forks", [sys.executable, "-c", FORK_LOOP])
    # 8 tasks: the loop itself and 7 children; the other 23 forks fail.
    assert p.wait(TIMEOUT_S) == 30 - 7
    assert read_keyed(find_file(cg, "forks", "pids.events"))["max"] >= 1
    s = cg.m.stats("forks")
    assert (s.pids_current, s.pids_max) == (7, 8)
    assert len(cg.m.pids("forks")) == 7
    cg.m.kill("forks", timeout_s=TIMEOUT_S)
    assert cg.m.pids("forks") == []


# --- kill and remove -----------------------------------------------------------


@pytest.mark.parametrize("path", ["cgroup.kill", "freezer"])
def test_kill_empties_a_cgroup_of_three_sleepers(cg: Cgroups, path: str) -> None:
    """cgroup.kill: v2, or the unified dir on hybrid (5.14+). freezer: what a
    kernel without cgroup.kill gets: v1 freezer.state FROZEN (or v2
    cgroup.freeze 1), SIGKILL each pid, thaw, until empty."""
    cg.m.create("web", Limits())
    m: CgroupManager = cg.m
    if path == "freezer":
        if cg.m.layout == "v2":
            m = V2Manager(ROOT, cg.parent, use_cgroup_kill=False)
        else:
            m = V1Manager(ROOT, cg.parent, use_unified=False)
            assert m.events_file("web") is None
    else:
        events = m.events_file("web")
        if events is None or not os.path.exists(
            os.path.join(os.path.dirname(events), "cgroup.kill")
        ):
            pytest.skip("no cgroup.kill: needs kernel 5.14+ and, on v1, the unified hierarchy")
    # A shell that keeps forking makes the race real: the freezer must stop it.
    procs = [cg.spawn("web", ["sleep", "1000"], m) for _ in range(3)]
    procs.append(cg.spawn("web", ["sh", "-c", "while :; do sleep 1000 & sleep 0.01; done"], m))
    wait_until(lambda: len(m.pids("web")) >= 5, "the sleepers in the cgroup")
    m.kill("web", timeout_s=TIMEOUT_S)
    assert m.pids("web") == []
    assert not m.populated("web")
    assert [p.wait(TIMEOUT_S) for p in procs] == [-signal.SIGKILL] * 4
    if path == "freezer" and cg.m.layout == "hybrid":
        with open(find_file(cg, "web", "freezer.state")) as f:
            assert f.read().strip() == "THAWED"
    if path == "freezer" and cg.m.layout == "v2":
        with open(find_file(cg, "web", "cgroup.freeze")) as f:
            assert f.read().strip() == "0"


def test_remove_leaves_nothing_behind_in_any_hierarchy(cg: Cgroups) -> None:
    cg.m.create("web", Limits(memory_max=64 << 20))
    cg.m.create("web/inner", Limits())  # a child cgroup, as a container may make
    p = cg.spawn("web/inner", ["sleep", "1000"])
    wait_until(lambda: cg.m.populated("web"), "the sleeper in web/inner")
    with pytest.raises(KernelError):  # busy: a process is still inside
        cg.m.remove("web")
    cg.m.kill("web", timeout_s=TIMEOUT_S)
    assert p.wait(TIMEOUT_S) == -signal.SIGKILL
    cg.m.remove("web")
    for d in cg.dirs("web"):
        assert not os.path.exists(d), d
        assert os.path.isdir(os.path.dirname(d)), "the parent is kept"
    cg.m.remove("web")  # already gone: fine
    cg.m.remove_parent()
    for d in cg.dirs("web"):
        assert not os.path.exists(os.path.dirname(d))


def _thread_cgroup2() -> str | None:
    with open("/proc/thread-self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def test_fork_into_cgroup_starts_the_child_in_the_cgroup2_cgroup(cg: Cgroups) -> None:
    """The workload's and exec's fork (workload.fork_into_cgroup): the child
    starts in the cgroup2 cgroup (clone3 CLONE_INTO_CGROUP) without writing
    cgroup.procs, and is told to join only the v1 hierarchies by writes; it
    joins those and is then a member everywhere. The parent stays put."""
    from supervisor.runtime.workload import fork_into_cgroup

    cg.m.create("web", Limits())
    files = cg.m.procs_files("web")
    unified = [f for f in files if not os.path.exists(os.path.join(os.path.dirname(f), "tasks"))]
    if not unified:
        pytest.skip("no cgroup2 hierarchy mounted: every hierarchy is joined by a write")
    before = _thread_cgroup2()
    r, w = os.pipe()
    pid, join = fork_into_cgroup(files)
    if pid == 0:
        try:
            os.close(r)
            os.write(w, f"{_thread_cgroup2()}\n".encode())
            for f in join:
                with open(f, "w") as fh:
                    fh.write("0")
            os.write(w, b"joined\n")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r) as reader:
            assert reader.readline().strip() == f"/{cg.parent}/web"
            assert reader.readline().strip() == "joined"
        assert sorted(join) == sorted(set(files) - set(unified))
        assert _thread_cgroup2() == before
        assert cg.m.pids("web") == [pid]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# --- stat files kept open between stats() calls (_fs.StatFiles) -------------------


READY_AFTER_16M = (
    "import sys, time\n"
    "x = bytearray(16 << 20); x[::4096] = b'y' * len(x[::4096])\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.2: pass\n"
    "print('ready', flush=True); sys.stdin.read()\n"
)


def _kept_manager(cg: Cgroups) -> CgroupManager:
    return open_manager(ROOT, cg.parent, stat_fds=256)


def _kept(m: CgroupManager) -> dict[str, int]:
    return dict(m.stat_files._fds)  # type: ignore[attr-defined]


def test_kept_stat_files_show_the_values_of_now(cg: Cgroups) -> None:
    """pread(fd, n, 0) on a kept cgroup file runs the kernel's show handler
    again (seq_file resets at offset 0): every value stats() reads through a
    kept fd moves when the cgroup changes. v1 cgroup.procs is the exception
    (see the next test), and stats() opens it anew."""
    m = _kept_manager(cg)
    try:
        m.create("web", Limits(memory_max=256 << 20))
        before = m.stats("web")
        kept = _kept(m)
        assert len(kept) >= 10, kept  # the files really are kept
        assert (before.processes, before.pids_current) == (0, 0)
        files = m.procs_files("web")

        def join() -> None:
            for f in files:
                with open(f, "w") as fh:
                    fh.write("0")

        p = subprocess.Popen(
            [sys.executable, "-c", READY_AFTER_16M],
            preexec_fn=join,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        cg.procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        now = m.stats("web")
        assert _kept(m) == kept  # the same fds, re-read
        assert now.errors == [], now.errors
        assert (now.processes, now.pids_current) == (1, 1)
        assert now.memory_usage is not None and now.memory_usage >= 16 << 20
        assert now.memory_rss is not None and now.memory_rss >= 16 << 20  # memory.stat
        assert now.cpu_usage_ns is not None and now.cpu_usage_ns >= 200_000_000
        assert (now.cpu_user_ns or 0) > (before.cpu_user_ns or 0)
        assert now.memory_max_usage is None or now.memory_max_usage >= 16 << 20
        assert (now.memory_pgfault or 0) > (before.memory_pgfault or 0)
        p.stdin.close()  # type: ignore[union-attr]
        assert p.wait(TIMEOUT_S) == 0
        after = m.stats("web")
        assert (after.processes, after.pids_current) == (0, 0)
        assert after.memory_rss is not None and after.memory_rss < 16 << 20
    finally:
        m.close()


def test_a_kept_v1_cgroup_procs_fd_is_stale(cg: Cgroups) -> None:
    """Why stats() opens v1 cgroup.procs anew (where no cgroup2 hierarchy
    is mounted beside it): its pid list is built on open and reused by later
    reads of the same open file while it is being read at least once a
    second (cgroup_pidlist_start). v2's cgroup.procs restarts its task
    iterator at offset 0: stats() keeps that one open, also on a hybrid
    host (test_kept_stat_files_show_the_values_of_now counts through it)."""
    cg.m.create("web", Limits())
    procs = find_file(cg, "web", "cgroup.procs")  # v1 pids hierarchy on hybrid
    fd = os.open(procs, os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert os.pread(fd, 4096, 0) == b""
        p = cg.spawn("web", ["sleep", "1000"])
        kept = os.pread(fd, 4096, 0).split()
        fresh = _read(procs).split()
        assert fresh == [str(p.pid).encode()]
        if cg.m.layout == "v2":
            assert kept == fresh
        else:
            assert kept == [], "the kernel rebuilds the v1 pid list now: stats() may keep it"
    finally:
        os.close(fd)
    assert cg.m.stats("web").processes == 1


def test_a_kept_fd_of_a_removed_and_remade_cgroup_is_reopened(cg: Cgroups) -> None:
    """A removed cgroup's kept files fail with ENODEV, also when a cgroup of
    the same name is made again: StatFiles opens the new one."""
    m = _kept_manager(cg)
    try:
        cg.m.create("web", Limits())
        assert m.stats("web").pids_current == 0
        kept = _kept(m)
        cg.m.remove("web")  # another manager: m keeps its fds
        fd = next(iter(kept.values()))
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno == errno.ENODEV
        cg.m.create("web", Limits())
        cg.spawn("web", ["sleep", "1000"])
        s = m.stats("web")
        assert (s.errors, s.pids_current, s.processes) == ([], 1, 1)
        assert set(_kept(m)) == set(kept)
    finally:
        m.close()


def test_remove_closes_the_kept_stat_files(cg: Cgroups) -> None:
    m = _kept_manager(cg)
    try:
        m.create("web", Limits())
        m.create("db", Limits())
        m.stats("web")
        m.stats("db")
        web = [fd for path, fd in _kept(m).items() if "/web/" in path]
        assert web
        m.remove("web")
        assert all("/web/" not in path for path in _kept(m))
        assert any("/db/" in path for path in _kept(m))
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")}  # fmt: skip
        assert not [p for p in mine if f"/{cg.parent}/web/" in p]
    finally:
        m.close()
    assert _kept(m) == {}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
