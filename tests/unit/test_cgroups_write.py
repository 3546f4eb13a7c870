"""create(), update() and read_limits() against fixture trees in tmp_path:
which value lands in which file on each layout, and what happens on errors.

A plain directory is not cgroupfs: mkdir does not populate it. So the
cgroup "web" is copied in beforehand (create() then reapplies limits to an
existing cgroup, as it does on the kernel), and a brand-new name exercises the
missing-file error and the rollback of the directories create() made."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from supervisor.cgroups import Limits, V1Manager, V2Manager, v1, v2
from supervisor.errors import KernelError

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
HIERARCHIES = ("blkio", "cpu", "cpuacct", "freezer", "memory", "pids", "unified")


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "v2"
    shutil.copytree(FIXTURES / "v2", root)
    # start from a root whose controllers are not yet enabled for children
    (root / "cgroup.subtree_control").write_text("")
    (root / "nsvisor" / "cgroup.subtree_control").write_text("")
    return root


@pytest.fixture
def hybrid_root(tmp_path: Path) -> Path:
    root = tmp_path / "hybrid"
    shutil.copytree(FIXTURES / "hybrid", root)
    return root


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


# --- v2 ----------------------------------------------------------------------


def test_v2_create_writes_every_limit_and_enables_controllers_top_down(v2_root: Path) -> None:
    V2Manager(str(v2_root)).create(
        "web",
        Limits(
            memory_max=64 << 20,
            swap_max=0,
            cpu_quota_us=50_000,  # --cpus 0.5
            cpu_shares=512,
            pids_max=8,
            io_weight=500,
        ),
    )
    web = "nsvisor/web/"
    assert read(v2_root, "cgroup.subtree_control") == "+cpu +cpuset +io +memory +pids"
    assert read(v2_root, "nsvisor/cgroup.subtree_control") == "+cpu +io +memory +pids"
    assert read(v2_root, web + "memory.max") == str(64 << 20)
    assert read(v2_root, web + "memory.swap.max") == "0"
    assert read(v2_root, web + "cpu.max") == "50000 100000"
    assert read(v2_root, web + "cpu.weight") == "20"  # 1 + (512-2)*9999//262142
    assert read(v2_root, web + "pids.max") == "8"
    assert read(v2_root, web + "io.weight") == "default 4950"


def test_v2_none_fields_reset_to_unlimited_and_defaults(v2_root: Path) -> None:
    m = V2Manager(str(v2_root))
    m.update("web", Limits(cpu_period_us=50_000))
    web = "nsvisor/web/"
    assert read(v2_root, web + "memory.max") == "max"
    assert read(v2_root, web + "memory.swap.max") == "max"
    assert read(v2_root, web + "cpu.max") == "max 50000"
    assert read(v2_root, web + "cpu.weight") == "100"
    assert read(v2_root, web + "pids.max") == "max"
    assert read(v2_root, web + "io.weight") == "default 100"
    # io.weight 100 (the v2 default) has no exact Docker-unit preimage; the
    # inverse rounds up to 20.
    assert m.read_limits("web") == Limits(cpu_period_us=50_000, cpu_weight=100, io_weight=20)


def test_v2_native_weight_wins_over_shares(v2_root: Path) -> None:
    V2Manager(str(v2_root)).update("web", Limits(cpu_shares=512, cpu_weight=250))
    assert read(v2_root, "nsvisor/web/cpu.weight") == "250"


def test_v2_swap_minus_one_means_unlimited(v2_root: Path) -> None:
    V2Manager(str(v2_root)).update("web", Limits(memory_max=1 << 30, swap_max=-1))
    assert read(v2_root, "nsvisor/web/memory.swap.max") == "max"


def test_v2_falls_back_to_bfq_weight_in_docker_units(v2_root: Path) -> None:
    os.remove(v2_root / "nsvisor/web/io.weight")
    (v2_root / "nsvisor/web/io.bfq.weight").write_text("default 100\n")
    m = V2Manager(str(v2_root))
    m.update("web", Limits(io_weight=300))
    assert read(v2_root, "nsvisor/web/io.bfq.weight") == "300"
    assert m.read_limits("web").io_weight == 300


def test_v2_read_limits_round_trips(v2_root: Path) -> None:
    m = V2Manager(str(v2_root))
    limits = Limits(
        memory_max=64 << 20,
        swap_max=16 << 20,
        cpu_quota_us=25_000,
        cpu_period_us=50_000,
        cpu_weight=300,
        pids_max=32,
        io_weight=700,
    )
    m.update("web", limits)
    assert m.read_limits("web") == limits


def test_v2_missing_weight_file_names_file_and_fix_and_keeps_existing_cgroup(
    v2_root: Path,
) -> None:
    os.remove(v2_root / "nsvisor/web/io.weight")
    with pytest.raises(KernelError) as e:
        V2Manager(str(v2_root)).create("web", Limits(io_weight=300))
    msg = str(e.value)
    assert f"io.weight missing in {v2_root}/nsvisor/web" in msg
    assert "no weight support on this device/scheduler; remove io_weight" in msg
    assert e.value.path == f"{v2_root}/nsvisor/web/io.weight"
    assert (v2_root / "nsvisor/web").is_dir()  # existed before: not ours to remove


def test_v2_missing_io_weight_is_fine_when_io_weight_is_unset(v2_root: Path) -> None:
    os.remove(v2_root / "nsvisor/web/io.weight")
    V2Manager(str(v2_root)).update("web", Limits(memory_max=1 << 20))
    assert read(v2_root, "nsvisor/web/memory.max") == str(1 << 20)


def test_v2_create_rolls_back_the_directories_it_made(v2_root: Path) -> None:
    with pytest.raises(KernelError) as e:
        V2Manager(str(v2_root)).create("api", Limits(memory_max=1 << 20))
    assert "memory.max missing" in str(e.value)
    assert "memory controller is not enabled in" in str(e.value)
    assert not (v2_root / "nsvisor/api").exists()
    assert (v2_root / "nsvisor").is_dir()


def test_v2_update_of_an_absent_cgroup_fails(v2_root: Path) -> None:
    with pytest.raises(KernelError, match="does not exist"):
        V2Manager(str(v2_root)).update("absent", Limits())


def test_v2_plan_is_pure_and_marks_only_set_fields_required() -> None:
    writes = {w.file: w for w in v2.plan(Limits(pids_max=4), {"io.weight"})}
    assert writes["pids.max"].required and writes["pids.max"].value == "4"
    assert not writes["memory.max"].required
    assert not writes["io.weight"].required


# --- v1 / hybrid ---------------------------------------------------------------


def test_v1_create_writes_every_limit(hybrid_root: Path) -> None:
    V1Manager(str(hybrid_root)).create(
        "web",
        Limits(
            memory_max=32 << 20,
            swap_max=16 << 20,
            cpu_quota_us=50_000,
            cpu_weight=20,
            pids_max=8,
            io_weight=300,
        ),
    )
    assert read(hybrid_root, "memory/nsvisor/web/memory.limit_in_bytes") == str(32 << 20)
    assert read(hybrid_root, "memory/nsvisor/web/memory.memsw.limit_in_bytes") == str(48 << 20)
    assert read(hybrid_root, "cpu/nsvisor/web/cpu.cfs_quota_us") == "50000"
    assert read(hybrid_root, "cpu/nsvisor/web/cpu.cfs_period_us") == "100000"
    assert (
        read(hybrid_root, "cpu/nsvisor/web/cpu.shares") == "501"
    )  # weight 20 -> shares, rounded up
    assert read(hybrid_root, "pids/nsvisor/web/pids.max") == "8"
    # no blkio.weight (CFQ is gone), so BFQ's file, in Docker units
    assert read(hybrid_root, "blkio/nsvisor/web/blkio.bfq.weight") == "300"


def test_v1_none_fields_reset_to_unlimited_and_defaults(hybrid_root: Path) -> None:
    m = V1Manager(str(hybrid_root))
    m.update("web", Limits())
    assert read(hybrid_root, "memory/nsvisor/web/memory.limit_in_bytes") == "-1"
    assert read(hybrid_root, "memory/nsvisor/web/memory.memsw.limit_in_bytes") == "-1"
    assert read(hybrid_root, "cpu/nsvisor/web/cpu.cfs_quota_us") == "-1"
    assert read(hybrid_root, "cpu/nsvisor/web/cpu.shares") == "1024"
    assert read(hybrid_root, "pids/nsvisor/web/pids.max") == "max"
    assert m.read_limits("web") == Limits(cpu_shares=1024, io_weight=100)


def test_v1_read_limits_round_trips(hybrid_root: Path) -> None:
    m = V1Manager(str(hybrid_root))
    limits = Limits(
        memory_max=64 << 20,
        swap_max=0,
        cpu_quota_us=25_000,
        cpu_period_us=50_000,
        cpu_shares=300,
        pids_max=32,
        io_weight=700,
    )
    m.update("web", limits)
    assert m.read_limits("web") == limits


def test_v1_memsw_goes_first_when_memory_rises_above_it() -> None:
    """The kernel keeps memory.limit <= memsw.limit after every single write."""
    files = {"memory.memsw.limit_in_bytes"}
    raise_ = v1.plan(Limits(memory_max=300, swap_max=100), files, current_memsw=200)
    lower = v1.plan(Limits(memory_max=50, swap_max=10), files, current_memsw=200)
    unlimit = v1.plan(Limits(), files, current_memsw=200)
    first_two = [[w.file for w in p[:2]] for p in (raise_, lower, unlimit)]
    assert first_two == [
        ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"],
        ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
        ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"],
    ]
    assert [w.value for w in raise_[:2]] == ["400", "300"]


def test_v1_swap_without_memsw_names_swap_accounting(hybrid_root: Path) -> None:
    os.remove(hybrid_root / "memory/nsvisor/web/memory.memsw.limit_in_bytes")
    m = V1Manager(str(hybrid_root))
    with pytest.raises(
        KernelError, match=r"memory.memsw.limit_in_bytes missing in .*swapaccount=1"
    ):
        m.update("web", Limits(memory_max=1 << 20, swap_max=0))
    m.update("web", Limits(memory_max=1 << 20, swap_max=-1))  # unlimited swap: no memsw needed


def test_v1_swap_without_memory_cannot_be_expressed(hybrid_root: Path) -> None:
    with pytest.raises(KernelError, match="set memory_max too or remove swap_max"):
        V1Manager(str(hybrid_root)).update("web", Limits(swap_max=1 << 20))


def test_v1_missing_hierarchy_names_the_mount_and_the_field(hybrid_root: Path) -> None:
    shutil.rmtree(hybrid_root / "pids")
    m = V1Manager(str(hybrid_root))
    m.update("web", Limits(memory_max=1 << 20))  # pids not needed: fine
    with pytest.raises(KernelError, match=r"pids controller is not mounted .*remove pids_max"):
        m.update("web", Limits(pids_max=10))


def test_v1_create_rolls_back_every_directory_it_made(hybrid_root: Path) -> None:
    m = V1Manager(str(hybrid_root), parent="fresh")
    with pytest.raises(KernelError, match=r"memory\.limit_in_bytes missing"):
        m.create("api", Limits(memory_max=1 << 20))
    for h in HIERARCHIES:
        assert not (hybrid_root / h / "fresh").exists(), h
        assert (hybrid_root / h / "nsvisor/web").is_dir(), h


def test_v1_create_of_new_cgroup_without_limits_makes_dirs_everywhere(hybrid_root: Path) -> None:
    """With every field None only optional resets are planned, and in an
    empty directory they are all skipped."""
    m = V1Manager(str(hybrid_root), parent="a/b")
    m.create("api", Limits())
    for h in HIERARCHIES:
        assert (hybrid_root / h / "a/b/api").is_dir(), h
    m.remove_parent()
    for h in HIERARCHIES:
        assert not (hybrid_root / h / "a/b").exists(), h
        assert (hybrid_root / h / "a").is_dir(), h  # only the parent's last component goes
