"""What a process inside a container can see and do. Each test's docstring is
the property it checks, seen from inside (busybox commands) and, where it
helps, from the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.runtime.caps import CAPABILITIES, DEFAULT_CAPS
from supervisor.runtime.spec import Mount, Namespaces

from .conftest import Launcher

pytestmark = pytest.mark.kernel

DOCKER_CAPEFF = sum(1 << CAPABILITIES[c] for c in DEFAULT_CAPS)


def _mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(root, mount point, options) per mountinfo line."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        rows.append((fields[3], fields[4], fields[5]))
    return rows


# --- namespaces --------------------------------------------------------------


def test_ps_shows_only_the_container_with_the_monitor_as_pid_1(launcher: Launcher) -> None:
    """`ps` inside lists the monitor as PID 1, the shell and ps, nothing of the
    host; on the host the monitor's innermost pid is 1."""
    r = launcher.run("ps -o pid,comm; true")  # "; true": ash would exec a lone command
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert rows == [["1", "nsvisor-monitor"], ["2", "sh"], ["3", "ps"]], r.stdout
    # the host's view of the same process (reaped by now, so check another)
    c = launcher.start(["sleep", "60"])
    with open(f"/proc/{c.pid}/status") as f:
        nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
    assert nspid == [str(c.pid), "1"]


def test_hostname_is_the_containers(launcher: Launcher) -> None:
    """A private uts namespace with the configured hostname."""
    r = launcher.run("hostname", hostname="box-one")
    assert r.stdout == "box-one\n"
    assert os.uname().nodename != "box-one"


def test_network_none_has_only_lo_and_it_is_up(launcher: Launcher) -> None:
    """net "none": a new network namespace whose only link is lo, UP."""
    r = launcher.run("ip -o link")
    links = [line.split(":")[1].strip() for line in r.stdout.splitlines()]
    assert links == ["lo"], r.stdout
    assert "UP" in r.stdout.split("<")[1].split(">")[0].split(",")
    r = launcher.run("ping -c 1 -W 2 127.0.0.1 >/dev/null && echo reachable")
    assert r.stdout == "reachable\n"


def test_network_host_sees_the_hosts_links(launcher: Launcher) -> None:
    r = launcher.run("ip -o link", namespaces=Namespaces(net="host"))
    assert sorted(line.split(":")[1].strip() for line in r.stdout.splitlines()) == sorted(
        os.listdir("/sys/class/net")
    )


def test_host_ipc_objects_are_invisible(launcher: Launcher) -> None:
    """A SysV shared memory segment created on the host is not in the
    container's /proc/sysvipc/shm (busybox-static has no ipcs)."""
    out = subprocess.run(["ipcmk", "-M", "4096"], check=True, capture_output=True, text=True).stdout
    shmid = out.strip().split()[-1]
    try:
        with open("/proc/sysvipc/shm") as f:
            assert any(line.split()[1] == shmid for line in f.readlines()[1:])
        r = launcher.run("cat /proc/sysvipc/shm")
        assert r.stdout.splitlines()[1:] == [], r.stdout
    finally:
        subprocess.run(["ipcrm", "-m", shmid], check=True)


def test_cgroup_namespace_root_is_the_containers_cgroup(launcher: Launcher, tmp_path: Path) -> None:
    """The workload joins the cgroups in cgroup_procs, then unshares the cgroup
    namespace: inside, /proc/self/cgroup shows "/" for them ("0::/" for v2)."""
    name = f"nsvisor-rt-test-{os.getpid()}"
    created = []
    procs = []
    for hierarchy in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"):
        if os.path.isdir(hierarchy):
            path = os.path.join(hierarchy, name)
            os.mkdir(path)
            created.append(path)
            procs.append(os.path.join(path, "cgroup.procs"))
    try:
        r = launcher.run("cat /proc/self/cgroup", cgroup_procs=tuple(procs))
        lines = r.stdout.splitlines()
        assert "0::/" in lines
        if "/sys/fs/cgroup/pids" in "".join(created):
            assert any(line.endswith(":pids:/") for line in lines), r.stdout
    finally:
        from supervisor.cgroups._fs import rmdir_retry

        for path in created:
            rmdir_retry(path, 10.0)  # EBUSY for a moment after the last exit


