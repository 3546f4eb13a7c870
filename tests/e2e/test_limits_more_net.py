"""--network-rate IN[:OUT] end to end: TCP between a bridged container and a
network namespace the test creates (another "host"), measured at the
receiving end. IN is shaped by a tbf on the host end of the container's veth,
OUT by a tbf on an ifb the veth's ingress is redirected to; both go with the
container's run (nothing of the test's interface prefix is left)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import Daemon, free_port
from tests.e2e.test_network import Net, net, outside_host, start

pytestmark = [pytest.mark.e2e]
__all__ = ["net"]  # the fixture, imported for its registration

SIZE = 1_000_000  # bytes per transfer

# Receives SIZE bytes on PORT, prints the seconds from the first to the last byte.
RECEIVER = (
    "import socket,sys,time\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen();print('ready',flush=True)\n"
    "c,_=s.accept();n=0;t0=None\n"
    f"while n<{SIZE}:\n"
    " d=c.recv(65536)\n"
    " if not d: break\n"
    " t0=t0 or time.monotonic();n+=len(d)\n"
    "print(n,time.monotonic()-t0,flush=True);c.close()\n"
)
# Sends SIZE bytes to whoever connects on PORT.
SENDER = (
    "import socket,sys\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen();print('ready',flush=True)\n"
    f"c,_=s.accept();c.sendall(b'x'*{SIZE});c.close()\n"
)


def serve(ns: str, code: str, port: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def test_network_rate_shapes_both_directions_near_the_configured_rate(
    daemon: Daemon, net: Net
) -> None:
    start(daemon, net)
    up, down = free_port(), free_port()
    with outside_host(net.prefix) as (ns, _host_ip, out_ip):
        # OUT: the container sends 1 MB at 2 mbit/s: about 4 s at the receiver.
        receiver = serve(ns, RECEIVER, up)
        try:
            daemon.cli(
                "run", "--rm", "--network", "bridge", "--network-rate", "4mbit:2mbit",
                daemon.rootfs, "--", "sh", "-c", f"head -c {SIZE} /dev/zero | nc {out_ip} {up}",
                timeout=120,
            )  # fmt: skip
            assert receiver.stdout is not None
            n, seconds = receiver.stdout.readline().split()
        finally:
            receiver.kill()
            receiver.wait()
        assert int(n) == SIZE
        out_rate = SIZE * 8 / float(seconds)
        assert 0.4 * 2e6 < out_rate < 1.25 * 2e6, out_rate
        # IN: 1 MB to the container at 4 mbit/s: about 2 s, on top of the start.
        sender = serve(ns, SENDER, down)
        try:
            t0 = time.monotonic()
            r = daemon.cli(
                "run", "--rm", "--network", "bridge", "--network-rate", "4mbit:2mbit",
                daemon.rootfs, "--", "sh", "-c", f"nc {out_ip} {down} | wc -c",
                timeout=120,
            )  # fmt: skip
            elapsed = time.monotonic() - t0
        finally:
            sender.kill()
            sender.wait()
        assert r.stdout.strip() == str(SIZE)
        expected = SIZE * 8 / 4e6
        assert 0.8 * expected < elapsed < expected + 15, elapsed
    assert net.leftovers() == []  # veth, ifb, bridge, table: all gone with the runs


def test_network_rate_needs_a_bridge_and_a_unit(daemon: Daemon, net: Net) -> None:
    start(daemon, net)
    for args, words in (
        (["--network-rate", "10mbit"], "needs a bridge network"),
        (["--network", "bridge", "--network-rate", "10"], "has no unit"),
        (["--network", "bridge", "--network-rate", "10mb"], 'unknown unit "mb"'),
    ):
        r = daemon.cli(
            "run", "-d", "--name", "bad", *args, daemon.rootfs, "--", "true", check=False
        )
        assert r.returncode == 2 and "--network-rate" in r.stderr and words in r.stderr, r
    assert daemon.cli("ps", "-a", "--format", "json").stdout.strip() == "[]"
