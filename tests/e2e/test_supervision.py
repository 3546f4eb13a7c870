"""Supervision an operator can trust: live restore after the daemon is
killed, config reload, graceful shutdown, sd_notify. Every test drives the
real daemon through the CLI and signals; each docstring is the specification."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, cgroup_dirs

pytestmark = [pytest.mark.e2e]

TICKER = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done"


def until(pred: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll pred() until it is truthy; the condition is the synchronisation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or pred}")


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def cgroup_procs(d: Daemon, name: str) -> set[int]:
    procs: set[int] = set()
    for top in cgroup_dirs(d.cgroup_parent):
        f = top / name / "cgroup.procs"
        if f.exists():
            procs |= {int(p) for p in f.read_text().split()}
    return procs


def assert_one_workload(d: Daemon, name: str, monitor_pid: int) -> None:
    """Exactly one process tree in the container's cgroup, rooted in a child
    of the container's one monitor: nothing was started twice."""
    procs = cgroup_procs(d, name)
    parents = {p: ppid(p) for p in procs}
    # A process gone since the snapshot (a ticker's short-lived child) has
    # no parent to read any more: it is no tree of its own.
    roots = [p for p, pp in parents.items() if pp is not None and pp not in procs]
    assert len(roots) == 1, (name, procs, roots)
    assert ppid(roots[0]) == monitor_pid, (name, roots, monitor_pid)


def ticks(d: Daemon, name: str) -> list[int]:
    return [int(x) for x in d.cli("logs", name).stdout.split()]


def last_tick_on_disk(d: Daemon, name: str) -> int:
    """The ticker's newest line, read from the log file itself (no daemon)."""
    log = Path(d.state_dir) / "containers" / name / "container.log"
    lines = log.read_bytes().splitlines()
    return int(json.loads(lines[-1])["log"]) if lines else -1


def test_sigkill_of_the_daemon_with_five_containers_then_restart_adopts_all(
    daemon: Daemon, tmp_path: Path
) -> None:
    """kill -9 of the daemon leaves every container running and logging; the
    next daemon adopts each one (same monitor pid, restart count, log), and
    the one that exited meanwhile is reported with its real exit code and
    restarted by its policy. Nothing is started twice."""
    d = daemon
    d.start()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    vol = f"{ctl}:/ctl"
    for n in ("tick1", "tick2", "tick3"):
        d.cli("run", "-d", "--name", n, "--restart", "always", d.rootfs, "--", "sh", "-c", TICKER)
    d.cli(
        "run", "-d", "--name", "flaky", "--restart", "always", "-v", vol, d.rootfs, "--",
        "sh", "-c", "if [ -e /ctl/flaky ]; then exec sleep 1000; fi; touch /ctl/flaky; exit 1",
    )  # fmt: skip
    d.cli(
        "run", "-d", "--name", "quitter", "--restart", "on-failure", "-v", vol, d.rootfs, "--",
        "sh", "-c",
        "if [ -e /ctl/quitter.ran ]; then exec sleep 1000; fi; touch /ctl/quitter.ran;"
        " while [ ! -e /ctl/quit ]; do sleep 0.05; done; exit 3",
    )  # fmt: skip
    names = ("tick1", "tick2", "tick3", "flaky", "quitter")
    d.wait_for("flaky", lambda i: i["state"] == "running" and i["restart_count"] == 1)
    before = {n: d.wait_for(n, lambda i: i["state"] == "running") for n in names}
    until(lambda: ticks(d, "tick1")[-1:] >= [5], what="tick1 writing")

    d.proc.kill()  # type: ignore[union-attr]
    d.proc.wait()  # type: ignore[union-attr]
    killed_at = last_tick_on_disk(d, "tick1")
    (ctl / "quit").touch()
    exit_file = Path(d.state_dir) / "containers" / "quitter" / "exit.json"
    until(exit_file.exists, what="quitter's exit file (written by its monitor)")
    assert json.loads(exit_file.read_text())["exit_code"] == 3
    # Containers keep running and logging with no daemon at all.
    until(lambda: last_tick_on_disk(d, "tick1") >= killed_at + 10, what="logging while down")
    for n in names:
        assert ppid(before[n]["pid"]) is not None, f"{n}'s monitor died with the daemon"

    d.start()
    quitter = d.wait_for(
        "quitter",
        lambda i: i["state"] == "running" and i["restart_count"] == 1,
        what="quitter restarted once by on-failure",
    )
    assert quitter["exit_code"] == 3  # the real code, from the exit file
    assert quitter["pid"] != before["quitter"]["pid"]
    assert '"while_daemon_down": true' in d.log()
    for n in ("tick1", "tick2", "tick3", "flaky"):
        info = d.wait_for(n, lambda i: i["state"] == "running")
        assert info["pid"] == before[n]["pid"], n  # adopted, not restarted
        assert info["workload_pid"] == before[n]["workload_pid"], n
        assert info["restart_count"] == before[n]["restart_count"], n
        assert info["log_path"] == before[n]["log_path"], n
    assert d.inspect("flaky")["restart_count"] == 1
    for n in names:
        assert_one_workload(d, n, d.inspect(n)["pid"])
    # Logs are continuous across the daemon's death: every tick, in order.
    until(lambda: ticks(d, "tick1")[-1] > killed_at + 20, what="more ticks after the restart")
    for n in ("tick1", "tick2", "tick3"):
        seen = ticks(d, n)
        assert seen == list(range(len(seen))), f"{n}: gap or duplicate in {seen}"
    # stop still works on adopted containers (the pidfd and cgroup are ours again)
    d.cli("stop", "-t", "2", "tick1")
    assert d.inspect("tick1")["state"] == "exited"


