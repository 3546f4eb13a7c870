"""The cgroup v2 VM of tests/vm/run.sh is what it promises.

The cgroup checks run on any pure cgroup v2 host (the ``cgroup2`` marker skips
them elsewhere); the checks of the VM's own set-up (scratch disk, mounts,
hostname, read-only host root) run only inside the VM.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_vm

CG = Path("/sys/fs/cgroup")
CGROUP2_SUPER_MAGIC = 0x63677270
WANTED_CONTROLLERS = {"cpu", "cpuset", "io", "memory", "pids"}
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cgroup2
vm_only = pytest.mark.skipif(not in_vm(), reason="checks the VM of tests/vm/run.sh")


def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) of /proc/self/mounts, in mount order."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        src, target, fstype, *_ = line.split()
        out.append((src, target.replace("\\040", " "), fstype))
    return out


def fstype_of(path: str) -> str:
    found = [fs for _, target, fs in mounts() if target == path]
    assert found, f"nothing mounted at {path}"
    return found[-1]


def statfs_magic(path: str) -> int:
    """f_type of statfs(2) (Python has no os.statfs)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value  # f_type is the first field


def kv(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file such as memory.events: {"oom_kill": 1, ...}."""
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def run_in(
    cgroup: Path, argv: list[str], timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run argv with the child process placed in *cgroup* before it execs."""

    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    return subprocess.run(argv, preexec_fn=join, capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def cgroup(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh child of the root cgroup with cpu, io, memory and pids enabled."""
    (CG / "cgroup.subtree_control").write_text("+cpu +io +memory +pids")
    path = CG / f"nsvisor-vmcheck-{os.getpid()}-{request.node.name}"
    path.mkdir()
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        for _ in range(200):
            try:
                path.rmdir()
                break
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                time.sleep(0.05)
        assert not path.exists(), f"could not remove {path}"


# ---- the cgroup v2 hierarchy ------------------------------------------------------


def test_sys_fs_cgroup_is_cgroup2() -> None:
    assert fstype_of(str(CG)) == "cgroup2"
    assert statfs_magic(str(CG)) == CGROUP2_SUPER_MAGIC


def test_root_has_all_controllers() -> None:
    controllers = set((CG / "cgroup.controllers").read_text().split())
    assert controllers >= WANTED_CONTROLLERS, controllers


def test_no_cgroup_v1_hierarchy() -> None:
    v1 = [(target, fs) for _, target, fs in mounts() if fs == "cgroup"]
    assert not v1, f"cgroup v1 hierarchies mounted: {v1}"
    # /proc/cgroups: every controller is on the default (v2) hierarchy, id 0
    rows = [
        line.split()
        for line in Path("/proc/cgroups").read_text().splitlines()
        if not line.startswith("#")
    ]
    on_v1 = [name for name, hierarchy, *_ in rows if hierarchy != "0"]
    assert not on_v1, f"controllers bound to a v1 hierarchy: {on_v1}"
    assert Path("/proc/self/cgroup").read_text().startswith("0::/")


def test_psi_enabled() -> None:
    for res in ("cpu", "memory", "io"):
        text = Path(f"/proc/pressure/{res}").read_text()  # EOPNOTSUPP without psi=1
        assert text.startswith("some avg10="), text


def test_child_cgroup_files(cgroup: Path) -> None:
    controllers = set((cgroup / "cgroup.controllers").read_text().split())
    assert controllers >= {"cpu", "io", "memory", "pids"}, controllers
    for name in (
        "memory.events",
        "memory.max",
        "memory.current",
        "cpu.max",
        "cpu.stat",
        "io.stat",
        "pids.max",
        "cgroup.kill",
        "cgroup.events",
        "cpu.pressure",
        "memory.pressure",
        "io.pressure",
    ):
        assert (cgroup / name).exists(), name
    assert set(kv(cgroup / "memory.events")) >= {"low", "high", "max", "oom", "oom_kill"}
    assert kv(cgroup / "cgroup.events")["populated"] == 0


def test_memory_max_oom_kills(cgroup: Path) -> None:
    (cgroup / "memory.max").write_text(str(32 << 20))
    (cgroup / "memory.swap.max").write_text("0")
    p = run_in(cgroup, [sys.executable, "-c", "b = bytearray(128 << 20); b[::4096] = b'x' * 32768"])
    assert p.returncode == -signal.SIGKILL, p
    assert kv(cgroup / "memory.events")["oom_kill"] >= 1


# ---- the VM's own set-up ----------------------------------------------------------


@vm_only
def test_scratch_disk_io_is_accounted(cgroup: Path) -> None:
    dev = Path("/sys/block/vda/dev")
    assert dev.exists() and Path("/dev/vda").exists(), "no scratch disk at /dev/vda"
    majmin = dev.read_text().strip()
    p = run_in(
        cgroup,
        ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M", "count=4", "oflag=direct", "status=none"],
    )
    assert p.returncode == 0, p
    stats = {}
    for line in (cgroup / "io.stat").read_text().splitlines():
        device, *fields = line.split()
        stats[device] = {k: int(v) for k, v in (f.split("=") for f in fields)}
    assert majmin in stats, f"no io.stat line for vda ({majmin}): {stats}"
    assert stats[majmin]["wbytes"] >= 4 << 20, stats[majmin]
    assert stats[majmin]["wios"] >= 1, stats[majmin]


@vm_only
def test_kernel_is_booted_for_pure_v2() -> None:
    cmdline = Path("/proc/cmdline").read_text().split()
    assert "cgroup_no_v1=all" in cmdline and "psi=1" in cmdline, cmdline


@vm_only
def test_system_mounts() -> None:
    assert fstype_of("/") == "9p"
    assert fstype_of("/dev/pts") == "devpts"
    assert fstype_of("/dev/shm") == "tmpfs"
    assert fstype_of("/run") == "tmpfs"
    assert fstype_of("/tmp") in ("overlay", "tmpfs")
    assert fstype_of("/proc") == "proc"
    assert fstype_of("/sys") == "sysfs"
    for fd in os.openpty():  # a pty can be allocated
        os.close(fd)


@vm_only
def test_writable_scratch_read_only_host(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("ok")  # pytest's tmp dirs live in the writable /tmp
    for d in ("/run", "/dev/shm", "/var/tmp"):
        assert os.access(d, os.W_OK), d
    probes = [Path("/etc")]
    if not REPO.is_relative_to("/tmp") and not REPO.is_relative_to("/var/tmp"):
        probes.append(REPO)  # (under /tmp the checkout is in the writable overlay)
    for probe in probes:
        with pytest.raises(OSError) as exc:
            (probe / f".vm-write-probe-{os.getpid()}").write_text("x")
        assert exc.value.errno == errno.EROFS, probe


@vm_only
def test_network_and_identity() -> None:
    assert socket.gethostname() == "nsvisor-vm"
    flags = int(Path("/sys/class/net/lo/flags").read_text(), 16)
    assert flags & 0x1, "lo is down"  # IFF_UP
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname(), timeout=10):
            pass


@vm_only
def test_host_tools_visible() -> None:
    assert os.access("/bin/busybox", os.X_OK)
    assert Path(sys.executable).resolve().exists()
    assert os.environ.get("PYTHONDONTWRITEBYTECODE") == "1"
    out = subprocess.run(
        ["/bin/busybox", "echo", "ok"], capture_output=True, text=True, check=True
    ).stdout
    assert out == "ok\n"
    assert Path("/lib/modules", os.uname().release).is_dir()
