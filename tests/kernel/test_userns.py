"""--userns=auto on the real kernel: container root is an unprivileged host
uid, the rootfs is the container root's through an idmapped mount or a
one-time chown, ordinary workloads (a shell, a server on port 80, a non-root
user) still work. Marked `cgroups` so they run in the cgroup v2 VM too,
whose older kernel (6.1) has no idmapped tmpfs: there the chown path runs."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.runtime.rootfs import build_busybox_rootfs
from supervisor.runtime.spec import IdMap, Mount

from .conftest import Launcher, wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.cgroups]

IDS = IdMap(uid=1_100_000_000, gid=1_200_000_000, size=65536)
OTHER = IdMap(uid=1_100_065_536, gid=1_200_065_536, size=65536)


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@pytest.fixture
def fs_rootfs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A busybox rootfs on a filesystem of the test's own (tmpfs or ramfs),
    unmounted afterwards."""
    kind = request.param
    mnt = tmp_path / kind
    mnt.mkdir()
    subprocess.run(["mount", "-t", kind, kind, str(mnt)], check=True)
    try:
        rootfs = str(mnt / "rootfs")
        build_busybox_rootfs(rootfs)
        yield rootfs
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def uns(fs_rootfs: str, tmp_path: Path, subreaper: None) -> Iterator[Launcher]:
    lch = Launcher(fs_rootfs, tmp_path)
    try:
        yield lch
    finally:
        lch.cleanup()


@pytest.mark.parametrize("fs_rootfs", ["tmpfs"], indirect=True)
def test_container_root_is_an_unprivileged_host_uid(uns: Launcher, tmp_path: Path) -> None:
    """Inside: uid 0 with the default capabilities and the mapping. On the
    host: uid IDS.uid; a root-owned host directory (a volume) is not
    writable for it although it has CAP_DAC_OVERRIDE inside, and what it
    writes into a world-writable one belongs to IDS.uid."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_text("host\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    c = uns.start(
        [
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map /proc/self/gid_map; grep CapEff /proc/self/status;"
            " echo x >> /locked/f; echo w=$?; touch /locked/new; echo c=$?;"
            " echo y > /shared/made; echo s=$?; echo ready; sleep 60",
        ],
        idmap=IDS,
        mounts=(
            Mount(type="bind", source=str(locked), destination="/locked"),
            Mount(type="bind", source=str(shared), destination="/shared"),
        ),
    )
    c.wait_output("ready")
    out = c.output()
    lines = out.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(IDS.uid), str(IDS.size)]
    assert lines[2].split() == ["0", str(IDS.gid), str(IDS.size)]
    assert int(lines[3].split()[1], 16) != 0  # capabilities, in its own namespace
    assert "w=0" not in out and "c=0" not in out and "s=0" in out, out
    assert (locked / "f").read_text() == "host\n"
    made = (shared / "made").stat()
    assert (made.st_uid, made.st_gid) == (IDS.uid, IDS.gid)
    with open(f"/proc/{c.launched.workload_pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Uid"].split() == [str(IDS.uid)] * 4
    assert status["Gid"].split() == [str(IDS.gid)] * 4
    c.kill()


@pytest.mark.parametrize("fs_rootfs", ["tmpfs"], indirect=True)
def test_rootfs_on_tmpfs_is_root_owned_inside(uns: Launcher, fs_rootfs: str) -> None:
    """The container's root owns its rootfs and writes into it as root. Where
    the kernel has idmapped tmpfs (6.3+) the files on disk stay owned by 0
    (nothing was chowned); before, the rootfs was shifted into the range."""
    r = uns.run("stat -c '%u %g' /bin/busybox /etc; touch /made && stat -c %u /made", idmap=IDS)
    assert r.stdout.split("\n")[:3] == ["0 0", "0 0", "0"], (r.stdout, r.stderr)
    host_owner = os.stat(os.path.join(fs_rootfs, "made")).st_uid
    if _kernel() >= (6, 3):
        assert host_owner == 0
        assert os.stat(os.path.join(fs_rootfs, "bin", "busybox")).st_uid == 0
    else:
        assert host_owner == IDS.uid
        assert os.stat(fs_rootfs).st_uid == IDS.uid


@pytest.mark.parametrize("fs_rootfs", ["ramfs"], indirect=True)
def test_rootfs_without_idmapped_mounts_is_shifted_once(uns: Launcher, fs_rootfs: str) -> None:
    """ramfs has no idmapped mounts: the rootfs is chowned into the range
    (setuid bits kept, ids already in the range untouched), a second start
    finds it shifted, and a container of another range is refused with a
    message that says why."""
    suid = os.path.join(fs_rootfs, "bin", "suid-tool")
    with open(suid, "w") as f:
        f.write("#!/bin/sh\n")
    os.chown(suid, 0, 5)
    os.chmod(suid, 0o4755)  # after chown, which clears it
    r = uns.run("stat -c '%u %g %a' /bin/suid-tool /bin/busybox", idmap=IDS)
    assert r.stdout.split("\n")[:2] == ["0 5 4755", "0 0 755"], (r.stdout, r.stderr)
    st = os.stat(suid)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (IDS.uid, IDS.gid + 5, 0o4755)
    assert os.stat(fs_rootfs).st_uid == IDS.uid
    r = uns.run("touch /again && stat -c %u /again", idmap=IDS)
    assert r.stdout.strip() == "0"
    assert os.stat(os.path.join(fs_rootfs, "again")).st_uid == IDS.uid
    assert os.stat(suid).st_uid == IDS.uid  # not shifted twice
    with pytest.raises(Exception, match="shifted for another user namespace"):
        uns.start(["true"], idmap=OTHER)


@pytest.mark.parametrize("fs_rootfs", ["tmpfs"], indirect=True)
def test_ordinary_workloads_under_a_user_namespace(uns: Launcher) -> None:
    """A server on port 80 (unprivileged ports in the container's network
    namespace only), a non-root user (host uid = range + uid), /tmp and /dev
    writable by the container's root."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        host_before = f.read()
    r = uns.run(
        "mkdir -p /www && echo hello > /www/index.html && httpd -p 80 -h /www &&"
        " wget -q -O - http://127.0.0.1:80/index.html; echo w=$?;"
        " cat /proc/sys/net/ipv4/ip_unprivileged_port_start; touch /dev/shm/x /tmp/y && echo tmp-ok",
        idmap=IDS,
    )
    assert r.stdout.split() == ["hello", "w=0", "0", "tmp-ok"], (r.stdout, r.stderr)
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        assert f.read() == host_before  # set in the container's namespace only
    c = uns.start(["sh", "-c", "id -u; echo ready; sleep 60"], idmap=IDS, uid=1000, gid=1000)
    c.wait_output("ready")
    assert c.output().split()[0] == "1000"
    wait_until(lambda: os.path.exists(f"/proc/{c.launched.workload_pid}"))
    with open(f"/proc/{c.launched.workload_pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(IDS.uid + 1000)] * 4
    c.kill()
