"""The Docker-like CLI against a real daemon: each test reads as the
specification of one user-visible behaviour."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, cgroup_dirs

pytestmark = [pytest.mark.e2e]


def test_attached_run_prints_output_and_exits_with_the_containers_code(
    running_daemon: Daemon,
) -> None:
    d = running_daemon
    r = d.cli(
        "run", "--rm", d.rootfs, "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False
    )
    assert r.returncode == 7, r
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    # --rm: nothing left behind
    assert json.loads(d.cli("ps", "-a", "--format", "json").stdout) == []


def test_attached_run_of_ps_shows_only_the_containers_processes(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli("run", "--rm", d.rootfs, "--", "ps", "-o", "pid,comm")
    lines = [line.split() for line in r.stdout.strip().splitlines()[1:]]
    pids = [int(p) for p, _ in lines]
    assert pids[0] == 1 and len(pids) == 2, r.stdout  # PID 1 = the monitor, then ps itself
    assert lines[-1][1] == "ps"


def test_detached_lifecycle_ps_logs_inspect_stop_start_restart_rm(running_daemon: Daemon) -> None:
    d = running_daemon
    out = d.cli(
        "run", "-d", "--name", "web", "--memory", "64M", "--cpus", "0.5", "--pids-limit", "64",
        d.rootfs, "--", "sh", "-c", "echo hello; exec httpd -f -p 8080",
    )  # fmt: skip
    assert out.stdout.strip() == "web"
    info = d.wait_for("web", lambda i: i["state"] == "running")
    assert info["pid"] > 0 and info["exit_code"] is None and info["restart_count"] == 0
    assert info["cgroup"].endswith("/web") and d.cgroup_parent in info["cgroup"]
    assert info["config"]["memory"] in (64 * 1024 * 1024, "64M", "67108864")
    ps = json.loads(d.cli("ps", "--format", "json").stdout)
    assert [c["name"] for c in ps] == ["web"] and ps[0]["state"] == "running"
    assert "web" in d.cli("ps").stdout

    logs = d.cli("logs", "web")
    assert logs.stdout == "hello\n"

    t0 = time.monotonic()
    d.cli("stop", "-t", "5", "web")
    info = d.inspect("web")
    assert info["state"] == "exited"
    # httpd dies on SIGTERM: the stop did not need the grace period
    assert time.monotonic() - t0 < 5
    assert info["exit_code"] in (143, 0), info
    assert d.cli("ps", "--format", "json").stdout.strip() == "[]"
    assert [c["name"] for c in json.loads(d.cli("ps", "-a", "--format", "json").stdout)] == ["web"]

    d.cli("start", "web")
    first_pid = d.wait_for("web", lambda i: i["state"] == "running")["pid"]
    d.cli("restart", "-t", "5", "web")
    info = d.wait_for("web", lambda i: i["state"] == "running")
    assert info["pid"] != first_pid
    assert d.cli("logs", "web").stdout == "hello\n" * 3  # one line per run, all kept

    r = d.cli("rm", "web", check=False)
    assert r.returncode != 0 and "stop" in r.stderr  # running: needs -f
    d.cli("rm", "-f", "web")
    assert json.loads(d.cli("ps", "-a", "--format", "json").stdout) == []
    assert d.cli("inspect", "web", check=False).returncode == 1
    assert not any((p / "web").exists() for p in cgroup_dirs(d.cgroup_parent))
    assert not (Path(d.state_dir) / "containers" / "web").exists()


def test_stop_escalates_to_killing_the_whole_cgroup(running_daemon: Daemon) -> None:
    """A workload that ignores SIGTERM is killed after the grace period, and
    every process in its cgroup goes with it."""
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "stubborn", d.rootfs, "--",
        "sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & while :; do sleep 1; done",
    )  # fmt: skip
    d.wait_for("stubborn", lambda i: i["state"] == "running")
    t0 = time.monotonic()
    d.cli("stop", "-t", "1", "stubborn")
    assert time.monotonic() - t0 >= 1.0
    info = d.inspect("stubborn")
    assert info["exit_code"] == 137
    for cg in cgroup_dirs(d.cgroup_parent):
        procs = cg / "stubborn" / "cgroup.procs"
        if procs.exists():
            assert procs.read_text() == "", procs


def test_logs_follow_and_tail(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "ticker", d.rootfs, "--", "sh", "-c",
          "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 1000")  # fmt: skip
    d.wait_for("ticker", lambda i: i["state"] == "running")
    assert d.cli("logs", "--tail", "2", "ticker").stdout == "line4\nline5\n"
    follower = d.popen("logs", "-f", "ticker")
    try:
        time.sleep(0.2)
        assert follower.poll() is None  # still following a running container
        d.cli("stop", "-t", "0", "ticker")
        out, _ = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert out.splitlines() == [f"line{i}" for i in range(1, 6)]
    assert follower.returncode == 0


def test_events_stream_lifecycle_transitions(running_daemon: Daemon) -> None:
    d = running_daemon
    ev = d.popen("events")
    try:
        assert ev.stdout is not None
        assert json.loads(ev.stdout.readline())["action"] == "subscribed"
        d.cli("run", "--rm", "--name", "once", d.rootfs, "--", "true")
        ev.send_signal(signal.SIGINT)
        out, _ = ev.communicate(timeout=30)
    finally:
        if ev.poll() is None:
            ev.kill()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    actions = [e["action"] for e in events if e.get("name") == "once"]
    assert actions == ["create", "start", "die", "destroy"], events


def test_on_failure_3_restarts_exactly_three_times_with_growing_delays(
    running_daemon: Daemon,
) -> None:
    d = running_daemon
    ev = d.popen("events")
    try:
        d.cli(
            "run",
            "-d",
            "--name",
            "crash",
            "--restart",
            "on-failure:3",
            d.rootfs,
            "--",
            "sh",
            "-c",
            "exit 3",
        )
        info = d.wait_for(
            "crash", lambda i: i["state"] == "exited" and i["restart_count"] == 3, what="3 restarts"
        )
        assert info["exit_code"] == 3
        time.sleep(1.0)  # a fourth restart would be due after 0.8 s
        assert d.inspect("crash")["restart_count"] == 3
        ev.send_signal(signal.SIGINT)
        out, _ = ev.communicate(timeout=30)
    finally:
        if ev.poll() is None:
            ev.kill()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    starts = [e["time"] for e in events if e.get("name") == "crash" and e["action"] == "start"]
    delays = [e["attributes"]["restart_in_s"] for e in events if e.get("action") == "restarting"]
    assert len(starts) == 4
    assert delays == [0.1, 0.2, 0.4]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # each gap is the run plus its backoff (launch times vary on a loaded machine)
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=True)), (gaps, delays)


def test_restart_policies_no_always_unless_stopped(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "no", d.rootfs, "--", "sh", "-c", "exit 1")
    d.cli("run", "-d", "--name", "always", "--restart", "always", d.rootfs, "--", "true")
    d.cli("run", "-d", "--name", "unless", "--restart", "unless-stopped", d.rootfs, "--", "true")
    assert d.wait_for("no", lambda i: i["state"] == "exited")["restart_count"] == 0
    for name in ("always", "unless"):
        d.wait_for(name, lambda i: i["restart_count"] >= 2, what=f"{name} restarting after exit 0")
    # stop marks the container stopped by the user: it is not restarted
    d.cli("stop", "always")
    n = d.inspect("always")["restart_count"]
    time.sleep(1.0)
    info = d.inspect("always")
    assert info["state"] == "exited" and info["restart_count"] == n and info["stopped_by_user"]


def test_bad_input_is_rejected_with_exit_2_and_nothing_created(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "keep", d.rootfs, "--", "sleep", "1000")
    keep_pid = d.wait_for("keep", lambda i: i["state"] == "running")["pid"]
    cases = [
        (["--memory", "-5M"], "--memory"),
        (["--memory", "lots"], "--memory"),
        (["--cpus", str((os.cpu_count() or 1) + 1)], "--cpus"),
        (["--restart", "sometimes"], "--restart"),
        (["--name", "keep"], "keep"),
    ]
    for opts, needle in cases:
        r = d.cli("run", "-d", *opts, d.rootfs, "--", "true", check=False)
        assert r.returncode == 2, (opts, r)
        assert needle in r.stderr, (opts, r.stderr)
    r = d.cli("run", "-d", str(tmp_path / "missing"), "--", "true", check=False)
    assert r.returncode == 2 and "rootfs" in r.stderr and "nsvisor rootfs busybox" in r.stderr
    r = d.cli("run", "-d", "--name", "nocmd", d.rootfs, "--", "no-such-command", check=False)
    assert r.returncode == 2 and "no-such-command" in r.stderr
    # nothing created: no state entry, no cgroup; the running container untouched
    names = [c["name"] for c in json.loads(d.cli("ps", "-a", "--format", "json").stdout)]
    assert names == ["keep"]
    assert sorted(p.name for p in (Path(d.state_dir) / "containers").iterdir()) == ["keep"]
    for cg in cgroup_dirs(d.cgroup_parent):
        assert sorted(p.name for p in cg.iterdir() if p.is_dir()) == ["keep"], cg
    assert d.inspect("keep")["pid"] == keep_pid


def test_containers_from_the_config_file_start_with_the_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    cfg = tmp_path / "nsvisor.toml"
    cfg.write_text(
        f"""
[defaults]
restart = "always"

[containers.web]
rootfs = "{daemon.rootfs}"
command = ["httpd", "-f", "-p", "8080"]
memory = "32M"

[containers.once]
rootfs = "{daemon.rootfs}"
command = "sh -c 'echo from-config'"
restart = "no"
"""
    )
    r = subprocess.run(
        [sys.executable, "-m", "supervisor", "check-config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r
    daemon.start(config=str(cfg))
    info = daemon.wait_for("web", lambda i: i["state"] == "running")
    assert info["restart_policy"] == "always"
    daemon.wait_for("once", lambda i: i["state"] == "exited")
    assert daemon.cli("logs", "once").stdout == "from-config\n"
