"""--userns=auto through the daemon and the CLI: the dedicated user's
subordinate ranges (added to the subuid/subgid files when missing, others'
entries untouched), one range per container, kept across daemon restarts and
freed at rm; the daemon's default; exec joins the user namespace; inspect
shows the mapping. The subuid/subgid files are the test's own, never the
host's /etc ones."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e]

OTHERS = "alice:100000:65536\nbob:165536:65536\n"


def _config(tmp_path: Path, default: str = "host", size: int = 65536) -> str:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(OTHERS)
    path = tmp_path / "nsvisor.toml"
    path.write_text(
        f'[daemon]\nuserns = "{default}"\nsubuid_file = "{tmp_path}/subuid"\n'
        f'subgid_file = "{tmp_path}/subgid"\nuserns_size = {size}\n'
    )
    return str(path)


def _uid_map(d: Daemon, name: str) -> list[int]:
    out = d.cli("exec", name, "cat", "/proc/self/uid_map").stdout
    return [int(x) for x in out.split()]


def test_ranges_per_container_persisted_and_freed(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    d.start(config=_config(tmp_path))
    assert not (tmp_path / "subuid").read_text().count("nsvisor")  # untouched until used
    r = d.cli(
        "run",
        "--rm",
        "--userns",
        "auto",
        d.rootfs,
        "--",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map",
    )
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    first, base, size = (int(x) for x in lines[1].split())
    assert (first, size) == (0, 65536)
    subuid = (tmp_path / "subuid").read_text()
    assert subuid.startswith(OTHERS)  # the other users' entries as they were
    user, start, count = subuid.splitlines()[-1].split(":")
    assert user == "nsvisor" and int(start) >= 165536 + 65536 and int(count) >= 2 * 65536
    assert int(start) <= base < int(start) + int(count)

    d.cli("run", "-d", "--name", "a", "--userns", "auto", d.rootfs, "--", "sleep", "600")
    d.cli("run", "-d", "--name", "b", "--userns", "auto", d.rootfs, "--", "sleep", "600")
    d.cli("run", "-d", "--name", "h", d.rootfs, "--", "sleep", "600")  # the default here: host
    a, b = _uid_map(d, "a"), _uid_map(d, "b")
    assert a[1] != b[1] and abs(a[1] - b[1]) >= 65536  # never shared, never overlapping
    assert _uid_map(d, "h") == [0, 0, 4294967295]
    info = d.inspect("a")["security"]["userns"]
    assert info == {
        "mode": "auto",
        "uid_map": f"0 {a[1]} 65536",
        "gid_map": info["gid_map"],
    }
    assert d.inspect("h")["security"]["userns"] == "host"
    # The workload's processes are that host uid.
    pid = d.inspect("a")["workload_pid"]
    with open(f"/proc/{pid}/status") as f:
        assert next(line for line in f if line.startswith("Uid:")).split()[1] == str(a[1])

    # A daemon killed and started again: same ranges, a new container gets another.
    d.stop_daemon(signal.SIGKILL)
    d.start(config=_config(tmp_path))
    assert _uid_map(d, "a") == a and _uid_map(d, "b") == b
    d.cli("run", "-d", "--name", "c", "--userns", "auto", d.rootfs, "--", "sleep", "600")
    c = _uid_map(d, "c")
    assert c[1] not in (a[1], b[1])
    # rm frees a's range: the next container may have it.
    d.cli("rm", "-f", "a")
    d.cli("run", "-d", "--name", "e", "--userns", "auto", d.rootfs, "--", "sleep", "600")
    assert _uid_map(d, "e")[1] == a[1]
    assert (tmp_path / "subuid").read_text() == subuid  # the entry was added once


def test_daemon_default_auto_and_host_override(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    d.start(config=_config(tmp_path, default="auto"))
    r = d.cli("run", "--rm", d.rootfs, "--", "cat", "/proc/self/uid_map")
    assert r.stdout.split()[1] != "0"
    r = d.cli("run", "--rm", "--userns", "host", d.rootfs, "--", "cat", "/proc/self/uid_map")
    assert r.stdout.split() == ["0", "0", "4294967295"]
    # exec as a non-root user of the container: inside uid 1000, host range + 1000.
    d.cli("run", "-d", "--name", "u", "--user", "1000:1000", d.rootfs, "--", "sleep", "600")
    base = _uid_map(d, "u")[1]
    r = d.cli("exec", "u", "sh", "-c", "id -u; grep ^Uid: /proc/self/status")
    assert r.stdout.split()[0] == "1000"
    assert r.stdout.split()[2] == "1000"  # /proc shows the container's view
    pid = d.inspect("u")["workload_pid"]
    with open(f"/proc/{pid}/status") as f:
        assert next(line for line in f if line.startswith("Uid:")).split()[1] == str(base + 1000)


def test_exhausted_or_unreadable_ranges_are_clear_errors(daemon: Daemon, tmp_path: Path) -> None:
    """Nothing is created for a container that cannot get a range."""
    d = daemon
    config = _config(tmp_path)
    (tmp_path / "subuid").write_text(OTHERS + "nsvisor:300000:65536\n")  # one container's worth
    d.start(config=config)
    d.cli("run", "-d", "--name", "one", "--userns", "auto", d.rootfs, "--", "sleep", "600")
    r = d.cli(
        "run",
        "-d",
        "--name",
        "two",
        "--userns",
        "auto",
        d.rootfs,
        "--",
        "sleep",
        "600",
        check=False,
    )
    assert r.returncode != 0
    assert "no free user namespace range: all 1 ranges of 65536 ids" in r.stderr, r.stderr
    assert "two" not in d.cli("ps", "-a").stdout
    (tmp_path / "subgid").write_text("nsvisor:oops\n")
    d.stop_daemon()
    d.start(config=config)
    r = d.cli("run", "--rm", "--userns", "auto", d.rootfs, "--", "true", check=False)
    assert (
        r.returncode != 0 and f"{tmp_path}/subgid:1" in r.stderr and "NAME:START:COUNT" in r.stderr
    )


def test_cp_in_and_out_with_container_ids(daemon: Daemon, tmp_path: Path) -> None:
    """cp carries the container's own ids both ways: into the idmapped rootfs
    (created as the container's root: host root could not create through the
    mapping) and into a tmpfs, and out again."""
    d = daemon
    d.start(config=_config(tmp_path))
    rootfs = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", d.rootfs, str(rootfs)], check=True)
    d.cli(
        "run",
        "-d",
        "--name",
        "cpb",
        "--userns",
        "auto",
        "--tmpfs",
        "/work",
        str(rootfs),
        "--",
        "sleep",
        "600",
    )
    src = tmp_path / "f"
    src.write_text("hi\n")
    os.chown(src, 1234, 4321)
    d.cli("cp", str(src), "cpb:/etc/added")
    d.cli("cp", str(src), "cpb:/work/added")
    r = d.cli("exec", "cpb", "stat", "-c", "%u %g", "/etc/added", "/work/added")
    assert r.stdout.split("\n")[:2] == ["1234 4321", "1234 4321"], r.stdout
    on_disk = (rootfs / "etc" / "added").stat()
    base = _uid_map(d, "cpb")[1]
    # An idmapped rootfs stores the container's ids; a chowned one the host's.
    assert (on_disk.st_uid, on_disk.st_gid) in ((1234, 4321), (base + 1234, on_disk.st_gid))
    d.cli("exec", "cpb", "sh", "-c", "echo made > /work/m && chown 7:8 /work/m")
    out = tmp_path / "out"
    d.cli("cp", "cpb:/work/m", str(out))
    st = out.stat()
    assert (out.read_text(), st.st_uid, st.st_gid) == ("made\n", 7, 8)
