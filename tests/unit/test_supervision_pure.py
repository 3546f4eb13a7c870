"""The pure parts of supervision: health verdicts, reload plans, systemd
detection, log rotation and time parsing, exec specs and config keys."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli import since_epoch, status_text
from supervisor.config import HealthCheck, resolve_user, validate_container
from supervisor.daemon.app import reload_plan
from supervisor.daemon.health import Verdict, judge
from supervisor.daemon.logs import parse_log_time, rotated_paths
from supervisor.daemon.systemd import notify_address, sd_notify, service_cgroup
from supervisor.errors import ConfigError
from supervisor.runtime.exec import ExecSpec, exit_code_of, starttime_from_stat

CHECK = HealthCheck(command=("true",), retries=3, start_period_s=10.0)


# --- health -------------------------------------------------------------------


def test_one_success_makes_it_healthy_and_resets_the_streak() -> None:
    assert judge(CHECK, Verdict("unhealthy", 5), ok=True, since_start_s=99) == Verdict("healthy", 0)


def test_failures_in_the_start_period_do_not_count() -> None:
    v = Verdict("starting", 0)
    for _ in range(10):
        v = judge(CHECK, v, ok=False, since_start_s=5)
    assert v == Verdict("starting", 0)


def test_retries_failures_in_a_row_make_it_unhealthy() -> None:
    v = Verdict("healthy", 0)
    v = judge(CHECK, v, ok=False, since_start_s=20)
    v = judge(CHECK, v, ok=False, since_start_s=21)
    assert v == Verdict("healthy", 2)
    assert judge(CHECK, v, ok=False, since_start_s=22) == Verdict("unhealthy", 3)


def test_a_success_ends_the_start_period_early() -> None:
    v = judge(CHECK, Verdict("starting", 0), ok=True, since_start_s=1)
    v = judge(CHECK, v, ok=False, since_start_s=2)
    assert v == Verdict("healthy", 1)  # counts now, although within the start period


# --- reload -------------------------------------------------------------------


def _spec(tmp_path: Path, name: str, **extra: Any) -> Any:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    sh = rootfs / "bin" / "sh"
    sh.write_text("#!/bin/sh\n")
    sh.chmod(0o755)
    return validate_container({"name": name, "rootfs": str(rootfs), "command": "sh", **extra})


def test_reload_plan(tmp_path: Path) -> None:
    current = {n: _spec(tmp_path, n) for n in ("a", "b", "c")}
    wanted = {
        "b": _spec(tmp_path, "b", env=["X=1"]),
        "c": _spec(tmp_path, "c"),
        "d": _spec(tmp_path, "d"),
    }
    assert reload_plan(current, wanted) == {
        "added": ["d"],
        "removed": ["a"],
        "changed": ["b"],
        "unchanged": ["c"],
    }


# --- config keys ---------------------------------------------------------------


def test_health_and_log_keys_round_trip(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "web",
        restart="always",
        health_cmd="wget -q -O- localhost",
        health_interval="5s",
        health_retries=2,
        on_unhealthy="restart",
        log_max_size="10m",
        log_max_files=3,
    )
    assert spec.health is not None
    assert spec.health.command == ("sh", "-c", "wget -q -O- localhost")
    assert (spec.health.interval_s, spec.health.timeout_s, spec.health.retries) == (5.0, 30.0, 2)
    assert (spec.log_max_size_bytes, spec.log_max_files) == (10 * 1024 * 1024, 3)
    assert validate_container(spec.to_raw()) == spec


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"health_cmd": "true", "on_unhealthy": "restart"}, "on_unhealthy"),  # restart = "no"
        ({"health_interval": "1s"}, "health_interval"),  # no health_cmd
        ({"health_cmd": "true", "health_retries": 0}, "health_retries"),
        ({"health_cmd": "true", "on_unhealthy": "reboot"}, "on_unhealthy"),
        ({"log_max_files": 3}, "log_max_files"),  # no log_max_size
        ({"log_max_size": "1k"}, "log_max_size"),
    ],
)
def test_bad_health_and_log_keys(tmp_path: Path, extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _spec(tmp_path, "x", **extra)
    assert [p.field for p in info.value.problems] == [field]


def test_resolve_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("app:x:1001:\nextra:x:2000:app\n")
    assert resolve_user("app", str(tmp_path)) == (1000, 1001, (2000,))
    assert resolve_user("5:6", str(tmp_path)) == (5, 6, ())
    with pytest.raises(ConfigError):
        resolve_user("ghost", str(tmp_path))


# --- systemd ------------------------------------------------------------------


def test_notify_address() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_sd_notify_sends_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert s.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})


def test_service_cgroup_only_under_systemd() -> None:
    text = "0::/system.slice/nsvisor.service\n"
    assert service_cgroup({"INVOCATION_ID": "abc"}, text) == "/system.slice/nsvisor.service"
    assert service_cgroup({}, text) is None  # not started by systemd: never move
    assert service_cgroup({"INVOCATION_ID": "abc"}, "0::/user.slice/session-1.scope\n") is None
    hybrid = "12:memory:/system.slice/nsvisor.service\n0::/system.slice/nsvisor.service\n"
    assert service_cgroup({"INVOCATION_ID": "x"}, hybrid) == "/system.slice/nsvisor.service"


# --- logs ---------------------------------------------------------------------


def test_parse_log_time() -> None:
    assert parse_log_time("1970-01-01T00:00:01.500000000Z") == pytest.approx(1.5)
    assert parse_log_time("2026-01-02T15:04:05Z") == pytest.approx(1767366245.0)
    assert parse_log_time("garbage") is None
    assert parse_log_time(None) is None


def test_since_epoch() -> None:
    assert since_epoch("10m", 1000.0) == 400.0
    assert since_epoch("1700000000", 0) == 1700000000.0
    assert since_epoch("1970-01-01T00:00:10Z", 0) == 10.0
    assert since_epoch("whenever", 0) is None


def test_rotated_paths_oldest_first(tmp_path: Path) -> None:
    """The reader's side of rotation (the monitor rotates: tests/kernel/test_monitor.py)."""
    log = tmp_path / "container.log"
    for name in ("container.log", "container.log.1", "container.log.2"):
        (tmp_path / name).write_text("x\n")
    assert rotated_paths(str(log)) == [str(log) + ".2", str(log) + ".1"]


# --- exec ---------------------------------------------------------------------


def test_exec_spec_round_trip() -> None:
    spec = ExecSpec(
        name="web",
        argv=("sh", "-c", "true"),
        env=("PATH=/bin",),
        cwd="/",
        uid=1,
        gid=2,
        additional_gids=(3,),
        capabilities=("CHOWN",),
        cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",),
        target_pid=42,
        target_starttime=7,
        tty=True,
    )
    assert ExecSpec.from_json(spec.to_json()) == spec
    assert spec.path_env() == "/bin"


def test_starttime_and_exit_codes() -> None:
    stat = b"42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 20\n"
    assert starttime_from_stat(stat) == 999
    assert exit_code_of(3 << 8) == 3
    assert exit_code_of(9) == 137


def test_ps_status_shows_health() -> None:
    base = {"state": "running", "started_at": 100.0}
    assert status_text({**base, "health": "healthy"}, 103) == "Up 3 seconds (healthy)"
    assert status_text({**base, "health": "starting"}, 103) == "Up 3 seconds (health: starting)"
    assert status_text(base, 103) == "Up 3 seconds"
