"""systemd integration: sd_notify and cgroup delegation. Both do nothing
when the daemon does not run under systemd.

sd_notify (Type=notify): one datagram per message to $NOTIFY_SOCKET (a path,
or an abstract socket when it starts with "@"), as libsystemd's sd_notify()
does; no libsystemd dependency for a dozen lines.

Delegation (Delegate=yes): systemd hands the service's cgroup subtree to the
daemon, under cgroup v2's "no internal processes" rule: a cgroup that has
children with controllers enabled may not hold processes itself. So before
anything else (before the zygote is forked, so that it and every monitor
inherit the place) the daemon moves itself from
    /system.slice/nsvisor.service
into the leaf
    /system.slice/nsvisor.service/supervisor
and puts the containers' cgroups below a sibling,
    /system.slice/nsvisor.service/containers/NAME.
It moves only its own pid, and only when systemd started it ($INVOCATION_ID,
set by systemd for every unit since v232) and its cgroup is a .service
cgroup; anywhere else (a shell, the tests) it touches no cgroup at all.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("nsvisor")

LEAF = "supervisor"
CONTAINERS = "containers"


def notify_address(env: Mapping[str, str]) -> str | None:
    """$NOTIFY_SOCKET as an AF_UNIX address ("\\0name" for "@name"). Pure."""
    value = env.get("NOTIFY_SOCKET", "")
    if not value or value[0] not in "/@":
        return None  # unset, or a vsock address (not for a host daemon)
    return "\0" + value[1:] if value[0] == "@" else value


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send "READY=1", "STOPPING=1", "STATUS=..." (newline-separated for
    several). False when there is no NOTIFY_SOCKET or the send failed."""
    address = notify_address(os.environ if env is None else env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc), message=message)
            return False
    return True


def service_cgroup(env: Mapping[str, str], proc_self_cgroup: str) -> str | None:
    """The unified-hierarchy cgroup of a process that systemd started as a
    service ("/system.slice/nsvisor.service"), else None. Pure."""
    if not env.get("INVOCATION_ID"):
        return None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, path = line.partition(":")
        controllers, _, path = path.partition(":")
        if hierarchy == "0" and controllers == "" and path.endswith(".service"):
            return path
    return None


def unified_root(cgroup_root: str) -> str | None:
    """Where the unified hierarchy is mounted: the root itself on a v2 host,
    root/unified on a hybrid one."""
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        return cgroup_root
    unified = os.path.join(cgroup_root, "unified")
    if os.path.exists(os.path.join(unified, "cgroup.procs")):
        return unified
    return None


def enter_delegated_leaf(
    cgroup_root: str, env: Mapping[str, str] | None = None, pid: int | None = None
) -> str | None:
    """Under systemd delegation: move this process into SERVICE/supervisor and
    return the cgroup parent for the containers ("system.slice/nsvisor.service/
    containers"); otherwise do nothing and return None."""
    env = os.environ if env is None else env
    try:
        with open("/proc/self/cgroup") as f:
            service = service_cgroup(env, f.read())
    except OSError:
        return None
    root = unified_root(cgroup_root)
    if service is None or root is None:
        return None
    leaf = os.path.join(root, service.lstrip("/"), LEAF)
    try:
        os.makedirs(leaf, exist_ok=True)
        with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))
    except OSError as exc:
        # Not delegated after all (Delegate= missing): stay put, say why.
        log.warning("systemd.delegation_unavailable", cgroup=service, error=str(exc))
        with contextlib.suppress(OSError):
            os.rmdir(leaf)
        return None
    log.info("systemd.delegated", cgroup=service, leaf=f"{service}/{LEAF}")
    return f"{service.strip('/')}/{CONTAINERS}"
