"""Bridge networking end to end: the real daemon and CLI, a bridge, a subnet
and an interface prefix of each test's own (parallel daemons never clash),
traffic only on loopback and between network namespaces the tests create.
After every test nothing of it is left: no veth, bridge, namespace or
nftables table (checked, and swept also when the test fails)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Daemon, free_port

pytestmark = [pytest.mark.e2e]

# Serves its own host name at /hostname.
HTTPD = (
    "sh",
    "-c",
    "mkdir -p /tmp/w && hostname > /tmp/w/hostname && exec httpd -f -p 80 -h /tmp/w",
)
PYTHON_MOUNTS = ("-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro")


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def _table_exists(table: str) -> bool:
    return (
        subprocess.run(["nft", "list", "table", "ip", table], capture_output=True).returncode == 0
    )


@dataclass
class Net:
    prefix: str
    bridge: str
    subnet: str  # 10.X.Y.0/24
    base: str  # "10.X.Y."

    @property
    def table(self) -> str:
        return f"nsvisor_{self.prefix}"

    def leftovers(self) -> list[str]:
        found = [name for name in _links() if name.startswith(self.prefix)]
        if _table_exists(self.table):
            found.append(f"nft table ip {self.table}")
        return found

    def sweep(self) -> None:
        """Remove only what carries this test's prefix."""
        for name in self.leftovers():
            if name.startswith("nft "):
                subprocess.run(["nft", "delete", "table", "ip", self.table], check=False)
            else:
                subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


@pytest.fixture
def net(daemon: Daemon) -> Iterator[Net]:
    prefix = "t" + secrets.token_hex(2)  # 5 chars: t + 4 hex
    x, y = 100 + secrets.randbelow(100), secrets.randbelow(250)
    n = Net(prefix, f"{prefix}br", f"10.{x}.{y}.0/24", f"10.{x}.{y}.")
    try:
        yield n
    finally:
        daemon.cleanup()
        n.sweep()


def start(daemon: Daemon, net: Net) -> None:
    daemon.start(
        extra=["--bridge", net.bridge, "--bridge-subnet", net.subnet, "--net-prefix", net.prefix]
    )


