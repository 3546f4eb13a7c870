"""--network-rate IN[:OUT]: bandwidth limits of a bridged container, with
pyroute2's traffic-control API (no `tc` subprocess).

Both directions are shaped on the host side of the container's veth, where
the container cannot change them even with CAP_NET_ADMIN in its namespace:

- IN (traffic to the container) leaves the host end of the veth: a tbf qdisc
  as its root qdisc.
- OUT (traffic from the container) arrives at the host end: an ingress qdisc
  with a u32 match-all filter redirects it (act_mirred) to an ifb device
  whose root tbf shapes it. Shaping through an ifb queues and paces instead
  of dropping, which TCP handles far better than a policer; it also needs no
  act_police, which not every kernel has (the build machines' does not).

The tbf of the veth goes with the veth when the container's run ends; the
ifb is deleted explicitly (remove()), and at daemon start every ifb of this
prefix without a running container (reconcile()).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from supervisor.errors import KernelError
from supervisor.network._pyroute2 import pyroute2

TC_H_ROOT_HANDLE = 0x10000  # "1:"
TC_H_INGRESS = 0xFFFF0000  # "ffff:"
ETH_P_ALL = 0x0003
LATENCY = "50ms"  # tbf queue: packets waiting longer are dropped
MIN_BURST = 16 * 1514  # tbf needs a bucket of at least a few MTU-sized packets

# tc's units: bit-based are decimal bits/s, bps-based decimal bytes/s.
_RATE_UNITS = {
    "bit": 1,
    "kbit": 1000,
    "mbit": 1000**2,
    "gbit": 1000**3,
    "bps": 8,
    "kbps": 8 * 1000,
    "mbps": 8 * 1000**2,
    "gbps": 8 * 1000**3,
}
RATE_FORMS = (
    "use a rate like 10mbit or 512kbit (tc's units: bit, kbit, mbit, gbit, or kbps, mbps for bytes)"
)
_MAX_BITS = 32 * 1000**3  # tbf's rate field is 32-bit bytes/s


def parse_net_rate(text: str) -> int:
    """bits/s from "10mbit", "512kbit", "1gbit", "2mbps"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower())
    if not m:
        if re.fullmatch(r"\d+(\.\d+)?", text.strip()):
            raise ValueError(f'"{text}" has no unit; {RATE_FORMS}')
        raise ValueError(f'"{text}" is not a rate; {RATE_FORMS}')
    if m.group(2) not in _RATE_UNITS:
        raise ValueError(f'"{text}": unknown unit "{m.group(2)}"; {RATE_FORMS}')
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    if not 8000 <= bits <= _MAX_BITS:
        raise ValueError(f'"{text}" is out of range; use 8kbit to 32gbit')
    return bits


def format_net_rate(bits: int) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bits % _RATE_UNITS[unit] == 0:
            return f"{bits // _RATE_UNITS[unit]}{unit}"
    return f"{bits}bit"


