"""Escape attempts from inside a default container, each asserting it is
blocked. A "default container" here is what the daemon starts: the default
capabilities, the default seccomp profile, no_new_privs, a cgroup with the
default device policy and a memory limit, the read-only /proc/sys and /sys,
the masked paths, a non-dumpable monitor as PID 1.

Every attempt runs inside the container and only reads if it succeeds; the
host itself is never the target of anything. What busybox cannot do (ptrace,
finit_module, the chroot climb, clone with namespace flags, bpf, ...) is done
by a small static C helper (tests/kernel/helpers/escape.c) compiled on the
host with gcc at test time into this module's own copy of the rootfs.

Where a test blocks something that would otherwise work, a counter-check
(unconfined, or with the capability) shows that it is the mechanism under
test that blocks it, not a missing tool.

Every attempt runs twice: with the host's user namespace (the default) and
with --userns=auto's (a user namespace mapping container root to an
unprivileged host range, its own copy of the rootfs).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.cgroups import CgroupManager, Limits, open_manager
from supervisor.runtime.caps import CAPABILITIES, DEFAULT_CAPS
from supervisor.runtime.devices import DeviceMapping, rules_for
from supervisor.runtime.rootfs import build_busybox_rootfs
from supervisor.runtime.spec import DeviceNode, IdMap

from .conftest import Launcher, Run

pytestmark = pytest.mark.kernel

HELPER = "/bin/nsv-escape"
HELPER_SRC = Path(__file__).parent / "helpers" / "escape.c"
MEMORY_LIMIT = 64 * 1024 * 1024


# --userns=auto's variant: a range far from any real user's (no subuid file
# is involved below the daemon; the kernel only needs ids nobody uses).
USERNS = IdMap(uid=1_000_000_000, gid=1_000_000_000, size=65536)


def _escape_rootfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bool]:
    dest = str(tmp_path_factory.mktemp("escape") / "rootfs")
    build_busybox_rootfs(dest)
    gcc = shutil.which("gcc")
    built = False
    if gcc:
        r = subprocess.run(
            [gcc, "-static", "-O2", "-o", dest + HELPER, str(HELPER_SRC)],
            capture_output=True,
            text=True,
        )
        built = r.returncode == 0
    return dest, built


@pytest.fixture(scope="module")
def escape_rootfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bool]:
    """(rootfs, helper_built): a busybox rootfs of this module's own, with the
    escape helper in /bin when gcc can build it statically."""
    return _escape_rootfs(tmp_path_factory)


@pytest.fixture(scope="module")
def escape_rootfs_userns(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bool]:
    """The same for the user namespace variant (on a filesystem without
    idmapped mounts it is chowned into USERNS's range)."""
    return _escape_rootfs(tmp_path_factory)


class Secure:
    """Starts containers as the daemon does: in a cgroup of a unique parent
    with the default device policy and a memory limit. Cleans up its cgroups
    and processes, also when a test fails."""

    def __init__(self, launcher: Launcher, helper: bool, idmap: IdMap | None = None) -> None:
        self.launcher = launcher
        self.helper = helper
        self.idmap = idmap
        self.parent = f"nsvisor-esc-{os.getpid()}-{secrets.token_hex(3)}"
        self.m: CgroupManager = open_manager("/sys/fs/cgroup", self.parent)
        self.names: list[str] = []

    def cgroup(self, devices: tuple[DeviceMapping, ...] = ()) -> tuple[str, tuple[str, ...]]:
        name = f"c{len(self.names)}"
        self.names.append(name)
        self.m.create(name, Limits(memory_max=MEMORY_LIMIT))
        self.m.set_devices(name, rules_for(devices))
        return name, tuple(self.m.procs_files(name))

    def run(self, script: str, grant: tuple[DeviceMapping, ...] = (), **kw: Any) -> Run:
        _, procs = self.cgroup(grant)
        return self.launcher.run(script, cgroup_procs=procs, idmap=self.idmap, **kw)

    def attempt(self, *args: str, **kw: Any) -> Run:
        if not self.helper:
            pytest.skip("no static C toolchain (gcc + libc.a) to build the escape helper")
        return self.run(" ".join((HELPER, *args)), **kw)

    def cleanup(self) -> None:
        self.launcher.cleanup()
        for name in self.names:
            with contextlib.suppress(Exception):
                self.m.kill(name, 5)
        with contextlib.suppress(Exception):
            self.m.remove_parent()


@pytest.fixture(params=["host", "userns"])
def secure(request: pytest.FixtureRequest, tmp_path: Path, subreaper: None) -> Iterator[Secure]:
    if request.param == "host":
        rootfs, helper = request.getfixturevalue("escape_rootfs")
        s = Secure(Launcher(rootfs, tmp_path), helper)
    else:
        rootfs, helper = request.getfixturevalue("escape_rootfs_userns")
        s = Secure(Launcher(rootfs, tmp_path), helper, USERNS)
    try:
        yield s
    finally:
        s.cleanup()


def _blocked(r: Run) -> None:
    assert "ESCAPED" not in r.stdout, r.stdout
    assert r.stdout.startswith("blocked:"), (r.stdout, r.stderr)
    assert r.exit["exit_code"] == 0


# --- mounts ------------------------------------------------------------------


def test_mount_is_blocked(secure: Secure) -> None:
    r = secure.run("mount -t tmpfs x /mnt; echo rc=$?; mount --bind / /mnt; echo rc=$?")
    assert "rc=0" not in r.stdout, r.stdout
    assert "permission denied" in r.stderr.lower(), r.stderr


def test_remount_read_write_is_blocked(secure: Secure) -> None:
    r = secure.run(
        "mount -o remount,rw /proc/sys; echo rc=$?; mount -o remount,rw /sys; echo rc=$?;"
        " echo 1 > /proc/sys/kernel/sysrq; echo w=$?",
    )
    assert "rc=0" not in r.stdout and "w=0" not in r.stdout, r.stdout


def test_user_namespace_then_mount_is_blocked(secure: Secure) -> None:
    """The one escape Docker-like settings leave open without seccomp."""
    r = secure.run("unshare -U -r -m mount -t tmpfs x /mnt && echo mounted; echo rc=$?")
    assert "mounted" not in r.stdout
    _blocked(secure.attempt("userns-mount"))
    _blocked(secure.attempt("clone-userns"))


def test_user_namespace_counter_check(secure: Secure) -> None:
    """Unconfined, the same helper does get a user namespace: the filter is
    what blocks it above (the mount inside may still fail on other grounds)."""
    r = secure.attempt("clone-userns", seccomp="unconfined")
    if "Operation not permitted" in r.stdout:
        pytest.skip(
            "this kernel refuses user namespaces to a process without CAP_SYS_ADMIN even"
            " unconfined (e.g. Debian's kernel.unprivileged_userns_clone=0): no counter-check"
        )
    assert "ESCAPED" in r.stdout


def test_pivot_root_and_chroot_climb_stay_inside(secure: Secure, tmp_path: Path) -> None:
    """pivot_root is refused; the classic chroot climb (chroot into a subdir,
    chdir .. many times, chroot .) ends at the container's root, since the
    host's root was detached after pivot_root. A marker file that only exists
    on the host is not visible."""
    marker = tmp_path / "host-only-marker"
    marker.write_text("host\n")
    r = secure.run("mkdir -p /tmp/new/old && pivot_root /tmp/new /tmp/new/old; echo rc=$?")
    assert "rc=0" not in r.stdout
    _blocked(secure.attempt("chroot", str(marker)))


# --- devices -----------------------------------------------------------------


def _host_block_device() -> tuple[int, int]:
    """major:minor of the block device under the host's / (or of any block
    device), read-only inspection on the host."""
    dev = os.stat("/").st_dev
    majmin = (os.major(dev), os.minor(dev))
    if os.path.exists(f"/sys/dev/block/{majmin[0]}:{majmin[1]}"):
        return majmin
    for entry in sorted(os.listdir("/sys/dev/block")):
        major, minor = entry.split(":")
        return int(major), int(minor)
    pytest.skip("no block device on this host")


@pytest.mark.cgroups
def test_mknod_and_read_of_a_block_device_is_blocked(secure: Secure) -> None:
    """Container root has CAP_MKNOD, but the device policy refuses the node
    (mknod EPERM); reading through it never happens."""
    major, minor = _host_block_device()
    r = secure.run(
        f"mknod /tmp/disk b {major} {minor}; echo mknod=$?; head -c 512 /tmp/disk | wc -c; echo end"
    )
    assert "mknod=0" not in r.stdout, r.stdout
    assert "Operation not permitted" in r.stderr


@pytest.mark.cgroups
def test_dev_kmsg_is_not_reachable(secure: Secure) -> None:
    r = secure.run(
        "cat /dev/kmsg; echo a=$?; mknod /tmp/kmsg c 1 11; echo b=$?; head -c 64 /tmp/kmsg; echo c=$?"
    )
    assert r.stdout.splitlines()[:2] == ["a=1", "b=1"], (r.stdout, r.stderr)


@pytest.mark.cgroups
def test_default_devices_still_work_under_the_policy(secure: Secure) -> None:
    r = secure.run(
        "head -c 8 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok; "
        "head -c 4 /dev/zero | wc -c; mknod /tmp/n c 1 3 && echo mknod-null-ok"
    )
    if secure.idmap is None:
        assert r.stdout.split() == ["8", "null-ok", "4", "mknod-null-ok"], r.stderr
    else:  # mknod needs CAP_MKNOD in the host's user namespace: none at all
        assert r.stdout.split() == ["8", "null-ok", "4"], r.stderr
        assert "mknod: /tmp/n: Operation not permitted" in r.stderr


@pytest.mark.cgroups
def test_a_granted_device_is_usable_and_only_it(secure: Secure, tmp_path: Path) -> None:
    """--device: a loop device of the test's own (backed by a file with a known
    pattern) is created in the container's /dev and readable; another minor of
    the same driver stays blocked."""
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"nsvisor-loop-data" + b"\0" * (1024 * 1024 - 17))
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(backing)],
        capture_output=True,
        text=True,
    )
    if loop.returncode != 0:
        pytest.skip(f"cannot set up a loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    try:
        st = os.stat(dev)
        mapping = DeviceMapping(
            dev, "/dev/xvdb", "r", "b", os.major(st.st_rdev), os.minor(st.st_rdev)
        )
        node = DeviceNode(path="/dev/xvdb", type="b", major=mapping.major, minor=mapping.minor)
        other = mapping.minor + 1
        r = secure.run(
            f"head -c 17 /dev/xvdb; echo; echo x > /dev/xvdb; echo w=$?; "
            f"mknod /tmp/other b {mapping.major} {other}; echo other=$?",
            grant=(mapping,),
            devices=(node,),
        )
        lines = r.stdout.splitlines()
        assert lines[0] == "nsvisor-loop-data", (r.stdout, r.stderr)
        assert "w=0" not in r.stdout and "other=0" not in r.stdout, r.stdout
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


# --- /proc and PID 1 -----------------------------------------------------------


def test_proc_1_root_fd_environ_are_denied(secure: Secure) -> None:
    """PID 1 is the monitor: non-dumpable, so its root, its fds and its
    environment are out of reach even for container root with
    CAP_DAC_OVERRIDE. (Listing /proc/1/fd shows fd *numbers*: the directory's
    mode is all that guards that, as with Docker; following or opening one
    needs ptrace access, which a non-dumpable process refuses.)"""
    r = secure.run(
        "ls /proc/1/root/; echo root=$?; cat /proc/1/environ; echo env=$?; "
        "readlink /proc/1/exe; echo exe=$?; readlink /proc/1/cwd; echo cwd=$?; "
        "n=0; for f in /proc/1/fd/*; do readlink $f && n=$((n+1)); cat $f </dev/null && n=$((n+1)); done; "
        "echo fds=$n"
    )
    for key in ("root", "env", "exe", "cwd"):
        assert f"{key}=0" not in r.stdout, r.stdout
    assert "fds=0" in r.stdout, r.stdout
    assert "Permission denied" in r.stderr


def test_ptrace_of_pid_1_is_blocked(secure: Secure) -> None:
    _blocked(secure.attempt("ptrace"))


def test_setns_into_pid_1s_namespaces_is_blocked(secure: Secure) -> None:
    _blocked(secure.attempt("setns"))


# --- kernel interfaces ---------------------------------------------------------


def test_proc_sys_and_sysrq_are_read_only(secure: Secure) -> None:
    r = secure.run(
        "echo 1 > /proc/sys/kernel/sysrq; echo a=$?; echo h > /proc/sysrq-trigger; echo b=$?; "
        "echo /x > /proc/sys/kernel/core_pattern; echo c=$?"
    )
    assert r.stdout.split() == ["a=1", "b=1", "c=1"], (r.stdout, r.stderr)


def test_sys_is_read_only(secure: Secure) -> None:
    r = secure.run(
        "echo /x > /sys/kernel/uevent_helper; echo a=$?; echo 1 > /sys/kernel/profiling; echo b=$?"
    )
    assert "a=0" not in r.stdout and "b=0" not in r.stdout


@pytest.mark.cgroups
def test_own_cgroup_limit_cannot_be_raised(secure: Secure) -> None:
    """The cgroup filesystem is not mounted inside, cannot be mounted (v1 or
    v2), and the host sees the limit unchanged afterwards."""
    name, procs = secure.cgroup()
    r = secure.launcher.run(
        "ls /sys/fs/cgroup | wc -l; "
        "mount -t cgroup -o memory cgroup /mnt; echo v1=$?; mount -t cgroup2 cgroup2 /mnt; echo v2=$?; "
        "echo 1073741824 > /sys/fs/cgroup/memory/memory.limit_in_bytes; echo w1=$?; "
        "echo max > /sys/fs/cgroup/memory.max; echo w2=$?",
        cgroup_procs=procs,
    )
    lines = r.stdout.split()
    assert lines[0] == "0", r.stdout
    assert (
        "v1=0" not in lines and "v2=0" not in lines and "w1=0" not in lines and "w2=0" not in lines
    )
    assert secure.m.read_limits(name).memory_max == MEMORY_LIMIT


def test_kernel_module_load_is_blocked(secure: Secure) -> None:
    r = secure.run("touch /tmp/x.ko; insmod /tmp/x.ko; echo rc=$?")
    assert "rc=0" not in r.stdout
    _blocked(secure.attempt("module"))


def test_clock_change_is_blocked(secure: Secure) -> None:
    before = time.time()
    r = secure.run("date -s '2001-01-01 00:00:00'; date +%Y")
    # busybox prints the error but exits 0; the clock is what counts
    assert "can't set date: Operation not permitted" in r.stderr, r.stderr
    assert r.stdout.split()[-1] != "2001"
    assert abs(time.time() - before) < 60
    _blocked(secure.attempt("settime"))


def test_other_privileged_kernel_interfaces_are_blocked(secure: Secure) -> None:
    """open_by_handle_at ("shocker"), bpf, perf_event_open, the kernel keyring."""
    for attempt in ("open-by-handle", "bpf", "perf", "keyctl"):
        _blocked(secure.attempt(attempt))


# --- what the workload is given --------------------------------------------------


def test_personality_argument_filter(secure: Secure) -> None:
    """personality(ADDR_NO_RANDOMIZE) is refused by the profile's argument
    filter (the query is allowed); unconfined it goes through."""
    r = secure.attempt("personality")
    _blocked(r)
    assert "personality(ADDR_NO_RANDOMIZE)" in r.stdout, r.stdout
    assert "ESCAPED" in secure.attempt("personality", seccomp="unconfined").stdout


def test_no_fd_leaks_into_the_container(secure: Secure) -> None:
    """Only stdin, stdout and stderr (and ls's own directory fd)."""
    r = secure.run("ls /proc/self/fd")
    assert sorted(int(x) for x in r.stdout.split()) in ([0, 1, 2], [0, 1, 2, 3]), r.stdout


def test_capabilities_are_exactly_the_default_set(secure: Secure) -> None:
    """Bounding, effective, permitted = Docker's 14; nothing inheritable or
    ambient; a non-root user has none at all and cannot regain them."""
    default = sum(1 << CAPABILITIES[c] for c in DEFAULT_CAPS)
    r = secure.run("grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    status = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert [int(status[k], 16) for k in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb")] == [
        default,
        default,
        default,
        0,
        0,
    ]
    r = secure.run(
        "grep -E '^Cap' /proc/self/status; su root -c true; echo su=$?", uid=1000, gid=1000
    )
    status = dict(line.split(":\t") for line in r.stdout.splitlines() if ":\t" in line)
    assert [int(status[k], 16) for k in ("CapEff", "CapPrm", "CapInh", "CapAmb")] == [0, 0, 0, 0]
    assert int(status["CapBnd"], 16) == default
    assert "su=0" not in r.stdout
