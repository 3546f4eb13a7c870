"""`nsvisor cp`: both directions through the daemon, owners and modes kept,
and paths resolved inside the container's root: a symlink in the container
that points outside it (relative, climbing with "..", or absolute to a host
path, or through /proc/1/root, the monitor's root on the host) never
reaches the host's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def box(running_daemon: Daemon, tmp_path: Path) -> Daemon:
    d = running_daemon
    # /work is a tmpfs: the shared test rootfs is never written to.
    d.cli("run", "-d", "--name", "box", "--tmpfs", "/work", d.rootfs, "--", "sleep", "1000")
    d.wait_for("box", lambda i: i["state"] == "running")
    return d


def sh(d: Daemon, script: str) -> str:
    return d.cli("exec", "box", "--", "sh", "-c", script).stdout


def test_copy_out_keeps_owners_modes_and_symlinks(box: Daemon, tmp_path: Path) -> None:
    d = box
    sh(d, "mkdir -p /work/data/sub && echo hello > /work/data/sub/f"
          " && chown 1234:4321 /work/data/sub/f && chmod 640 /work/data/sub/f"
          " && chmod 750 /work/data/sub && ln -s /etc/hostname /work/data/link")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    d.cli("cp", "box:/work/data", str(out))  # into an existing directory
    f = out / "data" / "sub" / "f"
    st = f.stat()
    assert (f.read_text(), st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
        "hello\n",
        1234,
        4321,
        0o640,
    )
    assert (out / "data" / "sub").stat().st_mode & 0o777 == 0o750
    assert os.readlink(out / "data" / "link") == "/etc/hostname"  # kept as a link
    d.cli("cp", "box:/work/data/sub/f", str(tmp_path / "renamed"))  # to a new name
    assert (tmp_path / "renamed").read_text() == "hello\n"
    assert (tmp_path / "renamed").stat().st_uid == 1234
    r = d.cli("cp", "box:/work/nosuch", str(out), check=False)
    assert r.returncode == 1 and "no such file" in r.stderr


def test_copy_in_keeps_owners_and_modes(box: Daemon, tmp_path: Path) -> None:
    d = box
    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    (src / "d" / "file").write_text("payload\n")
    os.chown(src / "d" / "file", 2345, 2346)
    os.chmod(src / "d" / "file", 0o604)
    d.cli("cp", str(src), "box:/work/")
    assert sh(d, "stat -c '%u:%g %a' /work/tree/d/file; cat /work/tree/d/file") == (
        "2345:2346 604\npayload\n"
    )
    d.cli("cp", str(src / "d" / "file"), "box:/work/single")  # to a new name
    assert sh(d, "cat /work/single") == "payload\n"


def test_symlinks_pointing_outside_never_escape(box: Daemon, tmp_path: Path) -> None:
    d = box
    host = tmp_path / "host-secret-dir"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    depth = "../" * 20
    sh(d, f"ln -s {depth}{str(host).lstrip('/')} /work/rel"
          f" && ln -s {host} /work/abs && ln -s /proc/1/root{host} /work/magic"
          " && ln -s ../../../../.. /work/up")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    for link in ("rel", "abs", "magic"):
        r = d.cli("cp", f"box:/work/{link}/secret", str(out / link), check=False)
        assert r.returncode != 0, (link, r.stdout)
        assert not (out / link).exists()
        # Writing through it: nothing lands in the host directory.
        payload = tmp_path / f"payload-{link}"
        payload.write_text("x\n")
        r = d.cli("cp", str(payload), f"box:/work/{link}/", check=False)
        assert r.returncode != 0, link
        assert sorted(p.name for p in host.iterdir()) == ["secret"]
    # ".." past the root stays at the container's root: /work/up/work is /work.
    d.cli("cp", str(tmp_path / "payload-rel"), "box:/work/up/work/landed")
    assert sh(d, "cat /work/landed") == "x\n"
    # Copying the link itself copies a link, not what it points to.
    d.cli("cp", "box:/work/abs", str(out / "abs-link"))
    assert os.readlink(out / "abs-link") == str(host)


def test_usage_errors(box: Daemon, tmp_path: Path) -> None:
    d = box
    r = d.cli("cp", str(tmp_path), str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "between a container and the host" in r.stderr
    r = d.cli("cp", "nosuch:/etc/passwd", str(tmp_path), check=False)
    assert r.returncode == 1 and "no such container" in r.stderr
