"""The daemon's network manager: networks, addresses, container endpoints,
published ports and nsvisor's nftables table, persisted in the state dir.

State (STATE_DIR/network/):
    state.json          {"networks": {NAME: {"subnet", "mtu"}},   (user-defined, CLI)
                         "addresses": {CONTAINER: {"network", "ip"}}}
    netns/CONTAINER     the container's network namespace (a bind mount)
    files/CONTAINER/    hosts, resolv.conf (bind-mounted into the container)

An address belongs to its container from its first start until `rm`
(restarts keep it); the kernel objects (namespace, veth, rules) exist only
while the container runs. Every change of the kernel state is serialised by
one trio.Lock and runs in trio.to_thread; the whole nftables table is
rendered from `self.active` and replaced in one transaction.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from supervisor.errors import ConfigError, KernelError, NotFoundError, Problem, StateError
from supervisor.network import model, nft
from supervisor.network import netlink as nl

log = structlog.get_logger("nsvisor")

# Present while some nsvisor daemon turned net.ipv4.ip_forward on (the host
# had it off): /run is a tmpfs, so the mark lives exactly as long as the
# sysctl's value. Its presence switches the forward guard on in every table,
# and the daemon that deletes the last nsvisor table turns forwarding off again.
IP_FORWARD_MARK = "/run/nsvisor-ip_forward-enabled"


@dataclass(frozen=True)
class NetworkDef:
    name: str
    subnet: ipaddress.IPv4Network
    bridge: str
    mtu: int = model.DEFAULT_MTU
    source: str = "cli"  # "default", "config" or "cli"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return model.gateway(self.subnet)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "bridge": self.bridge,
            "mtu": self.mtu,
            "source": self.source,
        }


@dataclass
class Active:
    """A container's endpoint while it runs."""

    network: str
    ip: str
    hostname: str
    publish: tuple[model.PortMapping, ...]
    held: list[socket.socket] = field(default_factory=list)


@dataclass(frozen=True)
class Attachment:
    """What the launch needs: the namespace to join and files to bind."""

    netns_path: str
    mounts: tuple[tuple[str, str], ...]  # (host file, path in the container)