def test_a_writer_never_stalls_while_the_daemon_is_down(daemon: Daemon) -> None:
    """The monitor owns the output pipes and the (rotating) log file: a
    container that writes as fast as it can keeps its pace while the daemon
    is killed and restarted. Measured: lines per second up, down, and after."""
    d = daemon
    d.start()
    d.cli(
        "run", "-d", "--name", "firehose", "--log-opt", "max-size=256k", "--log-opt", "max-file=2",
        d.rootfs, "--", "sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); done",
    )  # fmt: skip
    d.wait_for("firehose", lambda i: i["state"] == "running")

    def newest() -> int:
        return until(lambda: _safe_last(d, "firehose"), what="a firehose line")

    def rate(window_s: float = 1.0) -> float:
        a, t0 = newest(), time.monotonic()
        until(lambda: time.monotonic() - t0 >= window_s, what="measurement window")
        return (newest() - a) / (time.monotonic() - t0)

    up = rate()
    d.proc.kill()  # type: ignore[union-attr]
    d.proc.wait()  # type: ignore[union-attr]
    down = rate()
    d.start()
    d.wait_for("firehose", lambda i: i["state"] == "running")
    after = rate()
    print(f"firehose lines/s: daemon up {up:.0f}, down {down:.0f}, restarted {after:.0f}")
    assert down > 0.2 * up, (up, down)
    assert after > 0.2 * up, (up, after)
    files = sorted(p.name for p in (Path(d.state_dir) / "containers" / "firehose").iterdir())
    assert "container.log.2" not in files and "container.log.1" in files


def _safe_last(d: Daemon, name: str) -> int | None:
    log = Path(d.state_dir) / "containers" / name / "container.log"
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return None
    for line in reversed(data.splitlines()):
        try:
            return int(json.loads(line)["log"]) + 1  # +1: 0 is a value, None is "no line"
        except (ValueError, KeyError):
            continue
    return None


def test_sigterm_leaves_containers_running_and_the_next_daemon_adopts_them(
    daemon: Daemon,
) -> None:
    d = daemon
    d.start()
    d.cli("run", "-d", "--name", "keep", d.rootfs, "--", "sleep", "1000")
    pid = d.wait_for("keep", lambda i: i["state"] == "running")["pid"]
    d.stop_daemon(signal.SIGTERM)
    assert d.proc is not None and d.proc.returncode == 0
    assert ppid(pid) is not None
    d.start()
    info = d.wait_for("keep", lambda i: i["state"] == "running")
    assert info["pid"] == pid