def parse_network_rate(text: str) -> tuple[int, int | None]:
    """ "IN[:OUT]" -> (IN bits/s, OUT bits/s or None). IN is the rate of
    traffic to the container; without OUT, traffic from it is not limited."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'"{text}" is not IN[:OUT]; e.g. "10mbit" or "10mbit:2mbit"')
    first, sep, second = text.partition(":")
    rate_in = parse_net_rate(first)
    rate_out = parse_net_rate(second) if sep else None
    return rate_in, rate_out


def ifb_name(host_if: str) -> str:
    """The ifb of a veth: the same name with the kind letter "v" made "i"
    (PREFIX + "i" + 8 hex digits), so it is as unique as the veth."""
    prefix, _, digest = host_if.rpartition("v")
    return f"{prefix}i{digest}"


def is_ifb_of(prefix: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(prefix)}i[0-9a-f]{{8}}", name) is not None


@dataclass(frozen=True)
class Tbf:
    """One tbf qdisc: rate in bytes/s (pyroute2's and the kernel's unit)."""

    rate: int
    burst: int


def tbf_for(bits: int) -> Tbf:
    """A bucket of ~20 ms at the rate (tc's usual rule of thumb: rate/HZ is
    too small with tickless kernels), at least a few full-size packets."""
    rate = bits // 8
    return Tbf(rate, max(rate // 50, MIN_BURST))


def _lookup(ipr: pyroute2.IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _error(what: str, exc: pyroute2.NetlinkError) -> KernelError:
    hint = (
        "the kernel lacks a traffic-control module (sch_tbf, sch_ingress, cls_u32, act_mirred, ifb)"
        if exc.code in (errno.ENOENT, errno.EOPNOTSUPP)
        else "run as root"
    )
    return KernelError(f"network rate: {what}: {os.strerror(exc.code)}; {hint}", errno=exc.code)


def apply(host_if: str, rate_in: int | None, rate_out: int | None) -> None:
    """Shape a container's veth (see the module doc). Replaces what is there,
    so a restart with other rates needs no clean-up first."""
    with pyroute2.IPRoute() as ipr:
        idx = _lookup(ipr, host_if)
        if idx is None:
            raise KernelError(f"network rate: no interface {host_if}", errno=errno.ENODEV)
        if rate_in is not None:
            t = tbf_for(rate_in)
            try:
                ipr.tc(
                    "replace",
                    "tbf",
                    idx,
                    TC_H_ROOT_HANDLE,
                    rate=t.rate,
                    burst=t.burst,
                    latency=LATENCY,
                )
            except pyroute2.NetlinkError as exc:
                raise _error(f"tbf on {host_if}", exc) from None
        if rate_out is None:
            return
        ifb = ifb_name(host_if)
        t = tbf_for(rate_out)
        try:
            ifb_idx = _lookup(ipr, ifb)
            if ifb_idx is None:
                ipr.link("add", ifname=ifb, kind="ifb")
                ifb_idx = _lookup(ipr, ifb)
                assert ifb_idx is not None
            ipr.link("set", index=ifb_idx, state="up")
            ipr.tc(
                "replace",
                "tbf",
                ifb_idx,
                TC_H_ROOT_HANDLE,
                rate=t.rate,
                burst=t.burst,
                latency=LATENCY,
            )
            # A fresh ingress qdisc: deleting it drops any filter of an earlier call.
            try:
                ipr.tc("del", "ingress", idx, TC_H_INGRESS)
            except pyroute2.NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise
            ipr.tc("add", "ingress", idx, TC_H_INGRESS)
            ipr.tc(
                "add-filter",
                "u32",
                idx,
                parent=TC_H_INGRESS,
                prio=1,
                protocol=ETH_P_ALL,
                target=TC_H_ROOT_HANDLE,
                keys=["0x0/0x0+0"],  # match everything
                action={
                    "kind": "mirred",
                    "direction": "egress",
                    "action": "redirect",
                    "ifindex": ifb_idx,
                },
            )
        except pyroute2.NetlinkError as exc:
            with_cleanup = _error(f"ifb {ifb} for {host_if}", exc)
            remove(host_if)
            raise with_cleanup from None


def remove(host_if: str) -> None:
    """Delete the container's ifb, if any (the veth's qdiscs go with the veth)."""
    with pyroute2.IPRoute() as ipr:
        idx = _lookup(ipr, ifb_name(host_if))
        if idx is None:
            return
        try:
            ipr.link("del", index=idx)
        except pyroute2.NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise _error(f"delete {ifb_name(host_if)}", exc) from None


def reconcile(prefix: str, keep: Iterable[str]) -> list[str]:
    """Delete every ifb of this prefix whose veth is not in `keep` (left by a
    daemon killed while containers ran). Returns the names deleted."""
    wanted = {ifb_name(v) for v in keep}
    deleted: list[str] = []
    if not any(is_ifb_of(prefix, n) and n not in wanted for n in os.listdir("/sys/class/net")):
        return deleted  # nothing to delete: no netlink socket (nor pyroute2) needed
    with pyroute2.IPRoute() as ipr:
        for link in ipr.get_links():
            name = str(link.get_attr("IFLA_IFNAME"))
            if is_ifb_of(prefix, name) and name not in wanted:
                try:
                    ipr.link("del", index=link["index"])
                    deleted.append(name)
                except pyroute2.NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        raise _error(f"delete {name}", exc) from None
    return deleted
