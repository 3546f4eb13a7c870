"""The issue-9 limits in both backends' pure plans and against fixture trees:
io.max / blkio.throttle.*, per-device weights, cpuset, memory.low/high,
oom_group, oom_kill_disable; resets of devices no longer named (declarative);
read_limits() reading them back. The kernel side is tests/kernel/test_limits.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from supervisor.cgroups import Limits, V1Manager, V2Manager, parse, v1, v2
from supervisor.cgroups.limits import DeviceWeight, IoThrottle
from supervisor.errors import KernelError

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
V2_FILES = {"io.max", "io.weight", "memory.low", "memory.high", "memory.oom.group", "cpuset.cpus"}


def writes_to(ws: list[object], file: str) -> list[str]:
    return [w.value for w in ws if getattr(w, "file", None) == file]


# --- parsers -------------------------------------------------------------------


def test_cpu_list_round_trip() -> None:
    assert parse.parse_cpu_list("0-3,5,7-8") == {0, 1, 2, 3, 5, 7, 8}
    assert parse.format_cpu_list({0, 1, 2, 3, 5, 7, 8}) == "0-3,5,7-8"
    assert parse.parse_cpu_list("") == frozenset()
    for bad in ("a", "1-", "3-1", "0;1"):
        with pytest.raises(ValueError):
            parse.parse_cpu_list(bad)


def test_io_max_parse_and_format() -> None:
    text = "8:16 rbps=2097152 wbps=max riops=max wiops=120\n"
    assert parse.parse_io_max(text) == {
        (8, 16): {"rbps": 2097152, "wbps": None, "riops": None, "wiops": 120}
    }
    assert parse.format_io_max(8, 16, 2097152, None, None, 120) == text.strip()
    assert parse.parse_device_keys("default 100\n8:0 200\n253:1 rbps=1") == {(8, 0), (253, 1)}


# --- v2 plan ---------------------------------------------------------------------


def test_v2_plan_writes_io_max_per_device_and_resets_the_rest() -> None:
    limits = Limits(io_throttle=(IoThrottle(7, 0, write_bps=1 << 20, read_iops=100),))
    ws = v2.plan(limits, V2_FILES, {"io.max": frozenset({(7, 0), (7, 3)})})
    assert writes_to(ws, "io.max") == [
        "7:0 rbps=max wbps=1048576 riops=100 wiops=max",
        "7:3 rbps=max wbps=max riops=max wiops=max",  # no longer named: removed
    ]
    assert [w.required for w in ws if w.file == "io.max"] == [True, False]


def test_v2_plan_memory_low_high_oom_group_and_cpuset() -> None:
    ws = v2.plan(
        Limits(memory_low=32 << 20, memory_high=48 << 20, oom_group=True, cpuset_cpus="1"),
        V2_FILES,
    )
    assert writes_to(ws, "memory.low") == [str(32 << 20)]
    assert writes_to(ws, "memory.high") == [str(48 << 20)]
    assert writes_to(ws, "memory.oom.group") == ["1"]
    assert writes_to(ws, "cpuset.cpus") == ["1"]
    # None resets: no protection, no high limit, single-process OOM, parent's cpus.
    ws = v2.plan(Limits(), V2_FILES)
    assert writes_to(ws, "memory.low") == ["0"]
    assert writes_to(ws, "memory.high") == ["max"]
    assert writes_to(ws, "memory.oom.group") == ["0"]
    assert writes_to(ws, "cpuset.cpus") == ["\n"]  # not "": a 0-byte write is a no-op
    assert not any(w.required for w in ws)


def test_v2_plan_per_device_weight_converted_and_reset() -> None:
    limits = Limits(io_weight_devices=(DeviceWeight(8, 0, 1000),))
    ws = v2.plan(limits, V2_FILES, {"io.weight": frozenset({(8, 16)})})
    assert writes_to(ws, "io.weight")[1:] == ["8:0 10000", "8:16 default"]
    bfq = v2.plan(limits, {"io.bfq.weight"}, {"io.bfq.weight": frozenset()})
    assert writes_to(bfq, "io.bfq.weight")[1:] == ["8:0 1000"]  # BFQ takes Docker's units


def test_v2_oom_kill_disable_is_a_clear_error() -> None:
    with pytest.raises(KernelError, match="oom_kill_disable is not supported on cgroup v2"):
        v2.plan(Limits(oom_kill_disable=True), V2_FILES)


# --- v1 plan ---------------------------------------------------------------------


def test_v1_plan_throttle_files_set_and_reset() -> None:
    limits = Limits(io_throttle=(IoThrottle(7, 0, write_bps=1 << 20, write_iops=50),))
    now = {"blkio.throttle.read_bps_device": frozenset({(7, 3)})}
    ws = v1.plan(limits, set(), None, now)
    assert writes_to(ws, "blkio.throttle.write_bps_device") == ["7:0 1048576"]
    assert writes_to(ws, "blkio.throttle.write_iops_device") == ["7:0 50"]
    assert writes_to(ws, "blkio.throttle.read_bps_device") == ["7:3 0"]  # reset
    assert writes_to(ws, "blkio.throttle.read_iops_device") == []


def test_v1_plan_soft_limit_oom_control_and_cpuset_from_parent() -> None:
    parent = {"cpuset.cpus": "0-1", "cpuset.mems": "0"}
    ws = v1.plan(
        Limits(memory_low=16 << 20, oom_kill_disable=True, cpuset_cpus="1"), set(), None, {}, parent
    )
    assert writes_to(ws, "memory.soft_limit_in_bytes") == [str(16 << 20)]
    assert writes_to(ws, "memory.oom_control") == ["1"]
    assert writes_to(ws, "cpuset.cpus") == ["1"]
    assert writes_to(ws, "cpuset.mems") == ["0"]  # the parent's: v1 has no "inherit"
    ws = v1.plan(Limits(), set(), None, {}, parent)
    assert writes_to(ws, "memory.soft_limit_in_bytes") == ["-1"]
    assert writes_to(ws, "memory.oom_control") == ["0"]
    assert writes_to(ws, "cpuset.cpus") == ["0-1"]


@pytest.mark.parametrize("limits", [Limits(memory_high=1 << 20), Limits(oom_group=True)])
def test_v1_v2_only_limits_are_clear_errors(limits: Limits) -> None:
    with pytest.raises(KernelError, match="needs cgroup v2"):
        v1.plan(limits, set(), None)


def test_v1_plan_weight_device_prefers_cfq_file_then_bfq() -> None:
    limits = Limits(io_weight_devices=(DeviceWeight(8, 0, 300),))
    bfq = v1.plan(
        limits, {"blkio.bfq.weight_device"}, None, {"blkio.bfq.weight_device": frozenset({(8, 16)})}
    )
    assert writes_to(bfq, "blkio.bfq.weight_device") == ["8:0 300", "8:16 default"]


# --- fixture trees -------------------------------------------------------------


def test_v2_fixture_create_and_read_back(tmp_path: Path) -> None:
    root = tmp_path / "v2"
    shutil.copytree(FIXTURES / "v2", root)
    web = root / "nsvisor" / "web"
    for f in ("cpuset.cpus", "cpuset.mems"):
        (web / f).write_text("")
    (web / "io.max").write_text("7:3 rbps=1 wbps=max riops=max wiops=max\n")
    m = V2Manager(str(root))
    limits = Limits(
        io_throttle=(IoThrottle(7, 0, write_bps=1 << 20),),
        memory_low=8 << 20,
        memory_high=32 << 20,
        oom_group=True,
        cpuset_cpus="0",
    )
    m.create("web", limits)
    # A fixture file keeps only the last write; the kernel would merge lines.
    assert (web / "io.max").read_text() == "7:3 rbps=max wbps=max riops=max wiops=max"
    (web / "io.max").write_text("7:0 rbps=max wbps=1048576 riops=max wiops=max\n")
    got = m.read_limits("web")
    assert got.io_throttle == (IoThrottle(7, 0, None, 1 << 20, None, None),)
    assert (got.memory_low, got.memory_high, got.oom_group, got.cpuset_cpus) == (
        8 << 20,
        32 << 20,
        True,
        "0",
    )


def test_v1_fixture_cpuset_initialised_from_the_parent(tmp_path: Path) -> None:
    root = tmp_path / "hybrid"
    shutil.copytree(FIXTURES / "hybrid", root)
    cpuset = root / "cpuset"
    (cpuset / "nsvisor" / "web").mkdir(parents=True)
    (cpuset / "cpuset.cpus").write_text("0-1\n")
    (cpuset / "cpuset.mems").write_text("0\n")
    for d in (cpuset / "nsvisor", cpuset / "nsvisor" / "web"):
        for f in ("cpuset.cpus", "cpuset.mems", "cgroup.procs"):
            (d / f).write_text("")
    m = V1Manager(str(root))
    assert str(cpuset / "nsvisor" / "web" / "cgroup.procs") in m.procs_files("web")
    m.create("web", Limits(cpuset_cpus="1", memory_low=4 << 20))
    assert (cpuset / "nsvisor" / "cpuset.cpus").read_text() == "0-1"
    assert (cpuset / "nsvisor" / "web" / "cpuset.cpus").read_text() == "1"
    assert (cpuset / "nsvisor" / "web" / "cpuset.mems").read_text() == "0"
    got = m.read_limits("web")
    assert (got.cpuset_cpus, got.cpuset_mems, got.memory_low) == ("1", "0", 4 << 20)
    m.update("web", Limits())
    assert (cpuset / "nsvisor" / "web" / "cpuset.cpus").read_text() == "0-1"