def test_corrupt_state_file_is_reported_and_skipped(daemon: Daemon) -> None:
    d = daemon
    d.start()
    d.cli("run", "-d", "--name", "good", d.rootfs, "--", "sleep", "1000")
    d.cli("run", "-d", "--name", "bad", d.rootfs, "--", "sleep", "1000")
    pid = d.wait_for("good", lambda i: i["state"] == "running")["pid"]
    d.wait_for("bad", lambda i: i["state"] == "running")
    d.stop_daemon(signal.SIGKILL)
    state = Path(d.state_dir) / "containers" / "bad" / "state.json"
    state.write_text(state.read_text()[:20])  # truncated mid-write (by hand)
    d.start()
    assert d.wait_for("good", lambda i: i["state"] == "running")["pid"] == pid
    assert d.cli("inspect", "bad", check=False).returncode == 1
    assert "state.corrupt" in d.log()


def test_stop_containers_on_shutdown_stops_them_in_parallel_within_their_grace(
    daemon: Daemon, tmp_path: Path
) -> None:
    """With stop_containers_on_shutdown, SIGTERM stops every container (stop
    signal, grace period, SIGKILL) at the same time, not one after another."""
    d = daemon
    cfg = tmp_path / "nsvisor.toml"
    body = "[daemon]\nstop_containers_on_shutdown = true\n"
    for n in ("s1", "s2", "s3"):
        body += (
            f'[containers.{n}]\nrootfs = "{d.rootfs}"\nstop_timeout = "2s"\n'
            'command = ["sh", "-c", "trap \'\' TERM; while :; do sleep 1; done"]\n'
        )
    cfg.write_text(body)
    d.start(config=str(cfg))
    pids = [d.wait_for(n, lambda i: i["state"] == "running")["pid"] for n in ("s1", "s2", "s3")]
    t0 = time.monotonic()
    d.stop_daemon(signal.SIGTERM)
    took = time.monotonic() - t0
    print(f"3 containers ignoring SIGTERM, grace 2 s each: daemon stopped in {took:.2f} s")
    assert 2.0 <= took < 5.0, took  # one grace period, not three
    for pid in pids:
        until(lambda pid=pid: ppid(pid) is None, 10, f"monitor {pid} gone")
    for n in ("s1", "s2", "s3"):
        assert cgroup_procs(d, n) == set(), n


def _config(d: Daemon, path: Path, containers: dict[str, str]) -> None:
    body = ""
    for name, command in containers.items():
        body += f'[containers.{name}]\nrootfs = "{d.rootfs}"\ncommand = {json.dumps(command)}\n'
    path.write_text(body)


def _pids(d: Daemon) -> dict[str, int]:
    return {
        c["name"]: c["pid"]
        for c in json.loads(d.cli("ps", "-a", "--format", "json").stdout)
        if c["state"] == "running"
    }


