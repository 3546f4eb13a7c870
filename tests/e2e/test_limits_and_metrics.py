"""Limits enforced by the kernel, seen through the daemon and its metrics
endpoint. Marked `cgroups`: these run on this host's layout and again inside
the pure cgroup v2 VM (tests/vm/run.sh)."""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.e2e.conftest import Daemon, cgroup_dirs

pytestmark = [pytest.mark.e2e, pytest.mark.cgroups]


def scrape(d: Daemon) -> dict[str, float]:
    """The exposition as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{d.metrics_addr}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, container: str, extra: str = "") -> float | None:
    for key, value in samples.items():
        if key.startswith(name + "{") and f'name="{container}"' in key and extra in key:
            return value
    return None


def test_memory_hog_is_oom_killed_with_137_and_oomkilled_true(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli(
        "run", "--name", "hog", "--memory", "32M", "--memory-swap", "32M", d.rootfs, "--",
        "sh", "-c", "head -c 256m /dev/zero | tail",
        check=False, timeout=300,
    )  # fmt: skip
    assert r.returncode == 137, r
    info = d.inspect("hog")
    assert info["exit_code"] == 137 and info["oom_killed"] is True, info


def test_pids_limit_stops_a_fork_bomb_and_the_host_stays_responsive(running_daemon: Daemon) -> None:
    """The bomb forks until pids.max refuses; busybox sh then gives up (exit 2,
    "can't fork"), the monitor tears down the sleepers it left, and the cgroup
    counted the refusals."""
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "bomb", "--pids-limit", "32", d.rootfs, "--",
        "sh", "-c", "while :; do sleep 100 & done",
    )  # fmt: skip
    info = d.wait_for("bomb", lambda i: i["state"] == "exited", timeout=120)
    assert info["exit_code"] == 2, info
    assert "can't fork" in d.cli("logs", "bomb").stderr
    assert d.cli("version").returncode == 0  # the daemon still answers
    events = None
    for cg in cgroup_dirs(d.cgroup_parent):
        f = cg / "bomb" / "pids.events"
        if f.exists():
            events = dict(line.split() for line in f.read_text().splitlines())
        procs = cg / "bomb" / "cgroup.procs"
        if procs.exists():
            assert procs.read_text() == "", procs  # the sleepers were torn down
    assert events is not None and int(events["max"]) > 0, events


def test_cpus_half_keeps_a_busy_loop_near_half_a_core(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli(
        "run",
        "-d",
        "--name",
        "spin",
        "--cpus",
        "0.5",
        d.rootfs,
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    )
    d.wait_for("spin", lambda i: i["state"] == "running")
    s0 = scrape(d)
    t0 = time.monotonic()
    time.sleep(3)
    s1 = scrape(d)
    elapsed = time.monotonic() - t0
    used = metric(s1, "container_cpu_usage_seconds_total", "spin")
    before = metric(s0, "container_cpu_usage_seconds_total", "spin")
    assert used is not None and before is not None
    share = (used - before) / elapsed
    # The quota caps it at 0.5; a loaded 2-core machine may give it less.
    assert 0.15 < share <= 0.6, share
    assert metric(s1, "container_spec_cpu_quota", "spin") == 50000
    assert metric(s1, "container_spec_cpu_period", "spin") == 100000
    periods = metric(s1, "container_cpu_cfs_periods_total", "spin")
    throttled = metric(s1, "container_cpu_cfs_throttled_periods_total", "spin")
    assert periods is not None and periods > 0  # the quota is being enforced
    assert throttled is not None
    if share > 0.4:
        # It used its whole quota: the quota must have cut it off. (On a
        # loaded machine it may get less than its quota and never hit it.)
        assert throttled > 0


def test_metrics_report_limits_usage_and_state(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "idle", "--memory", "48M", d.rootfs, "--", "sleep", "1000")
    d.wait_for("idle", lambda i: i["state"] == "running")
    s = scrape(d)
    assert metric(s, "container_spec_memory_limit_bytes", "idle") == 48 * 1024 * 1024
    usage = metric(s, "container_memory_usage_bytes", "idle")
    assert usage is not None and 0 < usage < 48 * 1024 * 1024
    ws = metric(s, "container_memory_working_set_bytes", "idle")
    assert ws is not None and 0 <= ws <= usage
    assert metric(s, "nsvisor_container_state", "idle", 'state="running"') == 1
    assert metric(s, "nsvisor_container_state", "idle", 'state="exited"') == 0
    assert metric(s, "container_start_time_seconds", "idle") is not None