class NetworkManager:
    def __init__(
        self,
        state_dir: str,
        *,
        prefix: str = "nsv",
        bridge: str = "nsvisor0",
        subnet: str = "10.88.0.0/16",
        mtu: int = model.DEFAULT_MTU,
        networks: Iterable[tuple[str, str, int]] = (),
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        self.dir = os.path.join(state_dir, "network")
        self.prefix = prefix
        self.table = model.table_name(prefix)
        self.resolv_conf = resolv_conf
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._fixed: dict[str, NetworkDef] = {
            model.DEFAULT_NETWORK: NetworkDef(
                model.DEFAULT_NETWORK, model.parse_subnet(subnet), bridge, mtu, "default"
            )
        }
        for name, sub, net_mtu in networks:
            self._fixed[name] = NetworkDef(
                name, model.parse_subnet(sub), model.bridge_name(prefix, name), net_mtu, "config"
            )
        self._user: dict[str, NetworkDef] = {}
        self.addresses: dict[str, dict[str, str]] = {}
        self.active: dict[str, Active] = {}
        self._lock = trio.Lock()
        self._load()

    # ---- persistence ----------------------------------------------------------

    @property
    def _state_path(self) -> str:
        return os.path.join(self.dir, "state.json")

    def _load(self) -> None:
        try:
            with open(self._state_path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("network.state_corrupt", path=self._state_path, error=str(exc))
            return
        for name, d in data.get("networks", {}).items():
            if name in self._fixed:
                continue
            self._user[name] = NetworkDef(
                name,
                ipaddress.IPv4Network(d["subnet"]),
                model.bridge_name(self.prefix, name),
                int(d.get("mtu", model.DEFAULT_MTU)),
            )
        self.addresses = {k: dict(v) for k, v in data.get("addresses", {}).items()}

    def _save(self) -> None:
        data = {
            "networks": {
                n.name: {"subnet": str(n.subnet), "mtu": n.mtu} for n in self._user.values()
            },
            "addresses": self.addresses,
        }
        tmp = self._state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self._state_path)

    def netns_path(self, container: str) -> str:
        return os.path.join(self.dir, "netns", container)

    def files_dir(self, container: str) -> str:
        return os.path.join(self.dir, "files", container)

    def files_for(self, container: str) -> tuple[tuple[str, str], ...]:
        d = self.files_dir(container)
        return ((f"{d}/hosts", "/etc/hosts"), (f"{d}/resolv.conf", "/etc/resolv.conf"))

    # ---- networks -------------------------------------------------------------

    @property
    def networks(self) -> dict[str, NetworkDef]:
        return {**self._fixed, **self._user}

    def get_network(self, name: str) -> NetworkDef:
        try:
            return self.networks[name]
        except KeyError:
            known = ", ".join(sorted(self.networks))
            raise NotFoundError(
                f"no such network: {name} (networks: {known}); create it with "
                f"nsvisor network create {name} --subnet 10.89.0.0/24"
            ) from None

    def check(self, network_mode: str, publish: Iterable[model.PortMapping]) -> None:
        """Before a container is created: its network exists."""
        if model.uses_bridge(network_mode):
            self.get_network(network_mode)

    def describe(self, net: NetworkDef) -> dict[str, Any]:
        out = net.as_dict()
        out["containers"] = {
            c: a["ip"] for c, a in sorted(self.addresses.items()) if a["network"] == net.name
        }
        return out

    async def create_network(self, name: str, subnet: str, mtu: int | None = None) -> NetworkDef:
        problems: list[Problem] = []
        if not model.NETWORK_NAME_RE.match(name) or name in model.RESERVED_NAMES:
            problems.append(
                Problem("name", f"{name!r} is not a network name; use letters, digits, _ . -")
            )
        elif name in self.networks:
            raise StateError(f"network {name} already exists; remove it first or pick another name")
        try:
            net = model.parse_subnet(subnet)
        except ValueError as exc:
            problems.append(Problem("subnet", str(exc)))
            raise ConfigError(problems) from None
        if mtu is not None and not 576 <= mtu <= 65535:
            problems.append(Problem("mtu", f"{mtu} is out of range 576..65535"))
        clash = model.overlapping(net, {n.name: n.subnet for n in self.networks.values()})
        if clash:
            problems.append(
                Problem("subnet", f"{net} overlaps network {', '.join(clash)}; pick another subnet")
            )
        if not problems:
            ours = {str(n.gateway) for n in self.networks.values()}
            host = [
                s
                for s in await trio.to_thread.run_sync(nl.host_subnets)
                if s.overlaps(net) and str(s.network_address + 1) not in ours and not s.is_loopback
            ]
            if host:
                problems.append(
                    Problem(
                        "subnet",
                        f"{net} overlaps {host[0]}, a subnet of the host; pick another subnet",
                    )
                )
        if problems:
            raise ConfigError(problems)
        nd = NetworkDef(name, net, model.bridge_name(self.prefix, name), mtu or model.DEFAULT_MTU)
        self._user[name] = nd
        self._save()
        return nd

    async def remove_network(self, name: str) -> None:
        net = self.get_network(name)
        if net.source != "cli":
            raise StateError(
                f"network {name} comes from the daemon's {'config file' if net.source == 'config' else 'defaults'}; it cannot be removed"
            )
        users = sorted(c for c, a in self.addresses.items() if a["network"] == name)
        if users:
            raise StateError(
                f"network {name} is used by {', '.join(users)}; remove those containers first"
            )
        async with self._lock:
            await trio.to_thread.run_sync(nl.delete_link, net.bridge)
            del self._user[name]
            self._save()

    # ---- endpoints --------------------------------------------------------------

    def _check_ports(
        self, container: str, publish: tuple[model.PortMapping, ...]
    ) -> list[socket.socket]:
        """Refuse a port another container publishes or a host process has
        bound; hold each one with a bound socket (never listened on: DNAT sends
        the traffic to the container before a socket lookup) so that nothing
        on the host takes it while the container runs."""
        for i, m in enumerate(publish):
            for other in publish[:i]:
                if m.clashes(other):
                    raise ConfigError([Problem("publish", f"{m.to_raw()} is given twice")])
            for name, act in self.active.items():
                for o in act.publish:
                    if m.clashes(o):
                        raise StateError(
                            f"port {m.to_raw()} is already published by container {name}; "
                            "choose another host port"
                        )
        held: list[socket.socket] = []
        try:
            for m in publish:
                kind = socket.SOCK_STREAM if m.proto == "tcp" else socket.SOCK_DGRAM
                s = socket.socket(socket.AF_INET, kind)
                held.append(s)
                try:
                    s.bind((m.host_ip or "0.0.0.0", m.host_port))
                except OSError as exc:
                    raise StateError(
                        f"port {m.to_raw()} cannot be published: {m.host_ip or '0.0.0.0'}:"
                        f"{m.host_port}/{m.proto} is in use on the host ({exc.strerror}); "
                        "choose another host port"
                    ) from None
        except BaseException:
            for s in held:
                s.close()
            raise
        return held

    def _address(self, container: str, net: NetworkDef) -> str:
        have = self.addresses.get(container)
        if have is not None and have["network"] == net.name:
            return have["ip"]
        taken = [a["ip"] for c, a in self.addresses.items() if a["network"] == net.name]
        ip = str(model.allocate(net.subnet, taken))
        self.addresses[container] = {"network": net.name, "ip": ip}
        self._save()
        return ip

    async def attach(
        self,
        container: str,
        network_mode: str,
        hostname: str,
        publish: tuple[model.PortMapping, ...],
    ) -> Attachment:
        """Set up a container's namespace on its network before its launch.
        On failure nothing of it is left in the kernel (the address stays
        reserved until rm, like a stopped container's)."""
        net = self.get_network(network_mode)
        async with self._lock:
            held = self._check_ports(container, publish)
            try:
                ip = self._address(container, net)
                path = self.netns_path(container)
                ep = nl.Endpoint(
                    netns_path=path,
                    bridge=net.bridge,
                    host_if=model.veth_name(self.prefix, container),
                    peer_tmp=model.peer_temp_name(self.prefix, container),
                    address=ip,
                    prefixlen=net.subnet.prefixlen,
                    gateway=str(net.gateway),
                    mac=model.mac_for(ipaddress.IPv4Address(ip)),
                    mtu=net.mtu,
                )
                self.active[container] = Active(net.name, ip, hostname, publish, held)
                await trio.to_thread.run_sync(self._kernel_attach, net, ep)
                self._write_files(container)
                await trio.to_thread.run_sync(self._apply_rules)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._detach_locked(container)
                for s in held:
                    s.close()
                raise
        log.info(
            "network.attached",
            container=container,
            network=net.name,
            ip=ip,
            publish=[m.to_raw() for m in publish],
        )
        return Attachment(path, self.files_for(container))

    def _kernel_attach(self, net: NetworkDef, ep: nl.Endpoint) -> None:
        nl.ensure_bridge(net.bridge, str(net.gateway), net.subnet.prefixlen, net.mtu)
        if not nl.read_ip_forward():
            nl.enable_ip_forward()
            with open(IP_FORWARD_MARK, "w") as f:
                f.write("net.ipv4.ip_forward was 0; nsvisor set it to 1\n")
            log.warning("network.ip_forward_enabled", mark=IP_FORWARD_MARK)
        nl.create_netns(ep.netns_path)
        try:
            nl.attach(ep)
        except BaseException:
            nl.remove_netns(ep.netns_path)
            raise

    @staticmethod
    def _restore_ip_forward() -> None:
        """The last nsvisor table is gone and nsvisor was the one that turned
        forwarding on: turn it off again, so the host forwards exactly what it
        did before any container needed it."""
        if not os.path.exists(IP_FORWARD_MARK) or nft.nsvisor_tables():
            return
        nl.disable_ip_forward()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(IP_FORWARD_MARK)
        log.info("network.ip_forward_restored", value=0)

    def _write_files(self, container: str) -> None:
        """This container's resolv.conf, and /etc/hosts of every container on
        its network (rewritten in place: they are bind-mounted by inode)."""
        act = self.active[container]
        d = self.files_dir(container)
        os.makedirs(d, mode=0o755, exist_ok=True)
        try:
            with open(self.resolv_conf) as f:
                host_resolv = f.read()
        except OSError:
            host_resolv = ""
        _write_in_place(f"{d}/resolv.conf", model.resolv_text(host_resolv))
        self._write_hosts(act.network)

    def _write_hosts(self, network: str) -> None:
        members = {c: a for c, a in self.active.items() if a.network == network}
        for c, a in members.items():
            peers = [(o.ip, n) for n, o in members.items() if n != c]
            own_names = a.hostname if a.hostname == c else f"{a.hostname} {c}"
            with contextlib.suppress(OSError):
                os.makedirs(self.files_dir(c), mode=0o755, exist_ok=True)
                _write_in_place(
                    f"{self.files_dir(c)}/hosts", model.hosts_text((a.ip, own_names), peers)
                )

    def _apply_rules(self) -> None:
        """Replace the table with one rendered from the active endpoints, or
        delete it when no endpoint is left (the last container took it)."""
        if not self.active:
            nft.run_nft(nft.delete_text(self.table))
            self._restore_ip_forward()
            return
        nets = self.networks
        bridges = [
            nft.BridgeRules(nets[n].bridge, str(nets[n].subnet))
            for n in sorted({a.network for a in self.active.values()})
            if n in nets
        ]
        published = [nft.Published(m, a.ip) for a in self.active.values() for m in a.publish]
        nft.run_nft(
            nft.render(
                self.table, bridges, published, forward_guard=os.path.exists(IP_FORWARD_MARK)
            )
        )

    async def detach(self, container: str) -> None:
        """After a container's run: its veth, namespace, rules and held ports
        go; its address stays reserved. Idempotent."""
        async with self._lock:
            await self._detach_locked(container)

    async def _detach_locked(self, container: str) -> None:
        act = self.active.pop(container, None)
        if act is None and not os.path.lexists(self.netns_path(container)):
            return  # never attached (network none/host, or already detached): no kernel work
        if act is not None:
            for s in act.held:
                s.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._kernel_detach, container, act)

    def _kernel_detach(self, container: str, act: Active | None) -> None:
        errors: list[str] = []
        for step in (
            lambda: nl.delete_link(model.veth_name(self.prefix, container)),
            lambda: nl.delete_link(model.peer_temp_name(self.prefix, container)),
            lambda: nl.remove_netns(self.netns_path(container)),
            self._apply_rules,
            lambda: self._drop_unused_bridges(),
        ):
            try:
                step()
            except (OSError, KernelError) as exc:
                errors.append(str(exc))
        if act is not None:
            self._write_hosts(act.network)
        if errors:
            log.error("network.detach_incomplete", container=container, errors=errors)

    def _drop_unused_bridges(self) -> None:
        """A bridge without running containers is removed: nothing of nsvisor
        stays in the kernel while none of its containers needs it."""
        used = {a.network for a in self.active.values()}
        for net in self.networks.values():
            if net.name not in used:
                nl.delete_link(net.bridge)

    async def release(self, container: str) -> None:
        """`rm`: the endpoint, the address and the files go."""
        await self.detach(container)
        if self.addresses.pop(container, None) is not None:
            self._save()
            shutil.rmtree(self.files_dir(container), ignore_errors=True)

    # ---- daemon start -----------------------------------------------------------

    async def reconcile(
        self, running: Mapping[str, tuple[str, str, tuple[model.PortMapping, ...]]]
    ) -> None:
        """After a daemon (re)start: keep the endpoints of the containers that
        still run (name -> (network, hostname, publish)); remove every
        namespace, veth and bridge of this daemon's prefix that no running
        container owns, and addresses of containers that no longer exist."""
        async with self._lock:
            for name, (_network, hostname, publish) in running.items():
                have = self.addresses.get(name)
                if have is None or not os.path.exists(self.netns_path(name)):
                    continue
                held: list[socket.socket] = []
                with contextlib.suppress(StateError, ConfigError):
                    held = self._check_ports(name, publish)
                self.active[name] = Active(have["network"], have["ip"], hostname, publish, held)
            await trio.to_thread.run_sync(self._kernel_reconcile)
        log.info("network.reconciled", active=sorted(self.active))

    def _kernel_reconcile(self) -> None:
        keep_links = {model.veth_name(self.prefix, c) for c in self.active}
        keep_links |= {
            self.networks[a.network].bridge
            for a in self.active.values()
            if a.network in self.networks
        }
        removed = []
        links = nl.link_names()
        for name in links:
            if model.owned_link(self.prefix, name) and name not in keep_links:
                nl.delete_link(name)
                removed.append(name)
        default_bridge = self._fixed[model.DEFAULT_NETWORK].bridge
        if (
            default_bridge in links
            and default_bridge not in keep_links
            and default_bridge not in removed
            and nl.delete_link(default_bridge)
        ):
            removed.append(default_bridge)
        ns_dir = os.path.join(self.dir, "netns")
        for entry in sorted(os.listdir(ns_dir)) if os.path.isdir(ns_dir) else []:
            if entry not in self.active:
                nl.remove_netns(os.path.join(ns_dir, entry))
                removed.append(f"netns/{entry}")
        self._apply_rules()
        for net in {a.network for a in self.active.values()}:
            self._write_hosts(net)
        if removed:
            log.warning("network.leftovers_removed", removed=removed)

    def forget_missing(self, existing: Iterable[str]) -> None:
        """Addresses of containers that are gone (state lost) are freed."""
        keep = set(existing)
        gone = [c for c in self.addresses if c not in keep]
        for c in gone:
            del self.addresses[c]
            shutil.rmtree(self.files_dir(c), ignore_errors=True)
        if gone:
            self._save()

    def container_info(self, container: str) -> dict[str, Any] | None:
        have = self.addresses.get(container)
        if have is None:
            return None
        act = self.active.get(container)
        net = self.networks.get(have["network"])
        return {
            "network": have["network"],
            "ip_address": have["ip"],
            "prefixlen": net.subnet.prefixlen if net else None,
            "gateway": str(net.gateway) if net else None,
            "mac_address": model.mac_for(ipaddress.IPv4Address(have["ip"])),
            "bridge": net.bridge if net else None,
            "veth": model.veth_name(self.prefix, container) if act else None,
            "ports": [m.to_raw() for m in act.publish] if act else [],
        }


def _write_in_place(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, 0)
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