def test_reload_adds_removes_recreates_changed_and_leaves_unchanged_alone(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    cfg = tmp_path / "nsvisor.toml"
    _config(d, cfg, {"a": "sleep 1001", "b": "sleep 1002", "c": "sleep 1003"})
    d.start(config=str(cfg))
    d.cli("run", "-d", "--name", "manual", d.rootfs, "--", "sleep", "1000")
    for n in ("a", "b", "c", "manual"):
        d.wait_for(n, lambda i: i["state"] == "running")
    before = _pids(d)

    _config(d, cfg, {"b": "sleep 2002", "c": "sleep 1003", "d": "sleep 1004"})
    r = d.cli("reload")
    assert r.stdout.splitlines() == ["added: d", "removed: a", "changed: b", "unchanged: c"]
    after = _pids(d)
    assert set(after) == {"b", "c", "d", "manual"}
    assert after["c"] == before["c"] and after["manual"] == before["manual"]
    assert after["b"] != before["b"]
    assert d.inspect("b")["command"] == ["sleep", "2002"]
    assert d.cli("inspect", "a", check=False).returncode == 1
    assert (
        ppid(before["a"]) is None or Path(f"/proc/{before['a']}/stat").read_text().split()[2] == "Z"
    )

    # SIGHUP does the same.
    _config(d, cfg, {"b": "sleep 2002", "c": "sleep 1003", "d": "sleep 1004", "e": "sleep 1005"})
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("e", lambda i: i["state"] == "running", what="e started by SIGHUP")
    final = _pids(d)
    assert {k: final[k] for k in ("b", "c", "d", "manual")} == {
        k: after[k] for k in ("b", "c", "d", "manual")
    }


def test_a_bad_config_is_rejected_whole_with_check_configs_messages(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    cfg = tmp_path / "nsvisor.toml"
    _config(d, cfg, {"a": "sleep 1001", "b": "sleep 1002"})
    d.start(config=str(cfg))
    for n in ("a", "b"):
        d.wait_for(n, lambda i: i["state"] == "running")
    before = _pids(d)
    good = cfg.read_text()
    cfg.write_text(
        good.replace('command = "sleep 1001"', 'command = "sleep 1001"\nmemory = "lots"')
        + f'[containers.new]\nrootfs = "{d.rootfs}"\ncommand = "sleep 1"\nrestrat = "always"\n'
    )
    check = subprocess.run(
        [sys.executable, "-m", "supervisor", "check-config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 2
    r = d.cli("reload", check=False)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "nsvisor: reload rejected, nothing changed:"
    assert r.stderr.splitlines()[1:] == check.stderr.splitlines()
    assert "memory" in r.stderr and "restrat" in r.stderr and "did you mean restart?" in r.stderr
    assert _pids(d) == before
    assert d.cli("inspect", "new", check=False).returncode == 1
    # A bad config on SIGHUP changes nothing either, and is logged.
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    until(lambda: "daemon.reload_rejected" in d.log(), what="the rejection in the daemon log")
    assert _pids(d) == before


def test_sd_notify_ready_reloading_stopping(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Type=notify: READY=1 once the API answers and every container is
    started; RELOADING=1 then READY=1 around a reload; STOPPING=1 on SIGTERM."""
    d = daemon
    cfg = tmp_path / "nsvisor.toml"
    _config(d, cfg, {"a": "sleep 1001"})
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    try:
        d.start(config=str(cfg))
        ready = sock.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1", ready
        # READY means started: the container is already running.
        assert d.inspect("a")["state"] == "running"
        d.cli("reload")
        assert sock.recv(4096).decode() == "RELOADING=1"
        assert sock.recv(4096).decode() == "READY=1"
        d.stop_daemon(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
    finally:
        sock.close()


def test_exec_into_missing_or_stopped_container_fails_clearly(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli("exec", "nope", "--", "true", check=False)
    assert r.returncode == 1 and "no such container: nope" in r.stderr
    d.cli("run", "-d", "--name", "done", d.rootfs, "--", "true")
    d.wait_for("done", lambda i: i["state"] == "exited")
    r = d.cli("exec", "done", "--", "true", check=False)
    assert r.returncode == 2 and "not running" in r.stderr


def test_a_killed_container_restarts_by_its_policy_every_time(running_daemon: Daemon) -> None:
    """`nsvisor kill` (SIGKILL through cgroup.kill) then the restart policy:
    the next run starts, also after a second kill. On 6.18 a workload cloned
    into a cgroup that was ever cgroup.kill'ed is killed by the kernel at
    once, so the daemon makes the cgroup anew after a kill."""
    d = running_daemon
    d.cli("run", "-d", "--name", "k", "--restart", "always", d.rootfs, "--", "sleep", "1000")
    pids = [d.wait_for("k", lambda i: i["state"] == "running")["pid"]]
    for n in (1, 2):
        d.cli("kill", "k")
        info = d.wait_for(
            "k",
            lambda i, n=n: i["state"] == "running" and i["restart_count"] == n,  # type: ignore[misc]
            what=f"running again after kill {n}",
        )
        assert info["pid"] not in pids
        pids.append(info["pid"])
    assert "restart_failed" not in d.log()
