"""Issue-9 limits through the real daemon and CLI: ulimits and oom_score_adj
seen from inside the container, cpuset pinning, the limits in force in
`inspect` (read back from the kernel), memory.high hits in the metrics (v2),
and every kind of bad input refused with the option named and nothing
started. Marked `cgroups`: run on this host's layout and in the v2 VM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.cgroups import parse
from tests.conftest import in_vm
from tests.e2e.conftest import Daemon
from tests.e2e.test_limits_and_metrics import metric, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.cgroups]


def output(d: Daemon, *run_args: str) -> str:
    """Run a container in the foreground and return what it printed."""
    r = d.cli("run", "--rm", *run_args, timeout=120)
    return r.stdout


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[str]:
    """A whole block device: the VM's scratch disk, or a loop device over a
    sparse file in tmp_path, detached afterwards (also on failure)."""
    if in_vm():
        if not os.path.exists("/dev/vda"):
            pytest.skip("the VM has no scratch disk /dev/vda")
        yield "/dev/vda"
        return
    if shutil.which("losetup") is None:
        pytest.skip("losetup (util-linux) is not installed")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    r = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"cannot set up a loop device: {r.stderr.strip()}")
    device = r.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_ulimits_are_visible_in_proc_self_limits(running_daemon: Daemon) -> None:
    d = running_daemon
    text = output(
        d, "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=300", d.rootfs, "--",
        "cat", "/proc/self/limits",
    )  # fmt: skip
    rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[1:]}
    assert rows["Max open files"][:2] == ["1024", "2048"], text
    assert rows["Max processes"][:2] == ["300", "300"], text


def test_oom_score_adj_is_set_before_exec(running_daemon: Daemon) -> None:
    d = running_daemon
    text = output(d, "--oom-score-adj", "500", d.rootfs, "--", "cat", "/proc/self/oom_score_adj")
    assert text.strip() == "500"


def test_cpuset_pins_the_container_to_the_allowed_cpu(running_daemon: Daemon) -> None:
    with open("/sys/devices/system/cpu/online") as f:
        online = sorted(parse.parse_cpu_list(f.read()))
    if len(online) < 2:
        pytest.skip(f"one online CPU ({online}): pinning could not be told apart")
    d = running_daemon
    cpu = str(online[-1])
    text = output(
        d, "--cpuset-cpus", cpu, d.rootfs, "--", "grep", "Cpus_allowed_list", "/proc/self/status"
    )
    assert text.split(":")[1].strip() == cpu, text
    d.cli("run", "-d", "--name", "pinned", "--cpuset-cpus", cpu, d.rootfs, "--", "sleep", "1000")
    info = d.wait_for("pinned", lambda i: i["state"] == "running")
    assert info["limits"]["cpuset_cpus"] == cpu, info["limits"]
    assert info["config"]["cpuset_cpus"] == cpu


def test_inspect_shows_the_limits_read_back_from_the_kernel(
    running_daemon: Daemon, disk: str
) -> None:
    d = running_daemon
    st = os.stat(disk)
    d.cli(
        "run", "-d", "--name", "lim", "--memory", "64m", "--memory-reservation", "32m",
        "--cpu-period", "50000", "--cpu-quota", "25000", "--pids-limit", "50",
        "--device-write-bps", f"{disk}:1mb", "--device-read-iops", f"{disk}:100",
        d.rootfs, "--", "sleep", "1000",
    )  # fmt: skip
    info = d.wait_for("lim", lambda i: i["state"] == "running")
    limits = info["limits"]
    assert limits["memory_max"] == 64 << 20
    assert limits["memory_low"] == 32 << 20
    assert (limits["cpu_quota_us"], limits["cpu_period_us"]) == (25000, 50000)
    assert limits["pids_max"] == 50
    assert limits["io_throttle"] == [
        {
            "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev),
            "read_bps": None,
            "write_bps": 1 << 20,
            "read_iops": 100,
            "write_iops": None,
        }
    ]
    s = scrape(d)
    assert metric(s, "container_spec_cpu_quota", "lim") == 25000
    assert metric(s, "container_spec_cpu_period", "lim") == 50000
    assert metric(s, "container_spec_memory_limit_bytes", "lim") == 64 << 20
    assert metric(s, "container_spec_memory_reservation_limit_bytes", "lim") == 32 << 20


@pytest.mark.cgroup2
def test_memory_high_hits_reach_memory_events_and_the_metrics(running_daemon: Daemon) -> None:
    """The container reads files (page cache, which memory.high reclaims;
    anonymous memory without swap would only be throttled, for minutes)."""
    d = running_daemon
    venv = os.path.realpath(sys.prefix)
    d.cli(
        "run", "-d", "--name", "high", "--memory-high", "16m", "-v", f"{venv}:/v:ro", d.rootfs,
        "--", "sh", "-c", "find /v -type f -exec cat {} + > /dev/null; sleep 1000",
    )  # fmt: skip
    info = d.wait_for(
        "high", lambda i: i["memory_events"].get("high", 0) > 0, timeout=300, what="high events"
    )
    assert info["limits"]["memory_high"] == 16 << 20
    deadline = time.monotonic() + 60
    while True:
        value = metric(scrape(d), "nsvisor_memory_events_total", "high", 'event="high"')
        if value:
            break
        assert time.monotonic() < deadline, value
        time.sleep(0.5)
    assert value > 0


def _no_container(d: Daemon) -> None:
    listed = json.loads(d.cli("ps", "-a", "--format", "json").stdout)
    assert listed == [], listed


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--device-write-bps", "{disk}:10"], "--device-write-bps", "has no unit"),
        (["--device-write-bps", "{disk}:10xb"], "--device-write-bps", "is not a rate"),
        (["--device-read-bps", "/dev/null:1mb"], "--device-read-bps", "not a block device"),
        (["--device-read-iops", "/dev/nonexistent:100"], "--device-read-iops", "does not exist"),
        (["--cpuset-cpus", "0,4096"], "--cpuset-cpus", "does not have online"),
        (["--cpuset-mems", "4096"], "--cpuset-mems", "does not have online"),
        (["-m", "32m", "--memory-reservation", "64m"], "--memory-reservation", "above memory"),
        (["--ulimit", "bogus=1"], "--ulimit", "unknown ulimit"),
        (["--ulimit", "nofile=2048:1024"], "--ulimit", "soft limit is above the hard"),
        (["--cpus", "1", "--cpu-quota", "50000"], "--cpu-quota", "set one of them"),
        (["--oom-score-adj", "5000"], "--oom-score-adj", "out of range"),
    ],
)
def test_bad_limit_input_is_refused_and_nothing_starts(
    running_daemon: Daemon, disk: str, args: list[str], option: str, words: str
) -> None:
    d = running_daemon
    argv = [a.format(disk=disk) for a in args]
    r = d.cli("run", "-d", "--name", "bad", *argv, d.rootfs, "--", "true", check=False)
    assert r.returncode == 2, r
    assert option in r.stderr and words in r.stderr, r.stderr
    _no_container(d)


def test_layout_specific_options_are_refused_where_unsupported(running_daemon: Daemon) -> None:
    d = running_daemon
    layout = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "hybrid"
    if layout == "v2":
        bad, option = ["--oom-kill-disable"], "--oom-kill-disable"
    else:
        bad, option = ["--memory-high", "16m"], "--memory-high"
    r = d.cli("run", "-d", "--name", "bad", *bad, d.rootfs, "--", "true", check=False)
    assert r.returncode == 2 and option in r.stderr, r
    _no_container(d)