def test_mountinfo_has_only_the_containers_mounts(launcher: Launcher) -> None:
    """No host mount point is visible: every mount point is one the runtime
    made, and nothing under the host's /work, /home or /boot."""
    r = launcher.run("cat /proc/self/mountinfo")
    points = {point for _, point, _ in _mountinfo(r.stdout)}
    expected = {
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        *[p for p in ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")],
    }
    masked = {
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    }
    assert points - masked <= expected, points
    assert not [p for p in points if p.startswith(("/work", "/home", "/boot", "/tmp"))]


# --- the filesystem ----------------------------------------------------------


def test_root_is_pivoted_not_chrooted(launcher: Launcher, rootfs: str) -> None:
    """One mount at "/", and it is the rootfs (its root field is the rootfs'
    path in the host filesystem): the host's root is not mounted anywhere.
    The monitor's /proc/1/root does not lead back to the host either."""
    r = launcher.run("cat /proc/self/mountinfo; cat /proc/1/root/etc/hostname; ls /proc/1/root/")
    roots = [root for root, point, _ in _mountinfo(r.stdout) if point == "/"]
    assert len(roots) == 1
    assert roots[0] != "/" and os.path.realpath(rootfs).endswith(roots[0])
    assert "Permission denied" in r.stderr
    assert r.exit["exit_code"] != 0


def test_proc_is_the_new_pid_namespace(launcher: Launcher) -> None:
    r = launcher.run("ls /proc | grep -E '^[0-9]+$'")
    # the monitor, sh, ls and grep
    assert sorted(int(p) for p in r.stdout.split()) == [1, 2, 3, 4]


def test_sys_is_read_only(launcher: Launcher) -> None:
    r = launcher.run("touch /sys/x")
    assert r.exit["exit_code"] != 0
    assert "Read-only file system" in r.stderr


def test_dev_has_exactly_the_minimal_set(launcher: Launcher) -> None:
    r = launcher.run("ls -a /dev; ls -l /dev/null /dev/ptmx; stat -c '%a' /dev /dev/shm")
    listing = r.stdout.splitlines()
    names = set(listing[: listing.index("zero") + 1])
    assert names == {
        ".",
        "..",
        "core",
        "fd",
        "full",
        "mqueue",
        "null",
        "ptmx",
        "pts",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
    }
    assert "crw-rw-rw-" in r.stdout and "1,   3" in r.stdout
    assert "ptmx -> pts/ptmx" in r.stdout
    assert listing[-2:] == ["755", "1777"]


def test_dev_works(launcher: Launcher) -> None:
    r = launcher.run(
        "head -c 16 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c"
    )
    assert r.stdout.split() == ["16", "null-ok", "4"]


def test_masked_paths_are_empty(launcher: Launcher) -> None:
    """Docker's masked paths: /dev/null over files, an empty read-only tmpfs
    over directories (only those the host kernel has)."""
    script = "; ".join(
        f"if [ -d {p} ]; then echo {p} dir $(ls -A {p} | wc -l); "
        f"elif [ -e {p} ]; then echo {p} file $(wc -c < {p}); fi"
        for p in (
            "/proc/acpi",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/kcore",
            "/sys/firmware",
            "/proc/scsi",
        )
    )
    r = launcher.run(script)
    lines = r.stdout.splitlines()
    assert lines, "no masked path exists on this kernel?"
    for line in lines:
        _path, _, count = line.split()
        assert count == "0", line
    assert launcher.run("touch /proc/acpi/x").exit["exit_code"] != 0


def test_proc_sys_is_read_only(launcher: Launcher) -> None:
    r = launcher.run("echo x > /proc/sys/kernel/domainname")
    assert r.exit["exit_code"] != 0
    assert "Read-only file system" in r.stderr


def test_bind_volumes_rw_and_ro(launcher: Launcher, tmp_path: Path) -> None:
    """A rw bind volume is writable and shared with the host; a ro one is
    readable and refuses writes; a single file can be bound too; target
    directories are created in the rootfs."""
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("hello\n")
    single = tmp_path / "single.conf"
    single.write_text("conf\n")
    mounts = (
        Mount(type="bind", source=str(rw), destination="/data/rw"),
        Mount(type="bind", source=str(ro), destination="/data/ro", readonly=True),
        Mount(type="bind", source=str(single), destination="/etc/single.conf", readonly=True),
    )
    r = launcher.run(
        "echo written > /data/rw/out && cat /data/ro/data /etc/single.conf; touch /data/ro/nope; echo end",
        mounts=mounts,
    )
    assert (rw / "out").read_text() == "written\n"
    assert r.stdout == "hello\nconf\nend\n"
    assert "Read-only file system" in r.stderr
    assert not (ro / "nope").exists()


def test_bind_destination_cannot_escape_the_rootfs(
    launcher: Launcher, rootfs: str, tmp_path: Path
) -> None:
    """A symlink in the rootfs pointing outside it is resolved inside it."""
    link = os.path.join(rootfs, "escape")
    os.symlink("/../../../../tmp", link)
    try:
        src = tmp_path / "vol"
        src.mkdir()
        (src / "marker").write_text("m\n")
        r = launcher.run(
            "cat /tmp/vol/marker",
            mounts=(Mount(type="bind", source=str(src), destination="/escape/vol"),),
        )
        assert r.stdout == "m\n"
    finally:
        os.unlink(link)
        with_leftover = os.path.join(rootfs, "tmp", "vol")
        if os.path.isdir(with_leftover):
            os.rmdir(with_leftover)


def test_tmpfs_mount(launcher: Launcher) -> None:
    r = launcher.run(
        "echo x > /scratch/f && cat /scratch/f && stat -c %a /scratch && grep ' /scratch ' /proc/self/mountinfo",
        mounts=(
            Mount(type="tmpfs", destination="/scratch", options=("size=1m", "mode=1777", "noexec")),
        ),
    )
    lines = r.stdout.splitlines()
    assert lines[:2] == ["x", "1777"]
    assert "noexec" in lines[2] and "size=1024k" in lines[2]


def test_read_only_root(launcher: Launcher) -> None:
    """--read-only: / refuses writes; a tmpfs on /tmp and /dev/shm still work."""
    r = launcher.run(
        "touch /x; touch /tmp/y && echo tmp-ok; touch /dev/shm/z && echo shm-ok",
        read_only=True,
        mounts=(Mount(type="tmpfs", destination="/tmp"),),
    )
    assert "Read-only file system" in r.stderr
    assert r.stdout == "tmp-ok\nshm-ok\n"


# --- privileges --------------------------------------------------------------


def test_mount_is_refused(launcher: Launcher) -> None:
    r = launcher.run("mount -t tmpfs x /mnt")
    assert r.exit["exit_code"] != 0


def test_default_capabilities_and_no_new_privs(launcher: Launcher) -> None:
    """CapEff is exactly Docker's 14 default capabilities; the bounding set
    the same; nothing inheritable or ambient; NoNewPrivs is set."""
    r = launcher.run("grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    status = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert int(status["CapEff"], 16) == DOCKER_CAPEFF == 0xA80425FB
    assert int(status["CapPrm"], 16) == DOCKER_CAPEFF
    assert int(status["CapBnd"], 16) == DOCKER_CAPEFF
    assert int(status["CapInh"], 16) == 0
    assert int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"


def test_capability_list_is_honoured(launcher: Launcher) -> None:
    r = launcher.run("grep CapEff /proc/self/status", capabilities=("NET_ADMIN",))
    assert int(r.stdout.split()[1], 16) == 1 << CAPABILITIES["NET_ADMIN"]


def test_non_root_user_has_no_capabilities(launcher: Launcher) -> None:
    r = launcher.run(
        "id; grep -E '^Cap(Eff|Prm)' /proc/self/status",
        uid=1000,
        gid=1000,
        additional_gids=(5,),
    )
    assert r.stdout.splitlines()[0].startswith("uid=1000(app) gid=1000(app) groups=5(tty)")
    assert [int(line.split()[1], 16) for line in r.stdout.splitlines()[1:]] == [0, 0]


def test_host_processes_are_invisible(launcher: Launcher) -> None:
    """Only the container's processes exist in /proc; the test process (the
    monitor's parent on the host) has no pid there."""
    r = launcher.run("for p in /proc/[0-9]*; do cat $p/comm; done")
    assert {"nsvisor-monitor", "sh"} <= set(r.stdout.split()) <= {"nsvisor-monitor", "sh", "cat"}
