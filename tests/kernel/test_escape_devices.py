"""The cgroup2 device program on its own (BPF_PROG_TYPE_CGROUP_DEVICE): on a
hybrid host it is tested in the empty cgroup2 hierarchy, where the v1 devices
controller of the test process (the root cgroup, everything allowed) does not
interfere; in the v2 VM it is the only device policy there is."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator

import pytest

from supervisor.cgroups import devices
from supervisor.runtime.devices import DeviceRule, rules_for

pytestmark = [pytest.mark.kernel, pytest.mark.cgroups]


def _cgroup2_root() -> str:
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(root, "cgroup.procs")) and os.path.exists(
            os.path.join(root, "cgroup.controllers")
        ):
            return root
    pytest.skip("no cgroup2 hierarchy mounted")


@pytest.fixture
def cgroup2_dir() -> Iterator[str]:
    path = os.path.join(_cgroup2_root(), f"nsvisor-devtest-{os.getpid()}-{secrets.token_hex(3)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def _in_cgroup(path: str, nodes: dict[str, tuple[int, int, int]], tmp: str) -> dict[str, str]:
    """Fork a child into the cgroup; it tries mknod + open of each node (own
    nodes in tmp, never a host device path) and reports per name."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = []
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")
            for name, (kind, major, minor) in nodes.items():
                node = os.path.join(tmp, name)
                try:
                    os.mknod(node, kind | 0o600, os.makedev(major, minor))
                except OSError as e:
                    out.append(f"{name}=mknod:{e.errno}")
                    continue
                try:
                    os.close(os.open(node, os.O_RDONLY | os.O_NONBLOCK))
                    out.append(f"{name}=open")
                except OSError as e:
                    out.append(f"{name}=open:{e.errno}")
                finally:
                    os.unlink(node)
        finally:
            os.write(w, " ".join(out).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return dict(item.split("=", 1) for item in data.decode().split())


def test_the_default_program_allows_only_the_default_devices(
    cgroup2_dir: str, tmp_path: object
) -> None:
    devices.apply_v2(cgroup2_dir, rules_for())
    result = _in_cgroup(
        cgroup2_dir,
        {
            "null": (stat.S_IFCHR, 1, 3),
            "pts": (stat.S_IFCHR, 136, 99),
            "kmsg": (stat.S_IFCHR, 1, 11),
            "mem": (stat.S_IFCHR, 1, 1),
            "loop": (stat.S_IFBLK, 7, 0),
        },
        str(tmp_path),
    )
    assert result["null"] == "open"
    assert result["pts"] in ("open", "open:6", "open:5", "open:2")  # allowed; no such pty is fine
    assert result["kmsg"] == result["mem"] == result["loop"] == "mknod:1"


def test_access_bits_are_enforced(cgroup2_dir: str, tmp_path: object) -> None:
    """A rule with "m" only: the node can be created but not opened for read."""
    devices.apply_v2(cgroup2_dir, (DeviceRule("c", 1, 5, "m"),))
    result = _in_cgroup(
        cgroup2_dir, {"zero": (stat.S_IFCHR, 1, 5), "null": (stat.S_IFCHR, 1, 3)}, str(tmp_path)
    )
    assert result == {"zero": "open:1", "null": "mknod:1"}


def test_a_second_attach_replaces_the_first(cgroup2_dir: str, tmp_path: object) -> None:
    """Re-applying (daemon restart) does not stack programs: the last policy wins."""
    devices.apply_v2(cgroup2_dir, (DeviceRule("c", 1, 3, "rwm"),))
    devices.apply_v2(cgroup2_dir, (DeviceRule("c", 1, 5, "rwm"),))
    result = _in_cgroup(
        cgroup2_dir, {"zero": (stat.S_IFCHR, 1, 5), "null": (stat.S_IFCHR, 1, 3)}, str(tmp_path)
    )
    assert result == {"zero": "open", "null": "mknod:1"}
