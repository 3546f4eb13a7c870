"""`nsvisor update` changes the limits of a running container in place, like
`docker update`: the kernel has the new values at once (inspect reads them
back), the spec is persisted, and the next OOM respects the new limit.
Marked `cgroups`: run on this host's layout and in the v2 VM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.cgroups]

MiB = 1 << 20
# Holds 40 MiB once (tail keeps a line without newline whole) and prints its
# size, waits for the test's go file, then holds 40 MiB again.
HOG = (
    "head -c 40m /dev/zero | tail | wc -c; "
    "while [ ! -e /ctl/go ]; do sleep 0.1; done; head -c 40m /dev/zero | tail"
)


def test_update_lowers_memory_in_place_and_the_next_oom_respects_it(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    d.cli(
        "run", "-d", "--name", "upd", "--memory", "64m", "--memory-swap", "64m",
        "-v", f"{ctl}:/ctl:ro", d.rootfs, "--", "sh", "-c", HOG,
    )  # fmt: skip
    info = d.wait_for("upd", lambda i: i["state"] == "running")
    assert info["limits"]["memory_max"] == 64 * MiB
    # Under the old limit 40 MiB fit.
    deadline = time.monotonic() + 120
    while d.cli("logs", "upd").stdout.strip() != str(40 * MiB):
        assert time.monotonic() < deadline, d.cli("logs", "upd")
        time.sleep(0.1)
    d.cli("update", "--memory", "24m", "--memory-swap", "24m", "--pids-limit", "40", "upd")
    info = d.inspect("upd")
    assert info["state"] == "running"  # in place: not restarted
    assert info["limits"]["memory_max"] == 24 * MiB, info["limits"]
    assert info["limits"]["pids_max"] == 40
    assert info["config"]["memory"] == 24 * MiB  # persisted
    (ctl / "go").touch()
    info = d.wait_for("upd", lambda i: i["state"] == "exited", timeout=120)
    assert info["exit_code"] == 137 and info["oom_killed"] is True, info


def test_update_cpus_replaces_the_quota_and_survives_a_daemon_restart(
    running_daemon: Daemon,
) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "cpu", "--cpus", "0.5", d.rootfs, "--", "sleep", "1000")
    d.wait_for("cpu", lambda i: i["state"] == "running")
    d.cli("update", "--cpus", "1.5", "cpu")
    limits = d.inspect("cpu")["limits"]
    assert (limits["cpu_quota_us"], limits["cpu_period_us"]) == (150_000, 100_000)
    d.cli("update", "--cpu-quota", "20000", "--cpu-period", "50000", "cpu")
    info = d.inspect("cpu")
    assert (info["limits"]["cpu_quota_us"], info["limits"]["cpu_period_us"]) == (20_000, 50_000)
    assert "cpus" not in info["config"]
    d.stop_daemon()
    d.start()
    info = d.wait_for("cpu", lambda i: i["state"] == "running")
    assert (info["config"]["cpu_quota"], info["config"]["cpu_period"]) == (20_000, 50_000)


def test_bad_update_is_refused_and_changes_nothing(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "keep", "--memory", "64m", d.rootfs, "--", "sleep", "1000")
    d.wait_for("keep", lambda i: i["state"] == "running")
    r = d.cli("update", "--memory-reservation", "128m", "keep", check=False)
    assert r.returncode == 2 and "--memory-reservation" in r.stderr and "above memory" in r.stderr
    r = d.cli("update", "--cpuset-cpus", "4096", "keep", check=False)
    assert r.returncode == 2 and "--cpuset-cpus" in r.stderr, r
    r = d.cli("update", "keep", check=False)
    assert r.returncode == 2 and "at least one limit" in r.stderr, r
    r = d.cli("update", "--memory", "32m", "nosuch", check=False)
    assert r.returncode == 1 and "no such container" in r.stderr, r
    info = d.inspect("keep")
    assert info["limits"]["memory_max"] == 64 << 20 and info["limits"]["memory_low"] is None


def test_update_restart_changes_the_policy_from_the_next_exit_on(running_daemon: Daemon) -> None:
    """docker update --restart: a container started with no policy is
    restarted after its next exit once updated to always; a bad policy is
    refused naming the option; the policy survives in inspect."""
    d = running_daemon
    d.cli("run", "-d", "--name", "r", d.rootfs, "--", "sleep", "1000")
    first = d.wait_for("r", lambda i: i["state"] == "running")
    r = d.cli("update", "--restart", "sometimes", "r", check=False)
    assert r.returncode == 2 and "--restart" in r.stderr, r
    d.cli("update", "--restart", "always", "r")
    assert d.inspect("r")["restart_policy"] == "always"
    d.cli("kill", "r")  # SIGKILL: a failure the old policy ("no") would have left alone
    again = d.wait_for(
        "r", lambda i: i["state"] == "running" and i["restart_count"] == 1, what="restarted"
    )
    assert again["pid"] != first["pid"]
