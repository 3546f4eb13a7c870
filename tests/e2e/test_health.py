"""Health checks: starting -> healthy -> unhealthy in ps, inspect and events;
on_unhealthy = "restart" restarts through the restart policy and backoff."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import until

pytestmark = [pytest.mark.e2e]


def test_unhealthy_container_is_restarted_through_its_policy(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "healthy").touch()
    ev = d.popen("events")
    try:
        assert ev.stdout is not None
        assert json.loads(ev.stdout.readline())["action"] == "subscribed"
        d.cli(
            "run", "-d", "--name", "web", "--restart", "on-failure", "-v", f"{ctl}:/ctl",
            "--health-cmd", "test -e /ctl/healthy && echo fine",
            "--health-interval", "200ms", "--health-retries", "2", "--health-timeout", "5s",
            "--on-unhealthy", "restart", "--stop-timeout", "2",
            d.rootfs, "--", "sleep", "1000",
        )  # fmt: skip
        first = d.wait_for("web", lambda i: i["health"] == "healthy", what="healthy")
        assert "(healthy)" in d.cli("ps").stdout
        probes = first["health_check"]["log"]
        assert probes and probes[-1]["exit_code"] == 0 and probes[-1]["output"] == "fine\n"

        (ctl / "healthy").unlink()
        seen: list[dict[str, Any]] = []
        while not any(e["action"] == "unhealthy_restart" for e in seen):
            seen.append(json.loads(ev.stdout.readline()))
        (ctl / "healthy").touch()  # the restart is decided; the next run is healthy
        info = d.wait_for(
            "web",
            lambda i: i["restart_count"] == 1 and i["health"] == "healthy",
            what="restarted after going unhealthy, then healthy again",
        )
        assert info["pid"] != first["pid"]
        assert info["exit_code"] == 143  # SIGTERM, its stop signal: a failure for on-failure
        ev.send_signal(signal.SIGINT)
        out, _ = ev.communicate(timeout=30)
        out = "".join(json.dumps(e) + "\n" for e in seen) + out
    finally:
        if ev.poll() is None:
            ev.kill()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    flow = [
        (e["action"], e.get("attributes", {}).get("status"))
        for e in events
        if e.get("name") == "web" and e["action"] != "exec_start"
    ]
    assert flow == [
        ("create", None),
        ("start", None),
        ("health_status", "healthy"),
        ("health_status", "unhealthy"),
        ("unhealthy_restart", None),
        ("die", None),
        ("restarting", None),
        ("start", None),
        ("health_status", "healthy"),
    ], flow


def test_unhealthy_without_restart_stays_running_and_says_so(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "sick", "--health-cmd", "echo no; exit 1",
        "--health-interval", "100ms", "--health-retries", "3", d.rootfs, "--", "sleep", "1000",
    )  # fmt: skip
    pid = d.wait_for("sick", lambda i: i["state"] == "running")["pid"]
    info = d.wait_for("sick", lambda i: i["health"] == "unhealthy", what="unhealthy")
    assert info["health_check"]["failing_streak"] >= 3
    assert info["health_check"]["log"][-1] == {
        **info["health_check"]["log"][-1],
        "exit_code": 1,
        "output": "no\n",
    }
    assert "(unhealthy)" in d.cli("ps").stdout
    assert info["pid"] == pid and info["restart_count"] == 0


def test_a_probe_that_hangs_times_out(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "hang", "--health-cmd", "sleep 100", "--health-interval", "100ms",
        "--health-timeout", "300ms", "--health-retries", "1", d.rootfs, "--", "sleep", "1000",
    )  # fmt: skip
    info = d.wait_for("hang", lambda i: i["health"] == "unhealthy", what="unhealthy by timeout")
    last = info["health_check"]["log"][-1]
    assert last["exit_code"] == -1 and "timeout" in last["output"]
    assert last["end"] - last["start"] < 5
    # the hung probe was killed: only the workload is left in the container
    until(
        lambda: (
            d.cli("exec", "hang", "--", "sh", "-c", "ps -o comm | grep -c sleep").stdout.strip()
            in ("1", "2")
        ),  # the workload's sleep (+ at most the next probe's)
        what="hung probes killed",
    )


def test_health_options_are_validated(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli(
        "run", "-d", "--health-cmd", "true", "--on-unhealthy", "restart", d.rootfs, "--", "true",
        check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "--on-unhealthy" in r.stderr and "restart" in r.stderr
    r = d.cli("run", "-d", "--health-interval", "1s", d.rootfs, "--", "true", check=False)
    assert r.returncode == 2 and "health_cmd" in r.stderr


def test_health_survives_a_daemon_restart(daemon: Daemon) -> None:
    """kill -9 of the daemon: the adopted container keeps its health status
    and probe log (no "starting" again); the next probes go on from them."""
    d = daemon
    d.start()
    d.cli(
        "run", "-d", "--name", "web", "--health-cmd", "echo fine",
        "--health-interval", "1s", "--health-start-period", "0s", d.rootfs, "--", "sleep", "1000",
    )  # fmt: skip
    before = d.wait_for("web", lambda i: i["health"] == "healthy", what="healthy")
    logged = before["health_check"]["log"]
    assert logged
    until(
        lambda: json.loads(
            (Path(d.state_dir) / "containers" / "web" / "state.json").read_text()
        ).get("health")
        == "healthy",
        what="the health in the state file",
    )
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.start()
    after = d.inspect("web")
    assert after["pid"] == before["pid"]  # adopted
    assert after["health"] == "healthy"
    assert after["health_check"]["log"][: len(logged)] == logged
    more = d.wait_for(
        "web",
        lambda i: len(i["health_check"]["log"]) > len(logged)
        or i["health_check"]["log"][-1] != logged[-1],
        what="a probe after the restart",
    )
    assert more["health"] == "healthy"
