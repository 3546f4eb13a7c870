"""`nsvisor top NAME`: exactly the processes of the container's cgroup, each
with its host pid and its pid inside the container (the last NSpid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import cgroup_procs, until

pytestmark = [pytest.mark.e2e]


def test_top_pids_are_the_cgroups_procs(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "box", "-u", "1000:1000", d.rootfs, "--",
          "sh", "-c", "sleep 1000 & sleep 1001 & wait")  # fmt: skip
    d.wait_for("box", lambda i: i["state"] == "running")
    procs = until(lambda: len(cgroup_procs(d, "box")) == 3 and cgroup_procs(d, "box"), 30)
    rows = json.loads(d.cli("top", "--format", "json", "box").stdout)
    assert {r["pid"] for r in rows} == procs
    for r in rows:
        nspid = next(
            line.split()[1:]
            for line in Path(f"/proc/{r['pid']}/status").read_text().splitlines()
            if line.startswith("NSpid:")
        )
        assert nspid == [str(r["pid"]), str(r["container_pid"])]
        assert r["uid"] == 1000
    by_cpid = {r["container_pid"]: r for r in rows}
    assert by_cpid[2]["command"] == "sh -c sleep 1000 & sleep 1001 & wait"
    assert sorted(r["command"] for r in rows if r["container_pid"] != 2) == [
        "sleep 1000",
        "sleep 1001",
    ]
    # The table: a header and one line per process, host and container pids.
    lines = d.cli("top", "box").stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "CPID", "PPID", "STAT", "CMD"]
    assert {int(line.split()[1]) for line in lines[1:]} == procs
    r = d.cli("top", "nosuch", check=False)
    assert r.returncode == 1 and "no such container" in r.stderr
    d.cli("stop", "-t", "1", "box")
    r = d.cli("top", "box", check=False)
    assert r.returncode == 2 and "not running" in r.stderr
