"""`nsvisor run` options reach the container as Docker users expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e]


def test_env_workdir_user_hostname(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli(
        "run", "--rm", "-e", "GREETING=hi there", "-w", "/tmp", "-u", "1000:1000",
        "--hostname", "box", d.rootfs, "--",
        "sh", "-c", 'echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$(hostname)"',
    )  # fmt: skip
    assert r.stdout == "hi there|/tmp|1000:1000|box\n"


def test_volumes_tmpfs_and_read_only_root(running_daemon: Daemon, tmp_path: Path) -> None:
    d = running_daemon
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("host data\n")
    r = d.cli(
        "run", "--rm", "--read-only", "--tmpfs", "/scratch", "-v", f"{rw}:/out", "-v", f"{ro}:/in:ro",
        d.rootfs, "--", "sh", "-c",
        "cat /in/data; echo written > /out/file; echo x > /scratch/f && echo tmpfs-ok;"
        " touch /in/nope 2>/dev/null || echo ro-ok; touch /rootfile 2>/dev/null || echo root-ro-ok",
    )  # fmt: skip
    assert r.stdout.splitlines() == ["host data", "tmpfs-ok", "ro-ok", "root-ro-ok"], r
    assert (rw / "file").read_text() == "written\n"
    assert not (ro / "nope").exists()
    assert not (Path(d.rootfs) / "rootfile").exists()


def test_stop_signal_is_what_stop_sends(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "usr1", "--stop-signal", "USR1", d.rootfs, "--",
        "sh", "-c", "trap 'echo got USR1; exit 0' USR1; while :; do sleep 0.1; done",
    )  # fmt: skip
    d.wait_for("usr1", lambda i: i["state"] == "running")
    d.cli("stop", "-t", "30", "usr1")
    assert d.inspect("usr1")["exit_code"] == 0
    assert d.cli("logs", "usr1").stdout == "got USR1\n"


def test_network_none_has_only_loopback_and_host_shares_the_hosts(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli("run", "--rm", d.rootfs, "--", "ip", "-o", "link")
    assert [line.split(":")[1].strip() for line in r.stdout.splitlines()] == ["lo"]
    r = d.cli("run", "--rm", "--network", "host", d.rootfs, "--", "ip", "-o", "link")
    assert len(r.stdout.splitlines()) >= 1
    host = Path("/sys/class/net")
    assert sorted(
        line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines()
    ) == sorted(p.name for p in host.iterdir())
