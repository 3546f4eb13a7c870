"""The kernel side of bridge networking, with pyroute2 (netlink) only.

Every function is synchronous and opens and closes its own IPRoute: pyroute2
0.9's sync API runs an event loop per thread, so the daemon calls these from
trio.to_thread and never shares an IPRoute between calls (or threads).

Network namespaces: the daemon makes one per container, bind-mounted on a
file in the state dir (what `ip netns add` does with /run/netns). Entering a
namespace is per thread for the network namespace (setns(CLONE_NEWNET) is
allowed in a multi-threaded process), so the work inside one runs in a fresh
thread that ends afterwards: a pooled thread is never left in a container's
namespace.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from supervisor.errors import KernelError
from supervisor.network._pyroute2 import pyroute2
from supervisor.network.model import IFGROUP
from supervisor.runtime import linux

T = TypeVar("T")

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def _in_thread(fn: Callable[[], T], netns_path: str | None = None) -> T:
    """Run fn in a fresh thread, in the network namespace `netns_path` (or a
    brand-new one when netns_path is "", or the caller's when None)."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            if netns_path == "":
                linux.unshare(linux.CLONE_NEWNET)
            elif netns_path is not None:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    linux.setns(fd, linux.CLONE_NEWNET)
                finally:
                    os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=body, name="nsvisor-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def create_netns(path: str) -> None:
    """A new network namespace kept alive by a bind mount on `path` (lo up)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        remove_netns(path)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400))

    def bind() -> None:
        linux.mount(
            f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, linux.MS_BIND
        )
        with pyroute2.IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    try:
        _in_thread(bind, "")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def remove_netns(path: str) -> None:
    """Unmount and remove a namespace file (idempotent)."""
    with contextlib.suppress(OSError):
        linux.umount2(path, linux.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_netns_mount(path: str) -> bool:
    """True when `path` is a bind-mounted network namespace (nsfs)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _kernel_error(what: str, exc: pyroute2.NetlinkError) -> KernelError:
    return KernelError(f"{what}: {os.strerror(exc.code)}", errno=exc.code)


def ensure_bridge(name: str, address: str, prefixlen: int, mtu: int) -> None:
    """The bridge with its gateway address, in nsvisor's interface group, up;
    route_localnet on it so DNAT of 127.0.0.1 to a container is routed (only
    this interface's sysctl). Idempotent."""
    with pyroute2.IPRoute() as ipr:
        try:
            idx = _lookup(ipr, name)
            if idx is None:
                ipr.link("add", ifname=name, kind="bridge")
                idx = _lookup(ipr, name)
                assert idx is not None
            ipr.link("set", index=idx, mtu=mtu, group=IFGROUP, state="up")
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=idx, family=2)
            }
            if (address, prefixlen) not in have:
                ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
        except pyroute2.NetlinkError as exc:
            raise _kernel_error(f"bridge {name}", exc) from None
    with open(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "w") as f:
        f.write("1")


def delete_link(name: str) -> bool:
    """Delete an interface by name if it exists (deleting one end of a veth
    deletes both). True when something was deleted."""
    with pyroute2.IPRoute() as ipr:
        idx = _lookup(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except pyroute2.NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _kernel_error(f"delete {name}", exc) from None
    return True


def bridge_ports(name: str) -> list[str]:
    with pyroute2.IPRoute() as ipr:
        idx = _lookup(ipr, name)
        if idx is None:
            return []
        return [
            str(link.get_attr("IFLA_IFNAME"))
            for link in ipr.get_links()
            if link.get_attr("IFLA_MASTER") == idx
        ]


def link_names() -> list[str]:
    """The host's interfaces, from sysfs (no netlink socket, no pyroute2)."""
    return sorted(os.listdir("/sys/class/net"))


def host_subnets() -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of every address on the host (overlap checks)."""
    out = []
    with pyroute2.IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            out.append(
                ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            )
    return out


@dataclass(frozen=True)
class Endpoint:
    """One container's interface: what `attach` makes."""

    netns_path: str
    bridge: str
    host_if: str
    peer_tmp: str
    address: str
    prefixlen: int
    gateway: str
    mac: str
    mtu: int


def attach(ep: Endpoint) -> None:
    """veth pair: the host end on the bridge, the other moved into the
    container's namespace, renamed eth0, with its address, MAC, MTU and the
    default route via the bridge. Undone (the veth deleted) on failure."""
    with pyroute2.IPRoute() as ipr:
        try:
            for stale in (ep.host_if, ep.peer_tmp):
                idx = _lookup(ipr, stale)
                if idx is not None:
                    ipr.link("del", index=idx)
            br = _lookup(ipr, ep.bridge)
            if br is None:
                raise KernelError(f"bridge {ep.bridge} does not exist")
            ipr.link("add", ifname=ep.host_if, kind="veth", peer={"ifname": ep.peer_tmp})
            host = _lookup(ipr, ep.host_if)
            peer = _lookup(ipr, ep.peer_tmp)
            assert host is not None and peer is not None
            ipr.link("set", index=host, master=br, mtu=ep.mtu, state="up")
            fd = os.open(ep.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("set", index=peer, net_ns_fd=fd)
            finally:
                os.close(fd)
        except pyroute2.NetlinkError as exc:
            delete_link(ep.host_if)
            raise _kernel_error(f"veth {ep.host_if}", exc) from None

    def inside() -> None:
        with pyroute2.IPRoute() as ipr:
            idx = _lookup(ipr, ep.peer_tmp)
            assert idx is not None
            ipr.link("set", index=idx, ifname="eth0", address=ep.mac, mtu=ep.mtu)
            ipr.addr("add", index=idx, address=ep.address, prefixlen=ep.prefixlen)
            ipr.link("set", index=idx, state="up")
            lo = _lookup(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=ep.gateway, oif=idx)

    try:
        _in_thread(inside, ep.netns_path)
    except pyroute2.NetlinkError as exc:
        delete_link(ep.host_if)
        raise _kernel_error(f"eth0 of {ep.netns_path}", exc) from None
    except BaseException:
        delete_link(ep.host_if)
        raise


def read_ip_forward() -> bool:
    with open(IP_FORWARD) as f:
        return f.read().strip() == "1"


def enable_ip_forward() -> None:
    with open(IP_FORWARD, "w") as f:
        f.write("1")


def disable_ip_forward() -> None:
    with open(IP_FORWARD, "w") as f:
        f.write("0")