@contextlib.contextmanager
def outside_host(tag: str) -> Iterator[tuple[str, str, str]]:
    """A network namespace acting as another host: a veth pair between it and
    the host with a /30 of its own. Yields (netns, host side ip, outside ip);
    everything is removed afterwards."""
    ns, host_if = f"{tag}o", f"{tag}h"
    a, b = 10 + secrets.randbelow(40), secrets.randbelow(250)
    host_ip, out_ip = f"10.{a}.{b}.1", f"10.{a}.{b}.2"
    cmds = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{out_ip}/30", "dev", "eth0"],
        ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", host_ip],
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns, host_ip, out_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_ns(ns: str, code: str, timeout: float = 20) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def http_get(host: str, port: int, path: str = "/", timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data.decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_container_to_container_by_name_and_a_published_port_from_loopback(
    daemon: Daemon, net: Net
) -> None:
    """Two containers on the default bridge reach each other by name; a port
    published with -p answers on the host's 127.0.0.1; after rm nothing is
    left (veth, bridge, namespace, nftables table) and the address is free."""
    start(daemon, net)
    port = free_port()
    daemon.cli(
        "run", "-d", "--name", "web", "--network", "bridge", "-p", f"{port}:80",
        "--tmpfs", "/tmp", daemon.rootfs, "--", *HTTPD,
    )  # fmt: skip
    info = daemon.inspect("web")["network"]
    assert info["ip_address"] == net.base + "2" and info["gateway"] == net.base + "1"
    assert info["mac_address"] == "02:42:" + ":".join(
        f"{int(b):02x}" for b in info["ip_address"].split(".")
    )
    r = daemon.cli(
        "run", "--rm", "--network", "bridge", daemon.rootfs, "--",
        "sh", "-c", "wget -qO- http://web/hostname && ip -o -4 addr show eth0 && ip route",
    )  # fmt: skip
    assert r.stdout.startswith("web\n")
    assert f"inet {net.base}3/24" in r.stdout and f"default via {net.base}1" in r.stdout
    assert http_get("127.0.0.1", port, "/hostname").endswith("web\n")
    assert net.bridge in _links() and _table_exists(net.table)
    daemon.cli("rm", "-f", "web")
    assert net.leftovers() == []
    assert not os.listdir(os.path.join(daemon.state_dir, "network", "netns"))


def test_published_tcp_and_udp_from_an_outside_host_and_egress_through_nat(
    daemon: Daemon, net: Net
) -> None:
    """From a separate network namespace acting as another host, a published
    TCP and UDP port reach the container through the host's address; the
    container's own connection to that host arrives from the host's address
    (masquerade), not from the container's."""
    start(daemon, net)
    tcp, udp = free_port(), free_port()
    srv = daemon.tmp / "srv"
    srv.mkdir()
    (srv / "udp.py").write_text(
        "import socket, subprocess\n"
        "subprocess.Popen(['sh', '-c', 'mkdir -p /tmp/w && hostname > /tmp/w/hostname && exec busybox httpd -f -p 80 -h /tmp/w'])\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 9999))\n"
        "while True:\n"
        "    d, a = s.recvfrom(100)\n"
        "    s.sendto(b'echo:' + d, a)\n"
    )
    with outside_host(net.prefix) as (ns, host_ip, out_ip):
        daemon.cli(
            "run", "-d", "--name", "web", "--network", "bridge",
            "-p", f"{tcp}:80", "-p", f"{udp}:9999/udp", *PYTHON_MOUNTS,
            "-v", f"{srv}:/srv:ro", "--tmpfs", "/tmp", daemon.rootfs, "--", "sh", "-c", "exec /usr/bin/python3 /srv/udp.py",
        )  # fmt: skip
        got = in_ns(
            ns,
            "import socket,time\n"
            "for i in range(100):\n"
            " try:\n"
            f"  c=socket.create_connection(('{host_ip}',{tcp}),timeout=2);break\n"
            " except OSError: time.sleep(0.1)\n"
            "c.sendall(b'GET /hostname HTTP/1.0\\r\\n\\r\\n');b=b''\n"
            "while (d := c.recv(1000)): b += d\n"
            "print(b.decode().split()[-1])\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.settimeout(1)\n"
            "for i in range(20):\n"
            f" u.sendto(b'ping',('{host_ip}',{udp}))\n"
            " try: print(u.recv(100).decode());break\n"
            " except OSError: pass\n",
        )
        assert got.split() == ["web", "echo:ping"]
        # Egress: a server on the outside host logs its peer's address.
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket;s=socket.socket();s.bind(('0.0.0.0',8000));s.listen();"
             "print('ready',flush=True);c,a=s.accept();print(a[0],flush=True);c.sendall(b'hi\\n');c.close()"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            r = daemon.cli(
                "run", "--rm", "--network", "bridge", daemon.rootfs, "--",
                "nc", out_ip, "8000",
            )  # fmt: skip
            assert r.stdout == "hi\n"
            assert server.stdout.readline().strip() == host_ip
        finally:
            server.kill()
            server.wait()
        daemon.cli("rm", "-f", "web")
    assert net.leftovers() == []


def test_container_network_mode_shares_the_namespace_and_user_networks(
    daemon: Daemon, net: Net
) -> None:
    """container:NAME joins another container's namespace (same eth0, its
    services on localhost); a user-defined network has its own bridge and
    subnet, names resolve on it; bad input is refused with nothing left."""
    start(daemon, net)
    x = net.base.split(".")[1]
    sub = f"10.{x}.254.0/24"
    daemon.cli("network", "create", "app", "--subnet", sub)
    bad = daemon.cli("network", "create", "app2", "--subnet", net.subnet, check=False)
    assert bad.returncode != 0 and "overlaps network bridge" in bad.stderr
    daemon.cli(
        "run", "-d", "--name", "db", "--network", "app", "--tmpfs", "/tmp",
        daemon.rootfs, "--", *HTTPD,
    )  # fmt: skip
    r = daemon.cli(
        "run", "--rm", "--network", "container:db", daemon.rootfs, "--",
        "sh", "-c", "wget -qO- http://127.0.0.1/hostname; ip -o -4 addr show eth0",
    )  # fmt: skip
    assert r.stdout.startswith("db\n") and f"10.{x}.254.2/24" in r.stdout
    r = daemon.cli(
        "run", "--rm", "--network", "app", daemon.rootfs, "--", "wget", "-qO-", "http://db/hostname"
    )
    assert r.stdout == "db\n"
    # Another network cannot reach it, not even by address (from the default
    # bridge, which has a container of its own: its bridge is up meanwhile).
    probe = f"nc -w 3 10.{x}.254.2 80 </dev/null; echo nc=$?"
    daemon.cli(
        "run", "-d", "--name", "other", "--network", "bridge", daemon.rootfs, "--", "sleep", "600"
    )
    r = daemon.cli("exec", "other", "sh", "-c", probe)
    assert r.stdout.strip() == "nc=1", (r.stdout, r.stderr)
    r = daemon.cli("run", "--rm", "--network", "app", daemon.rootfs, "--", "sh", "-c", probe)
    assert r.stdout.strip() == "nc=0", (r.stdout, r.stderr)  # the same probe, same network
    daemon.cli("rm", "-f", "other")
    listed = json.loads(daemon.cli("network", "inspect", "app").stdout)[0]
    assert listed["subnet"] == sub and listed["containers"] == {"db": f"10.{x}.254.2"}
    assert "app" in daemon.cli("network", "ls").stdout
    # Bad input: clear errors, nothing created.
    for args, text in [
        (["--network", "nope"], "no such network: nope"),
        (["--network", "bridge", "-p", "80"], "HOST_PORT:CONTAINER_PORT"),
        (["-p", "8080:80"], "needs a bridge network"),
    ]:
        r = daemon.cli("run", "-d", *args, daemon.rootfs, "--", "true", check=False)
        assert r.returncode != 0 and text in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = daemon.cli(
            "run", "-d", "--name", "clash", "--network", "bridge", "-p", f"{port}:80",
            daemon.rootfs, "--", "sleep", "60", check=False,
        )  # fmt: skip
        assert r.returncode != 0 and "in use on the host" in r.stderr, r.stderr
    assert "clash" not in daemon.cli("ps", "-a").stdout
    r = daemon.cli("network", "rm", "app", check=False)
    assert r.returncode != 0 and "used by db" in r.stderr
    daemon.cli("rm", "-f", "db")
    daemon.cli("network", "rm", "app")
    assert net.leftovers() == []


def test_nothing_left_after_kill_9_of_the_daemon_and_a_restart(daemon: Daemon, net: Net) -> None:
    """The daemon is SIGKILLed with two bridge containers running; one of them
    dies while no daemon runs. The next daemon keeps the survivor's network
    (its published port still answers) and removes the dead one's veth and
    namespace; it gets its address back when started again."""
    start(daemon, net)
    port = free_port()
    for name in ("keep", "die"):
        daemon.cli(
            "run", "-d", "--name", name, "--network", "bridge", "-p",
            f"{port if name == 'keep' else port + 1}:80",
            "--tmpfs", "/tmp", daemon.rootfs, "--", *HTTPD,
        )  # fmt: skip
    die_ip = daemon.inspect("die")["network"]["ip_address"]
    die_monitor = daemon.inspect("die")["pid"]
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    os.kill(die_monitor, signal.SIGKILL)
    time.sleep(0.3)
    start(daemon, net)
    daemon.wait_for("die", lambda i: i["state"] == "exited", what="die exited")
    links = _links()
    assert any(n.startswith(f"{net.prefix}v") for n in links)
    assert sorted(os.listdir(os.path.join(daemon.state_dir, "network", "netns"))) == ["keep"]
    assert http_get("127.0.0.1", port, "/hostname").endswith("keep\n")
    daemon.cli("start", "die")
    assert daemon.inspect("die")["network"]["ip_address"] == die_ip
    daemon.cli("rm", "-f", "keep", "die")
    assert net.leftovers() == []
