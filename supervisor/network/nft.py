"""nsvisor's nftables table: rendered whole from the attached containers
(pure), applied atomically with `nft -f -`, deleted with the last container.

Why the nft CLI and not netlink: pyroute2's nftables support (0.9) can list
and add simple rules but not NAT statements, fib expressions or an atomic
"delete and re-create the table" batch; `nft -f -` reads one transaction and
applies all of it or none. The host's own tables are never read or written:
every command names nsvisor's table.

What the table does (IPv4 only):
- prerouting/output DNAT (published ports): traffic to a local address of
  the host (fib daddr type local), from another host or from the host itself,
  is sent to the container; `output` is what makes 127.0.0.1:PORT work without
  a userland proxy (with route_localnet on the bridge and the masquerade of
  127.0.0.0/8 below, as Docker does without its proxy).
- postrouting masquerade: egress of the subnets through any other interface
  gets the host's address; traffic to a published port that came from the
  host's loopback, or back into the same bridge (hairpin), too.
- forward guard: only when nsvisor itself turned net.ipv4.ip_forward on (the
  host did not forward before), forwarded packets that neither enter nor leave
  an nsvisor bridge are dropped, so the host forwards nothing it did not
  forward before.
- network isolation (Docker's DOCKER-ISOLATION stages): a packet from one
  nsvisor network to another is dropped; only a published port (DNAT'd, as
  from anywhere else) crosses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from supervisor.errors import KernelError
from supervisor.network.model import IFGROUP, PortMapping
from supervisor.subproc import run_helper


@dataclass(frozen=True)
class BridgeRules:
    bridge: str
    subnet: str


@dataclass(frozen=True)
class Published:
    mapping: PortMapping
    container_ip: str


def render(
    table: str,
    bridges: Sequence[BridgeRules],
    published: Iterable[Published],
    *,
    forward_guard: bool,
) -> str:
    """The whole table as one `nft -f` transaction: add (so the delete cannot
    fail), delete, then define. Pure; the output is stable (sorted)."""
    lines = [f"add table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    lines += [
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain publish {",
    ]
    for p in sorted(published, key=lambda p: (p.mapping, p.container_ip)):
        m = p.mapping
        match = f"ip daddr {m.host_ip} " if m.host_ip else ""
        lines.append(
            f"    {match}{m.proto} dport {m.host_port} dnat to {p.container_ip}:{m.container_port}"
        )
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for b in sorted(bridges, key=lambda b: b.bridge):
        lines += [
            f'    ip saddr {b.subnet} oifname != "{b.bridge}" masquerade',
            f'    ip saddr 127.0.0.0/8 oifname "{b.bridge}" masquerade',
            f'    ip saddr {b.subnet} oifname "{b.bridge}" ct status dnat masquerade',
        ]
    lines += ["  }"]
    isolate = [
        f'    iifname "{b.bridge}" oifname != "{b.bridge}" meta oifgroup {IFGROUP:#x}'
        " ct status & dnat == 0 drop"
        for b in sorted(bridges, key=lambda b: b.bridge)
    ]
    if len(isolate) < 2:
        isolate = []  # one network: nothing to isolate it from
    if forward_guard:
        isolate.append(f"    meta iifgroup != {IFGROUP:#x} meta oifgroup != {IFGROUP:#x} drop")
    if isolate:
        lines += [
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            *isolate,
            "  }",
        ]
    lines += ["}"]
    return "\n".join(lines) + "\n"


def delete_text(table: str) -> str:
    """Delete the table if it exists (add first: an absent table is no error)."""
    return f"add table ip {table}\ndelete table ip {table}\n"


def run_nft(text: str, nft: str = "nft") -> None:
    """Apply one transaction; KernelError with nft's message on failure."""
    try:
        r = run_helper([nft, "-f", "-"], input=text)
    except FileNotFoundError:
        raise KernelError(
            "nft (nftables) is not installed; install the nftables package for bridge networking"
        ) from None
    if r.returncode != 0:
        raise KernelError(f"nft -f - failed: {r.stderr.strip()}\n--- ruleset ---\n{text}")


def table_exists(table: str, nft: str = "nft") -> bool:
    r = run_helper([nft, "list", "table", "ip", table])
    return r.returncode == 0


def nsvisor_tables(nft: str = "nft") -> list[str]:
    """Names of the `ip` tables that belong to any nsvisor daemon (table names
    start with "nsvisor"); [] when nft is missing or fails."""
    try:
        r = run_helper([nft, "list", "tables", "ip"])
    except FileNotFoundError:
        return []
    names = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("table ip ")]
    return [n for n in names if n.startswith("nsvisor")]
