"""stats() with kept stat files (_fs.StatFiles) and cached limit files
(_fs.SpecCache), over the fixture trees: the same Stats as fresh reads,
each file read at most once per call, limits re-read after the manager
writes them, fds bounded and close-on-exec. What only the kernel can show
(pread at offset 0 regenerates the file, a removed cgroup's fd fails) is in
tests/kernel/test_cgroups_kernel.py."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.cgroups import Limits, V1Manager, V2Manager, _fs
from supervisor.cgroups.manager import CgroupManager

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"


@pytest.fixture(params=["v2", "hybrid"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    dest = tmp_path / str(request.param)
    shutil.copytree(FIXTURES / str(request.param), dest)
    return dest


def manager(root: Path, stat_fds: int) -> CgroupManager:
    if root.name == "v2":
        return V2Manager(str(root), stat_fds=stat_fds)
    return V1Manager(str(root), stat_fds=stat_fds)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Every file read, by base name, kept fd or not."""
    seen: Counter[str] = Counter()
    read_text, statfiles_read = _fs.read_text, _fs.StatFiles.read

    def spy_text(path: str) -> str:
        seen[os.path.basename(path)] += 1
        return read_text(path)

    def spy_files(self: _fs.StatFiles, path: str) -> str:
        seen[os.path.basename(path)] += 1
        return statfiles_read(self, path)

    monkeypatch.setattr(_fs, "read_text", spy_text)
    monkeypatch.setattr(_fs.StatFiles, "read", spy_files)
    yield seen


def kept_fds(m: CgroupManager) -> dict[str, int]:
    return dict(m.stat_files._fds)  # type: ignore[attr-defined]


def test_kept_files_give_the_same_stats_as_fresh_reads(root: Path) -> None:
    fresh = manager(root, 0)
    kept = manager(root, 256)
    for _ in range(3):  # the first call opens, the next ones pread
        assert kept.stats("web") == fresh.stats("web")
    assert kept_fds(fresh) == {}
    fds = kept_fds(kept)
    assert len(fds) >= 10
    for path, fd in fds.items():
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, path
    # v1 cgroup.procs is opened anew every time (its pid list is per open
    # file); the cgroup2 one (v2, or hybrid's unified) is kept
    procs = [p for p in fds if p.endswith("/cgroup.procs")]
    assert len(procs) == 1, procs
    assert root.name == "v2" or "/unified/" in procs[0], procs


def test_every_file_is_read_at_most_once_per_call(root: Path, reads: Counter[str]) -> None:
    m = manager(root, 256)
    m.stats("web")
    assert reads and max(reads.values()) == 1, reads
    if root.name == "hybrid":
        assert reads["memory.failcnt"] == 1  # stats() and memory events share it


LIMIT_FILES = {
    "v2": {"memory.max", "memory.swap.max", "memory.low", "memory.high", "cpu.max", "cpu.weight",
           "pids.max"},
    "hybrid": {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
               "memory.soft_limit_in_bytes", "cpu.shares", "cpu.cfs_quota_us",
               "cpu.cfs_period_us", "pids.max"},
}  # fmt: skip


def test_limit_files_are_read_again_only_after_the_manager_writes_them(
    root: Path, reads: Counter[str]
) -> None:
    m = manager(root, 256)
    first = m.stats("web")
    assert LIMIT_FILES[root.name] <= set(reads)
    reads.clear()
    assert m.stats("web") == first
    assert not LIMIT_FILES[root.name] & set(reads), reads
    m.update("web", Limits(memory_max=96 << 20, pids_max=7))
    reads.clear()
    s = m.stats("web")
    assert LIMIT_FILES[root.name] <= set(reads)
    assert (s.memory_limit, s.pids_max) == (96 << 20, 7)
    m.create("web", Limits(memory_max=80 << 20))  # create() anew: the same
    assert m.stats("web").memory_limit == 80 << 20


def test_a_limit_file_that_cannot_be_read_is_tried_and_counted_every_time(root: Path) -> None:
    m = manager(root, 256)
    m.stats("web")
    name = "memory.max" if root.name == "v2" else "memory.limit_in_bytes"
    directory = root / "nsvisor/web" if root.name == "v2" else root / "memory/nsvisor/web"
    m.update("web", Limits())  # the cached values go
    (directory / name).write_text("garbage\n")
    for _ in range(2):
        s = m.stats("web")
        assert s.errors == [name] and s.memory_limit is None
    (directory / name).write_text("1048576\n")
    assert m.stats("web").memory_limit == 1 << 20  # not cached while it failed


def test_the_fds_are_bounded_and_the_rest_read_per_call(root: Path) -> None:
    fresh = manager(root, 0)
    m = manager(root, 3)
    assert m.stats("web") == fresh.stats("web")
    assert m.stats("web") == fresh.stats("web")
    assert len(kept_fds(m)) == 3


def test_create_and_close_give_the_fds_back(root: Path) -> None:
    m = manager(root, 256)
    m.stats("web")
    fds = list(kept_fds(m).values())
    assert fds
    m.create("web", Limits())  # a cgroup made anew: new files
    assert kept_fds(m) == {}
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    m.stats("web")
    assert kept_fds(m)
    m.close()
    assert kept_fds(m) == {}


def test_a_kept_fd_that_fails_is_reopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pids.current"
    path.write_text("1\n")
    files = _fs.StatFiles(8)
    assert files.read(str(path)) == "1\n"
    (fd,) = files._fds.values()
    path.write_text("2\n")
    pread = os.pread
    failed = []

    def failing(f: int, n: int, offset: int) -> bytes:
        if f == fd and not failed:
            failed.append(f)
            raise OSError(19, "No such device")  # what a removed cgroup's file gives
        return pread(f, n, offset)

    monkeypatch.setattr(os, "pread", failing)
    assert files.read(str(path)) == "2\n"
    assert failed == [fd] and len(files) == 1
    files.close()


def test_a_big_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "memory.stat"
    text = "".join(f"key{i} {i}\n" for i in range(20000))  # > 64 KiB
    path.write_text(text)
    files = _fs.StatFiles(8)
    assert files.read(str(path)) == text
    assert files.read(str(path)) == text
    files.close()


def test_spec_cache_expires_and_ignores_a_read_that_overlapped_an_update() -> None:
    now = [100.0]
    cache: _fs.SpecCache[int] = _fs.SpecCache(max_age_s=60, clock=lambda: now[0])
    calls = []

    def read(r: _fs.StatReader) -> int:
        calls.append(1)
        return len(calls)

    r = _fs.StatReader()
    assert cache.get("web", read, r) == 1
    assert cache.get("web", read, r) == 1
    now[0] += 59
    assert cache.get("web", read, r) == 1  # younger than max_age_s
    now[0] += 31  # older than 1.5 x max_age_s: expired whatever the spread
    assert cache.get("web", read, r) == 2

    def racing(r: _fs.StatReader) -> int:
        cache.invalidate("web")  # update() wrote while this scrape read
        return read(r)

    cache.invalidate("web")
    assert cache.get("web", racing, r) == 3
    assert cache.get("web", read, r) == 4  # the racing read was not kept
    assert cache.get("web", read, r) == 4
