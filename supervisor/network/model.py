"""The pure core of bridge networking: network modes, published ports,
subnets, address allocation, interface names, MAC addresses and the
/etc/hosts and /etc/resolv.conf texts. No trio, no root, no kernel calls
(STYLE habit 2): everything here is tested without an event loop."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Proto = Literal["tcp", "udp"]

# Linux's IFNAMSIZ is 16 with the NUL: interface names have at most 15 bytes.
IFNAME_MAX = 15
# The names of networks (and of the `--network NAME` argument): like container
# names, and never one of the mode keywords.
NETWORK_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
RESERVED_NAMES = frozenset({"none", "host", "container", "default"})
DEFAULT_NETWORK = "bridge"
DEFAULT_MTU = 1500
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
# Every bridge nsvisor makes is put in this interface group ("NSV"): the
# forward guard (see nft.render) tells nsvisor's traffic from the host's by it,
# whichever daemon (and table) made the bridge.
IFGROUP = 0x4E5356


@dataclass(frozen=True, order=True)
class PortMapping:
    """-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]; host_ip "" = every address."""

    host_port: int
    container_port: int
    proto: Proto = "tcp"
    host_ip: str = ""

    def to_raw(self) -> str:
        head = f"{self.host_ip}:" if self.host_ip else ""
        return f"{head}{self.host_port}:{self.container_port}/{self.proto}"

    def clashes(self, other: PortMapping) -> bool:
        """Two mappings cannot both be published: same port and protocol on
        the same address, or on every address."""
        return (
            self.host_port == other.host_port
            and self.proto == other.proto
            and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)
        )


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f'"{spec}": {what} {text!r} is not a port number 1..65535')
    return int(text)


def parse_publish(spec: str) -> PortMapping:
    """'8080:80', '127.0.0.1:8080:80/udp' -> PortMapping. ValueError saying the form."""
    form = 'use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. "8080:80" or "127.0.0.1:5353:53/udp"'
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{spec!r} is not a port mapping; {form}")
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f'"{spec}": protocol {proto!r} is not tcp or udp; {form}')
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, host, ctr = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, ctr = parts
        try:
            addr = ipaddress.ip_address(host_ip.strip("[]"))
        except ValueError:
            raise ValueError(f'"{spec}": {host_ip!r} is not an IP address; {form}') from None
        if addr.version != 4:
            raise ValueError(f'"{spec}": only IPv4 host addresses can be published')
        host_ip = "" if addr.is_unspecified else str(addr)
    else:
        raise ValueError(f'"{spec}" is not a port mapping; {form}')
    return PortMapping(
        host_port=_port(host, "host port", spec),
        container_port=_port(ctr, "container port", spec),
        proto="udp" if proto == "udp" else "tcp",
        host_ip=host_ip,
    )


# --- network modes -------------------------------------------------------------


def parse_network_mode(value: object) -> str:
    """none | host | bridge | container:NAME | NAME (a user-defined network)."""
    hint = 'use "none" (loopback only), "host", "bridge", "container:NAME" or the name of a network (nsvisor network ls)'
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a network mode; {hint}")
    if value.startswith("container:"):
        target = value.partition(":")[2]
        if not NETWORK_NAME_RE.match(target):
            raise ValueError(f'"{value}": {target!r} is not a container name; {hint}')
        return value
    if value in ("none", "host", DEFAULT_NETWORK):
        return value
    if NETWORK_NAME_RE.match(value) and value not in RESERVED_NAMES:
        return value
    raise ValueError(f'"{value}" is not a network mode; {hint}')


def uses_bridge(mode: str) -> bool:
    """True for bridge and user-defined networks (an address, a veth, NAT)."""
    return mode not in ("none", "host") and not mode.startswith("container:")


def container_target(mode: str) -> str | None:
    return mode.partition(":")[2] if mode.startswith("container:") else None


# --- subnets and addresses ---------------------------------------------------


def parse_subnet(text: object) -> ipaddress.IPv4Network:
    """An IPv4 subnet with room for a gateway and at least one container."""
    try:
        net = ipaddress.IPv4Network(str(text), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IPv4 subnet in CIDR form ({exc}); use e.g. 10.89.0.0/24"
        ) from None
    if net.prefixlen > 29:
        raise ValueError(f"{net} is too small; use at most a /29 (e.g. 10.89.0.0/24)")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise ValueError(f"{net} is not a usable subnet; use a private range like 10.89.0.0/24")
    return net


def gateway(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The bridge's address: the first host of the subnet (Docker's choice)."""
    return net.network_address + 1


