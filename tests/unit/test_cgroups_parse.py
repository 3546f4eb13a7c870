"""cgroup parsers, unit conversions and stats() over fixture trees of both layouts.

The fixture trees (tests/unit/fixtures/cgroup/README.md) are real kernel files
captured on a hybrid build machine and inside the cgroup v2 VM."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from supervisor.cgroups import (
    IoDevice,
    Pressure,
    Stats,
    V1Manager,
    V2Manager,
    detect,
    open_manager,
    parse,
)
from supervisor.cgroups.limits import (
    blkio_to_io_weight,
    io_to_blkio_weight,
    shares_to_weight,
    weight_to_shares,
)
from supervisor.cgroups.v1 import find_hierarchies

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"


@pytest.fixture
def v2_root(tmp_path: Path) -> str:
    """A writable copy of the v2 fixture tree."""
    shutil.copytree(FIXTURES / "v2", tmp_path / "v2")
    return str(tmp_path / "v2")


@pytest.fixture
def hybrid_root(tmp_path: Path) -> str:
    """A writable copy of the hybrid fixture tree."""
    shutil.copytree(FIXTURES / "hybrid", tmp_path / "hybrid")
    return str(tmp_path / "hybrid")


# --- parsers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),  # v2 and pids.max
        ("-1\n", None),  # v1 cfs_quota_us
        ("9223372036854771712\n", None),  # v1 memory.limit_in_bytes unlimited (4 KiB pages)
        ("9223372036854710272\n", None),  # the same with 64 KiB pages
        ("33554432\n", 33554432),
        ("0\n", 0),
    ],
)
def test_parse_limit_knows_every_spelling_of_unlimited(text: str, expected: int | None) -> None:
    assert parse.parse_limit(text) == expected


def test_parse_limit_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse.parse_limit("lots\n")


def test_parse_cpu_max() -> None:
    assert parse.parse_cpu_max("50000 100000\n") == (50000, 100000)
    assert parse.parse_cpu_max("max 100000\n") == (None, 100000)
    assert parse.format_cpu_max(None, 20000) == "max 20000"


def test_parse_keyed_ignores_lines_that_are_not_key_value() -> None:
    assert parse.parse_keyed("populated 1\nfrozen 0\n\nodd line here\n") == {
        "populated": 1,
        "frozen": 0,
    }


def test_parse_io_stat() -> None:
    text = "254:0 rbytes=4194304 wbytes=8388608 rios=4 wios=8 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=3 wios=4\n"
    assert parse.parse_io_stat(text) == [
        IoDevice(254, 0, 4194304, 8388608, 4, 8),
        IoDevice(8, 16, 1, 2, 3, 4),
    ]


def test_parse_blkio_merges_bytes_and_ops_and_skips_the_total_line() -> None:
    bytes_text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n"
    ops_text = "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n"
    assert parse.parse_blkio(bytes_text, ops_text) == [IoDevice(8, 0, 4096, 8192, 1, 2)]
    assert parse.parse_blkio("Total 0\n", "Total 0\n") == []


def test_parse_pressure_with_and_without_full() -> None:
    both = "some avg10=0.26 avg60=0.21 avg300=0.05 total=190685\nfull avg10=0.26 avg60=0.21 avg300=0.05 total=188060\n"
    assert parse.parse_pressure(both) == Pressure(190685, 188060)
    # cpu.pressure before 5.13 has no full line
    assert parse.parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n") == Pressure(
        7, None
    )


def test_parse_io_weight_reads_the_default() -> None:
    assert parse.parse_io_weight("default 2930\n8:0 500\n") == 2930
    assert parse.parse_io_weight("300\n") == 300  # v1 blkio.bfq.weight


# --- unit conversions ------------------------------------------------------


def test_shares_to_weight_is_runcs_formula() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 39
    assert shares_to_weight(262144) == 10000


def test_weight_to_shares_round_trips_every_weight() -> None:
    assert weight_to_shares(1) == 2
    assert weight_to_shares(10000) == 262144
    assert all(shares_to_weight(weight_to_shares(w)) == w for w in range(1, 10001))


def test_blkio_weight_conversion_is_runcs_and_round_trips() -> None:
    assert blkio_to_io_weight(10) == 1
    assert blkio_to_io_weight(500) == 4950
    assert blkio_to_io_weight(1000) == 10000
    assert all(io_to_blkio_weight(blkio_to_io_weight(w)) == w for w in range(10, 1001))


# --- detection -------------------------------------------------------------


def test_detect_and_open_manager_pick_the_backend_from_the_root() -> None:
    assert detect(str(FIXTURES / "v2")) == "v2"
    assert detect(str(FIXTURES / "hybrid")) == "hybrid"
    assert isinstance(open_manager(str(FIXTURES / "v2")), V2Manager)
    hybrid = open_manager(str(FIXTURES / "hybrid"))
    assert isinstance(hybrid, V1Manager)
    assert hybrid.layout == "hybrid"


def test_separate_v1_mounts_are_found_each_once() -> None:
    m = V1Manager(str(FIXTURES / "hybrid"))
    assert sorted(m.hierarchies) == ["blkio", "cpu", "cpuacct", "freezer", "memory", "pids"]
    assert m.unified == str(FIXTURES / "hybrid" / "unified")
    root = str(FIXTURES / "hybrid")
    assert m.procs_files("web") == [
        f"{root}/{h}/nsvisor/web/cgroup.procs"
        for h in ("blkio", "cpu", "cpuacct", "freezer", "memory", "pids", "unified")
    ]


def test_co_mounted_cpu_cpuacct_with_symlinks_is_used_once(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "memory").mkdir()
    os.symlink("cpu,cpuacct", tmp_path / "cpu")
    os.symlink("cpu,cpuacct", tmp_path / "cpuacct")
    (tmp_path / "systemd").mkdir()  # name=systemd: not a controller we use
    h = find_hierarchies(str(tmp_path))
    assert h == {
        "cpu": str(tmp_path / "cpu,cpuacct"),
        "cpuacct": str(tmp_path / "cpu,cpuacct"),
        "memory": str(tmp_path / "memory"),
    }
    m = V1Manager(str(tmp_path), "nsvisor")
    assert m.unified is None
    assert m.procs_files("web") == [
        str(tmp_path / "cpu,cpuacct/nsvisor/web/cgroup.procs"),
        str(tmp_path / "memory/nsvisor/web/cgroup.procs"),
    ]


def test_use_unified_false_ignores_the_unified_hierarchy() -> None:
    m = V1Manager(str(FIXTURES / "hybrid"), use_unified=False)
    assert m.unified is None
    assert m.events_file("web") is None
    assert m.stats("web").pressure is None


def test_names_must_be_relative() -> None:
    m = V2Manager(str(FIXTURES / "v2"))
    for bad in ("", "/web", "../web", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            m.path(bad)
    assert m.path("a/b") == "/nsvisor/a/b"


# --- stats over the fixture trees ------------------------------------------


def test_v2_stats_from_the_fixture_tree() -> None:
    s = V2Manager(str(FIXTURES / "v2")).stats("web")
    assert s.errors == []
    assert s.cpu_usage_ns == 928151 * 1000
    assert s.cpu_user_ns == 636446 * 1000
    assert s.cpu_system_ns == 291704 * 1000
    assert (s.cpu_periods, s.cpu_throttled_periods) == (20, 17)
    assert s.cpu_throttled_ns == 758970 * 1000
    assert s.memory_usage == 52502528
    assert s.memory_max_usage == 52502528  # memory.peak
    assert s.memory_limit == 256 << 20
    assert (s.memory_swap_usage, s.memory_swap_limit) == (0, 64 << 20)
    assert s.memory_rss == 44916736  # anon
    assert s.memory_cache == 7024640  # file
    assert s.memory_mapped_file == 3313664
    assert s.memory_inactive_file == 6938624
    assert s.memory_working_set == 52502528 - 6938624
    assert s.memory_failcnt is None  # v1 only: None, not a fake 0
    assert s.memory_events == {
        "low": 0,
        "high": 0,
        "max": 37,
        "oom": 1,
        "oom_kill": 1,
        "oom_group_kill": 0,
    }
    assert (s.pids_current, s.pids_max) == (2, 100)
    assert s.processes == 1  # cgroup.procs; pids.current counts threads
    # memory.stat is hierarchical on v2: both scopes carry one number
    assert (s.memory_pgfault, s.memory_pgmajfault) == (2108, 16)
    assert (s.memory_pgfault_hierarchy, s.memory_pgmajfault_hierarchy) == (2108, 16)
    assert s.io == [IoDevice(254, 0, 4194304, 8388608, 4, 8)]
    assert s.pressure is not None
    assert set(s.pressure) == {"cpu", "memory", "io"}
    assert s.pressure["io"].full_total_us is not None
    assert (s.cpu_quota_us, s.cpu_period_us, s.cpu_weight) == (50000, 100000, 20)
    assert s.cpu_shares == weight_to_shares(20)


def test_hybrid_stats_from_the_fixture_tree() -> None:
    s = V1Manager(str(FIXTURES / "hybrid")).stats("web")
    assert s.errors == []
    assert s.cpu_usage_ns == 272091338  # cpuacct.usage
    assert (s.cpu_user_ns, s.cpu_system_ns) == (219993672, 40000000)
    assert (s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns) == (7, 4, 177364391)
    assert s.memory_usage == 50401280
    assert s.memory_max_usage == 51642368
    assert s.memory_limit == 256 << 20
    assert s.memory_swap_limit == 64 << 20  # memsw - memory: swap only
    assert s.memory_swap_usage == 0  # total_swap
    assert s.memory_rss == 49020928  # total_rss
    assert s.memory_cache == 1171456
    assert s.memory_mapped_file == 1048576
    assert s.memory_inactive_file == 1048576
    assert s.memory_working_set == 50401280 - 1048576
    assert s.memory_failcnt == 37
    assert s.memory_events == {"oom_kill": 1, "max": 37}
    assert (s.pids_current, s.pids_max) == (1, 100)
    assert s.processes == 1
    assert (s.memory_pgfault, s.memory_pgmajfault) == (20145, 0)  # pgfault, pgmajfault
    assert (s.memory_pgfault_hierarchy, s.memory_pgmajfault_hierarchy) == (20145, 0)  # total_*
    assert s.io == [IoDevice(253, 0, 0, 4096, 0, 1), IoDevice(254, 0, 4194304, 8388608, 4, 8)]
    assert s.pressure == {
        "cpu": Pressure(190685, 188060),
        "memory": Pressure(0, 0),
        "io": Pressure(8064, 8064),
    }
    assert (s.cpu_quota_us, s.cpu_period_us, s.cpu_shares) == (50000, 100000, 512)
    assert s.cpu_weight == shares_to_weight(512)


def test_working_set_is_usage_minus_inactive_file_floored_at_zero() -> None:
    assert Stats(memory_usage=100, memory_inactive_file=30).memory_working_set == 70
    assert Stats(memory_usage=100, memory_inactive_file=300).memory_working_set == 0
    assert Stats(memory_usage=100).memory_working_set == 100
    assert Stats().memory_working_set is None


def test_v2_stats_survive_a_missing_file(v2_root: str) -> None:
    os.remove(os.path.join(v2_root, "nsvisor/web/memory.stat"))
    os.remove(os.path.join(v2_root, "nsvisor/web/io.stat"))
    s = V2Manager(v2_root).stats("web")
    assert sorted(s.errors) == ["io.stat", "memory.stat"]
    assert s.memory_rss is None and s.io is None
    assert s.memory_usage == 52502528 and s.cpu_usage_ns == 928151000


def test_v2_stats_treat_files_of_newer_kernels_as_optional(v2_root: str) -> None:
    os.remove(os.path.join(v2_root, "nsvisor/web/memory.peak"))  # 5.19+
    s = V2Manager(v2_root).stats("web")
    assert s.errors == []
    assert s.memory_max_usage is None


def test_v2_stats_record_an_unparsable_file(v2_root: str) -> None:
    Path(v2_root, "nsvisor/web/pids.current").write_text("garbage\n")
    s = V2Manager(v2_root).stats("web")
    assert s.errors == ["pids.current"]
    assert s.pids_current is None and s.pids_max == 100


def test_hybrid_stats_survive_a_missing_file_and_a_missing_hierarchy(hybrid_root: str) -> None:
    os.remove(os.path.join(hybrid_root, "memory/nsvisor/web/memory.stat"))
    shutil.rmtree(os.path.join(hybrid_root, "blkio"))
    s = V1Manager(hybrid_root).stats("web")
    assert s.errors == ["memory.stat"]
    assert s.io is None  # no blkio hierarchy: the layout cannot provide it, not an error
    assert s.memory_rss is None
    assert s.memory_usage == 50401280 and s.cpu_usage_ns == 272091338


def test_hybrid_cpu_times_fall_back_to_cpuacct_stat_ticks(hybrid_root: str) -> None:
    os.remove(os.path.join(hybrid_root, "cpuacct/nsvisor/web/cpuacct.usage_user"))
    s = V1Manager(hybrid_root).stats("web")
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert (s.cpu_user_ns, s.cpu_system_ns) == (23 * tick_ns, 4 * tick_ns)
    assert s.errors == []


# --- the small accessors -----------------------------------------------------


def test_memory_events_and_oom_kill_on_both_layouts() -> None:
    v2 = V2Manager(str(FIXTURES / "v2"))
    v1 = V1Manager(str(FIXTURES / "hybrid"))
    assert v2.oom_kill_file("web") == str(FIXTURES / "v2/nsvisor/web/memory.events")
    assert v1.oom_kill_file("web") == str(FIXTURES / "hybrid/memory/nsvisor/web/memory.oom_control")
    for m in (v1, v2):
        assert m.oom_kill_count("web") == 1
        assert m.memory_events("web")["max"] == 37
        path = m.oom_kill_file("web")
        assert path is not None and "oom_kill 1" in Path(path).read_text()
    assert "oom" not in v1.memory_events("web")  # v1 has no such counter


def test_membership_accessors_on_both_layouts() -> None:
    v2 = V2Manager(str(FIXTURES / "v2"))
    v1 = V1Manager(str(FIXTURES / "hybrid"))
    for m in (v1, v2):
        assert m.path("web") == "/nsvisor/web"
        assert m.pids("web") == [4242]
        assert m.populated("web")
        assert not m.populated("absent")
        assert m.pids("absent") == []
    assert v2.events_file("web") == str(FIXTURES / "v2/nsvisor/web/cgroup.events")
    assert v1.events_file("web") == str(FIXTURES / "hybrid/unified/nsvisor/web/cgroup.events")
