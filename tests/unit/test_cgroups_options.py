"""The user's spelling of the issue-9 limits: rates, devices, cpusets,
ulimits; their validation in validate_container (every bad input named with
its fix), the raw round-trip, the CLI's mapping and the update plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from supervisor import cli
from supervisor.cgroups import options
from supervisor.config import validate_container
from supervisor.daemon.translate import io_throttle, limits_for
from supervisor.errors import ConfigError
from supervisor.runtime import rlimits

BASE: dict[str, Any] = {"name": "a", "rootfs": "/", "command": ["/bin/sh"]}


def problems(**raw: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        validate_container({**BASE, **raw}, check_fs=False)
    return {p.field: p.message for p in e.value.problems}


@pytest.fixture
def sys_root(tmp_path: Path) -> str:
    for kind, text in (("cpu", "0-3\n"), ("node", "0\n")):
        d = tmp_path / "devices" / "system" / kind
        d.mkdir(parents=True)
        (d / "online").write_text(text)
    return str(tmp_path)


def test_rates_need_a_unit_and_round_trip() -> None:
    assert options.parse_rate("10mb") == 10 << 20
    assert options.parse_rate("512k") == 512 << 10
    assert options.parse_rate("1.5M") == 3 << 19
    assert options.format_rate(10 << 20) == "10mb"
    assert options.format_rate(1000) == "1000b"
    for value in (1000, 10 << 20, 3 << 19, 1 << 30):
        assert options.parse_rate(options.format_rate(value)) == value
    with pytest.raises(ValueError, match="has no unit"):
        options.parse_rate("10")
    with pytest.raises(ValueError, match="is not a rate"):
        options.parse_rate("10xb")


def test_devices_must_be_existing_whole_block_devices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a block device"):
        options.parse_device_value("/dev/null:1mb", "rate")
    with pytest.raises(ValueError, match="does not exist"):
        options.parse_device_value("/dev/nonexistent:1mb", "rate")
    with pytest.raises(ValueError, match="is not DEVICE:VALUE"):
        options.parse_device_value("1mb", "rate")
    with pytest.raises(ValueError, match="not a weight"):
        options.parse_device_value("/dev/null:5", "weight")


def test_cpuset_checked_against_the_online_cpus(sys_root: str) -> None:
    assert options.parse_cpuset("3,0-1", "cpu", sys_root) == "0-1,3"
    with pytest.raises(
        ValueError, match="CPUs 4-5 that this host does not have online; use CPUs from 0-3"
    ):
        options.parse_cpuset("0,4-5", "cpu", sys_root)
    with pytest.raises(ValueError, match="memory nodes 1"):
        options.parse_cpuset("1", "node", sys_root)
    with pytest.raises(ValueError, match="is empty"):
        options.parse_cpuset("", "cpu", sys_root)


def test_ulimits_docker_names_and_checks() -> None:
    assert rlimits.parse_ulimit("nofile=1024:2048") == ("nofile", 1024, 2048)
    assert rlimits.parse_ulimit("nproc=100") == ("nproc", 100, 100)
    assert rlimits.parse_ulimit("core=unlimited") == ("core", -1, -1)
    assert rlimits.format_ulimit(("core", -1, -1)) == "core=unlimited:unlimited"
    with pytest.raises(ValueError, match="unknown ulimit 'bogus'"):
        rlimits.parse_ulimit("bogus=1")
    with pytest.raises(ValueError, match="soft limit is above the hard"):
        rlimits.parse_ulimit("nofile=10:5")
    assert set(rlimits.RLIMITS) == {
        "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
        "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
    }  # fmt: skip


def test_layout_problems() -> None:
    assert (
        options.layout_problems("v2", memory_high=True, oom_group=True, oom_kill_disable=False)
        == []
    )
    assert [
        k
        for k, _ in options.layout_problems(
            "v2", memory_high=False, oom_group=False, oom_kill_disable=True
        )
    ] == ["oom_kill_disable"]
    assert [
        k
        for k, _ in options.layout_problems(
            "hybrid", memory_high=True, oom_group=True, oom_kill_disable=True
        )
    ] == ["memory_high", "oom_group"]


def test_spec_round_trip_and_limits() -> None:
    spec = validate_container(
        {
            **BASE,
            "memory": "64m",
            "memory_reservation": "32m",
            "memory_high": "48m",
            "oom_score_adj": -500,
            "oom_group": True,
            "cpu_quota": 25000,
            "cpu_period": 50000,
            "cpuset_cpus": "0",
            "ulimits": {"nofile": "1024:2048"},
        },
        check_fs=False,
    )
    assert validate_container(spec.to_raw(), check_fs=False) == spec
    limits = limits_for(spec)
    assert (limits.memory_low, limits.memory_high, limits.oom_group) == (32 << 20, 48 << 20, True)
    assert (limits.cpu_quota_us, limits.cpu_period_us, limits.cpuset_cpus) == (25000, 50000, "0")
    assert spec.ulimits == (("nofile", 1024, 2048),)
    assert io_throttle(spec) == ()


def test_every_bad_limit_is_named_with_its_fix() -> None:
    p = problems(
        memory="32m",
        memory_reservation="64m",
        memory_high="64m",
        ulimits=["bogus=1"],
        device_read_bps=["/dev/null:1mb"],
        cpu_quota=50000,
        cpus=1,
        oom_score_adj=2000,
    )
    assert "above memory" in p["memory_reservation"]
    assert "above memory" in p["memory_high"]
    assert "unknown ulimit" in p["ulimits"]
    assert "not a block device" in p["device_read_bps"]
    assert "set one of them" in p["cpu_quota"]
    assert "out of range" in p["oom_score_adj"]


def test_cli_maps_the_options_to_raw_keys() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "run", "--device-write-bps", "/dev/sda:1mb", "--device-read-iops", "/dev/sda:10",
            "--blkio-weight-device", "/dev/sda:200", "--cpuset-cpus", "0-1",
            "--cpu-quota", "50000", "--cpu-period", "100000", "--memory-reservation", "32m",
            "--memory-high", "48m", "--oom-kill-disable", "--oom-group", "--oom-score-adj", "-10",
            "--ulimit", "nofile=1024:2048", "/r", "true",
        ]
    )  # fmt: skip
    raw = cli.run_raw(args, environ={}, cwd="/")
    assert raw["device_write_bps"] == ["/dev/sda:1mb"]
    assert raw["device_read_iops"] == ["/dev/sda:10"]
    assert raw["blkio_weight_device"] == ["/dev/sda:200"]
    assert raw["cpuset_cpus"] == "0-1"
    assert (raw["cpu_quota"], raw["cpu_period"], raw["oom_score_adj"]) == (50000, 100000, -10)
    assert (raw["memory_reservation"], raw["memory_high"]) == ("32m", "48m")
    assert raw["oom_kill_disable"] is True and raw["oom_group"] is True
    assert raw["ulimits"] == ["nofile=1024:2048"]
    assert cli.option_for("ulimits") == "--ulimit"
    assert cli.option_for("device_write_bps") == "--device-write-bps"
    up = parser.parse_args(["update", "-m", "64m", "--cpus", "1.5", "--pids-limit", "9", "web"])
    assert cli.update_raw(up) == {"memory": "64m", "cpus": 1.5, "pids_limit": 9}


def test_block_device_numbers_of_a_real_disk() -> None:
    """/dev/loop-control is a char device; any whole disk present is accepted."""
    disks = [f"/dev/{n}" for n in os.listdir("/sys/block")] if os.path.isdir("/sys/block") else []
    disks = [d for d in disks if os.path.exists(d)]
    if not disks:
        pytest.skip("no block device node under /dev")
    major, minor = options.block_device(disks[0])
    assert os.path.exists(f"/sys/dev/block/{major}:{minor}")


def test_network_rate_units_and_ifb_names() -> None:
    from supervisor.network import shaping

    assert shaping.parse_network_rate("10mbit:2mbit") == (10_000_000, 2_000_000)
    assert shaping.parse_network_rate("512kbit") == (512_000, None)
    assert shaping.parse_net_rate("1mbps") == 8_000_000  # tc: bps = bytes
    assert shaping.format_net_rate(10_000_000) == "10mbit"
    for bad, words in (
        ("10", "has no unit"),
        ("10mb", 'unknown unit "mb"'),
        ("1bit", "out of range"),
    ):
        with pytest.raises(ValueError, match=words):
            shaping.parse_net_rate(bad)
    assert shaping.ifb_name("nsvv0123abcd") == "nsvi0123abcd"
    assert shaping.is_ifb_of("nsv", "nsvi0123abcd") and not shaping.is_ifb_of("nsv", "nsvv0123abcd")
    t = shaping.tbf_for(2_000_000)
    assert t.rate == 250_000 and t.burst >= shaping.MIN_BURST


def test_network_rate_needs_a_bridge() -> None:
    p = problems(network_rate="10mbit")
    assert "needs a bridge network" in p["network_rate"]
    spec = validate_container(
        {**BASE, "network": "bridge", "network_rate": "8mbit:1mbit"}, check_fs=False
    )
    assert (spec.network_rate_in_bps, spec.network_rate_out_bps) == (8_000_000, 1_000_000)
    assert validate_container(spec.to_raw(), check_fs=False) == spec
