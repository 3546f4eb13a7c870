"""exporters.netdev.NetReader with kept files: /proc/PID/net/dev opened
once per run and re-read with pread, against a real network namespace made
here (unshare -n) and removed with its process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from exporters.netdev import NetReader

pytestmark = pytest.mark.kernel

CHILD = """
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
print("ready", flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(10):
    s.sendto(b"x" * 1000, ("127.0.0.1", 9))
print("sent", flush=True)
sys.stdin.readline()
"""


def _open_net_dev_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"/proc/{pid}/net/dev":
                n += 1
        except OSError:
            continue
    return n


def test_a_kept_net_dev_file_shows_the_counters_of_now_and_is_closed_after_the_run() -> None:
    p = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == "ready\n"
        reader = NetReader()
        assert not reader.shares_host_netns(p.pid)
        run = (p.pid, 1.0)
        before = {d.interface: d for d in reader.read(p.pid, run)}
        assert set(before) == {"lo"}
        assert _open_net_dev_fds(p.pid) == 1
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "sent\n"
        reader.roll()  # read during the last scrape: kept
        after = {d.interface: d for d in reader.read(p.pid, run)}
        assert _open_net_dev_fds(p.pid) == 1  # the same fd, re-read
        assert after["lo"].rx_bytes >= before["lo"].rx_bytes + 10 * 1000
        assert after["lo"].rx_packets >= before["lo"].rx_packets + 10
        reader.roll()
        reader.roll()  # not read for a whole scrape: closed
        assert _open_net_dev_fds(p.pid) == 0
    finally:
        if p.stdin is not None:
            p.stdin.close()
        p.kill()
        p.wait()
