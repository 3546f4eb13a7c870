"""`nsvisor stats`: one sample per interval from the daemon, values that are
the cgroup files' (checked here against the files themselves), CPU % as
docker stats computes it, and one read per interval however many viewers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client
from tests.e2e.conftest import CGROUP_ROOT, Daemon

pytestmark = [pytest.mark.e2e]

V2 = (CGROUP_ROOT / "cgroup.controllers").exists()


def cg(d: Daemon, controller: str, name: str) -> Path:
    if V2:
        return CGROUP_ROOT / d.cgroup_parent / name
    return CGROUP_ROOT / controller / d.cgroup_parent / name


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def cpu_usage_ns(d: Daemon, name: str) -> int:
    if V2:
        return keyed(cg(d, "cpu", name) / "cpu.stat")["usage_usec"] * 1000
    return read_int(cg(d, "cpuacct", name) / "cpuacct.usage")


def working_set(d: Daemon, name: str) -> int:
    if V2:
        usage = read_int(cg(d, "memory", name) / "memory.current")
        inactive = keyed(cg(d, "memory", name) / "memory.stat")["inactive_file"]
    else:
        usage = read_int(cg(d, "memory", name) / "memory.usage_in_bytes")
        inactive = keyed(cg(d, "memory", name) / "memory.stat")["total_inactive_file"]
    return max(0, usage - inactive)


def stats(d: Daemon, *names: str) -> list[dict[str, Any]]:
    r = d.cli("stats", "--no-stream", "--format", "json", *names)
    data = json.loads(r.stdout)
    assert isinstance(data, list)
    return data


@pytest.fixture
def pair(running_daemon: Daemon) -> Daemon:
    d = running_daemon
    d.cli("run", "-d", "--name", "hog", "-m", "64m", "--cpus", "0.5", d.rootfs, "--",
          "sh", "-c", "while :; do :; done")  # fmt: skip
    d.cli("run", "-d", "--name", "idle", "--pids-limit", "50", d.rootfs, "--",
          "sh", "-c", "sleep 1000 & sleep 1000 & wait")  # fmt: skip
    for name in ("hog", "idle"):
        d.wait_for(name, lambda i: i["state"] == "running")
    return d


def test_no_stream_json_matches_the_cgroup_files(pair: Daemon) -> None:
    d = pair
    before = {n: cpu_usage_ns(d, n) for n in ("hog", "idle")}
    rows = {r["name"]: r for r in stats(d)}
    after = {n: cpu_usage_ns(d, n) for n in ("hog", "idle")}
    assert set(rows) == {"hog", "idle"}
    hog, idle = rows["hog"], rows["idle"]
    for name, row in rows.items():
        assert before[name] <= row["cpu_usage_ns"] <= after[name], (name, row, before, after)
        assert row["restarts"] == 0 and row["health"] is None and row["state"] == "running"
        assert row["id"] == f"/{d.cgroup_parent}/{name}"
    # --cpus 0.5: half of one CPU; docker's formula makes 100 % one CPU.
    assert 30 <= hog["cpu_percent"] <= 70, hog
    assert idle["cpu_percent"] < 5, idle
    # The limit is the file's; without one, the host's memory.
    assert hog["memory_limit"] == 64 * 1024 * 1024
    limit_file = "memory.max" if V2 else "memory.limit_in_bytes"
    assert read_int(cg(d, "memory", "hog") / limit_file) == hog["memory_limit"]
    host_mem = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert idle["memory_limit"] == host_mem
    # An idle sleep's working set does not move between the two reads.
    ws = working_set(d, "idle")
    assert abs(idle["memory_usage"] - ws) <= 256 * 1024, (idle, ws)
    assert idle["memory_percent"] == pytest.approx(idle["memory_usage"] / host_mem * 100, abs=0.01)
    # pids.current: sh and its two sleeps.
    assert idle["pids"] == read_int(cg(d, "pids", "idle") / "pids.current") == 3
    # network=none: only lo, nothing sent; block I/O as the io files say (0 here).
    assert idle["net_rx_bytes"] == idle["net_tx_bytes"] == 0
    assert idle["block_read_bytes"] is not None
    # NAME arguments filter.
    assert [r["name"] for r in stats(d, "idle")] == ["idle"]
    r = d.cli("stats", "--no-stream", "nosuch", check=False)
    assert r.returncode == 1 and "no such container" in r.stderr


def test_table_is_plain_text_when_not_a_terminal(pair: Daemon) -> None:
    d = pair
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "--socket", d.socket, "stats", "--no-stream"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "NO_COLOR": "1"},
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "CPU", "%"], out
    assert "\x1b[" not in out
    assert {line.split()[0] for line in lines[1:]} == {"hog", "idle"}
    assert "64MiB" in next(line for line in lines if line.startswith("hog"))


def test_a_live_table_on_a_terminal_refreshes_in_place(pair: Daemon) -> None:
    """On a terminal, rich redraws the table (cursor-up sequences), and
    NO_COLOR keeps the colours out."""
    import pty
    import select

    d = pair
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover
        os.environ["NO_COLOR"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "supervisor", "--socket", d.socket,
                                  "stats"])  # fmt: skip
    buf = b""
    try:
        deadline = time.monotonic() + 30
        while buf.count(b"hog") < 3 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                buf += os.read(fd, 65536)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    assert buf.count(b"hog") >= 3, buf
    assert b"\x1b[1A" in buf or b"\x1b[2K" in buf, buf  # redrawn in place
    assert b"\x1b[3" not in buf  # no foreground colours with NO_COLOR


def test_many_viewers_share_one_read_per_interval(pair: Daemon) -> None:
    """30 streaming viewers for ~4 s: the sample sequence numbers they see
    grow by one per second, not by one per viewer."""
    d = pair
    seen: list[list[int]] = []
    lock = threading.Lock()

    def viewer() -> None:
        mine: list[int] = []
        for line in Client(d.socket, timeout=30).stream("GET", "/v1/stats?stream=1"):
            mine.append(int(line["seq"]))
            if len(mine) == 4:
                break
        with lock:
            seen.append(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=viewer) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert len(seen) == 30
    distinct = {s for mine in seen for s in mine}
    assert len(distinct) <= elapsed / 1.0 + 3, (elapsed, sorted(distinct))
    for mine in seen:
        assert mine == sorted(set(mine)), mine  # every line is a new sample