def overlapping(
    net: ipaddress.IPv4Network, others: Mapping[str, ipaddress.IPv4Network]
) -> list[str]:
    return sorted(name for name, other in others.items() if net.overlaps(other))


class AddressesExhausted(ValueError):
    pass


def allocate(
    net: ipaddress.IPv4Network, taken: Iterable[str], preferred: str | None = None
) -> ipaddress.IPv4Address:
    """The lowest free host address after the gateway (or `preferred` when it
    is in the subnet and free). Deterministic: the same state gives the same
    answer, which makes allocation easy to test and to reason about."""
    used = {ipaddress.IPv4Address(a) for a in taken} | {gateway(net)}
    if preferred is not None:
        p = ipaddress.IPv4Address(preferred)
        if p in net and p not in used and p not in (net.network_address, net.broadcast_address):
            return p
    for addr in net.hosts():
        if addr not in used:
            return addr
    raise AddressesExhausted(
        f"no free address left in {net}; remove containers or use a larger subnet"
    )


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """Docker's stable MAC: 02:42 (locally administered, unicast) + the 4 bytes
    of the IPv4 address. The same address always gets the same MAC, so a
    restarted container is not a new neighbour to its peers."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def veth_name(prefix: str, container: str) -> str:
    """The host end of a container's veth: PREFIX + "v" + 8 hex digits."""
    return f"{prefix}v{_digest(container, 8)}"


def peer_temp_name(prefix: str, container: str) -> str:
    """The container end before it is moved into the netns and renamed eth0
    (a name that can never clash with a host interface)."""
    return f"{prefix}p{_digest(container, 8)}"


def bridge_name(prefix: str, network: str) -> str:
    """The bridge of a user-defined network: PREFIX + "b" + 6 hex digits."""
    return f"{prefix}b{_digest(network, 6)}"


def owned_link(prefix: str, name: str) -> bool:
    """True for an interface name only this daemon's prefix produces (reconcile
    removes such links when no container owns them)."""
    return re.fullmatch(rf"{re.escape(prefix)}[vpb][0-9a-f]{{6,8}}", name) is not None


def table_name(prefix: str) -> str:
    """nsvisor's nftables table ("nsvisor" for the default prefix)."""
    return "nsvisor" if prefix == "nsv" else f"nsvisor_{prefix}"


# --- /etc/hosts, /etc/resolv.conf --------------------------------------------


def hosts_text(own: tuple[str, str], peers: Iterable[tuple[str, str]]) -> str:
    """own = (ip, hostname); peers = (ip, name) of the other containers on the
    same network, so that names resolve without a DNS server."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{own[0]}\t{own[1]}",
    ]
    lines += [f"{ip}\t{name}" for ip, name in sorted(set(peers), key=lambda p: p[1])]
    return "\n".join(lines) + "\n"


def resolv_text(host_resolv: str) -> str:
    """The host's resolv.conf for a container on a bridge: nameservers on the
    host's loopback (systemd-resolved's 127.0.0.53, a local dnsmasq) cannot be
    reached from another network namespace and are dropped; when nothing else
    is left the host's file is used as it is (there is no public fallback: a
    host without a reachable resolver gives containers none either)."""
    kept: list[str] = []
    servers = 0
    loopback_only: list[str] = []
    for line in host_resolv.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            try:
                addr = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            if addr.is_loopback:
                loopback_only.append(line)
                continue
            servers += 1
        kept.append(line)
    if servers == 0:
        return host_resolv if host_resolv.endswith("\n") or not host_resolv else host_resolv + "\n"
    return "\n".join(kept) + "\n"
