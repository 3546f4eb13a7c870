"""LaunchSpec: everything the zygote needs to start one container, as a frozen
dataclass with a JSON round-trip (it crosses a socket to the zygote).

Pure: no kernel calls. Validation happens on construction, so a LaunchSpec that
exists is one the runtime can try to start.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from supervisor.errors import NsvisorError
from supervisor.runtime.caps import CAPABILITIES, DEFAULT_CAPS

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NsMode = Literal["private", "host"]
NetMode = Literal["none", "host", "join"]


class LaunchSpecError(NsvisorError, ValueError):
    """The caller built an impossible LaunchSpec (a programming error in the
    layer that maps a ContainerSpec to a LaunchSpec)."""


@dataclass(frozen=True, kw_only=True)
class Namespaces:
    """Which namespaces are new ("private") and which are the host's.

    The mount namespace is always private (pivot_root needs it). net "none" is a
    new network namespace with only lo, brought up; "host" shares the host's.
    """

    pid: NsMode = "private"
    uts: NsMode = "private"
    ipc: NsMode = "private"
    cgroup: NsMode = "private"
    net: NetMode = "none"
    # net "join": setns into this namespace file instead of a new namespace
    # (the daemon's pre-configured bridge namespace, or another container's).
    net_path: str = ""

    def __post_init__(self) -> None:
        for name in ("pid", "uts", "ipc", "cgroup"):
            if getattr(self, name) not in ("private", "host"):
                raise LaunchSpecError(
                    f"namespaces.{name} must be 'private' or 'host', not {getattr(self, name)!r}"
                )
        if self.net not in ("none", "host", "join"):
            raise LaunchSpecError(
                f"namespaces.net must be 'none', 'host' or 'join', not {self.net!r}"
            )
        if (self.net == "join") != bool(self.net_path):
            raise LaunchSpecError("namespaces.net_path is given exactly with net 'join'")


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A volume. bind: source is an absolute host path (file or directory);
    tmpfs: source is ignored, options are tmpfs options ("size=64m",
    "mode=1777") and/or the flags nosuid, nodev, noexec."""

    type: Literal["bind", "tmpfs"]
    destination: str
    source: str = ""
    readonly: bool = False
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in ("bind", "tmpfs"):
            raise LaunchSpecError(f"mount type must be 'bind' or 'tmpfs', not {self.type!r}")
        if not os.path.isabs(self.destination):
            raise LaunchSpecError(
                f"mount destination {self.destination!r} must be an absolute path"
            )
        if self.type == "bind" and not os.path.isabs(self.source):
            raise LaunchSpecError(
                f"bind mount source {self.source!r} must be an absolute host path"
            )
        if self.type == "bind":
            bad = [o for o in self.options if o not in ("nosuid", "nodev", "noexec")]
            if bad:
                raise LaunchSpecError(
                    f"bind mount {self.destination}: unsupported options {bad}; use nosuid, nodev, noexec"
                )


@dataclass(frozen=True, kw_only=True)
class DeviceNode:
    """A device node to create in the container (`--device`): path inside,
    "c" or "b", major, minor, permissions (mode & 0o777), owner."""

    path: str
    type: Literal["c", "b"]
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        if not self.path.startswith("/dev/") or ".." in self.path.split("/"):
            raise LaunchSpecError(f"device path {self.path!r} must be below /dev/")
        if self.type not in ("c", "b"):
            raise LaunchSpecError(f"device type must be 'c' or 'b', not {self.type!r}")


@dataclass(frozen=True, kw_only=True)
class IdMap:
    """A user namespace's mapping (`--userns=auto`): container uid/gid 0..size-1
    are host uid/gid uid..uid+size-1 and gid..gid+size-1 (supervisor.daemon.userns
    allocates them; supervisor.runtime.userns applies them)."""

    uid: int
    gid: int
    size: int

    def __post_init__(self) -> None:
        if self.uid <= 0 or self.gid <= 0 or self.size <= 0:
            raise LaunchSpecError(
                f"idmap uid {self.uid}, gid {self.gid}, size {self.size}: all must be > 0"
                " (host root is never mapped)"
            )
        if max(self.uid, self.gid) + self.size > 1 << 31:
            # devpts (gid=) and tmpfs (uid=, gid=) parse signed ints on older
            # kernels (6.1): ids from 2^31 on cannot be given to them.
            raise LaunchSpecError("idmap range ends beyond id 2^31 - 1; use a lower range")

    def host_uid(self, uid: int) -> int:
        return self.uid + uid

    def host_gid(self, gid: int) -> int:
        return self.gid + gid

    def map_lines(self) -> tuple[str, str]:
        """The uid_map and gid_map texts."""
        return f"0 {self.uid} {self.size}\n", f"0 {self.gid} {self.size}\n"


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    name: str
    rootfs: str
    argv: tuple[str, ...]
    log_path: str
    exit_path: str
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    hostname: str = ""
    namespaces: Namespaces = field(default_factory=Namespaces)
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    capabilities: tuple[str, ...] = tuple(sorted(DEFAULT_CAPS))
    cgroup_procs: tuple[str, ...] = ()
    oom_kill_file: str | None = None
    teardown_grace_s: float = 2.0
    # Log rotation in the monitor (Docker json-file max-size / max-file):
    # None = no rotation; max_files counts the current file.
    log_max_size: int | None = None
    log_max_files: int = 1
    # --ulimit as (name, soft, hard), -1 = unlimited (supervisor.runtime.rlimits),
    # and --oom-score-adj; both set by the workload before exec.
    rlimits: tuple[tuple[str, int, int], ...] = ()
    oom_score_adj: int | None = None
    # Interactive use (supervisor.runtime.monitor): tty = a pty from the
    # container's devpts, its master kept by the monitor; stdin = the
    # workload's stdin is a pipe the monitor keeps open for attach clients;
    # attach_path = the monitor's Unix socket for attach clients (None: none).
    tty: bool = False
    stdin: bool = False
    attach_path: str | None = None
    # seccomp: "default" (supervisor.runtime.seccomp.default_profile), "unconfined",
    # or the JSON text of a Docker-format profile; compiled in the workload
    # against `capabilities` and loaded right before execve.
    seccomp: str = "default"
    # Extra device nodes (--device): created in /dev by the workload; the cgroup
    # device policy that lets them be opened is set by the daemon.
    devices: tuple[DeviceNode, ...] = ()
    # A user namespace (`--userns=auto`): None = the host's (container root is
    # host root, its capabilities bounded by `capabilities` and seccomp).
    idmap: IdMap | None = None

    def host_uid(self, uid: int) -> int:
        """A container uid as the host sees it."""
        return uid if self.idmap is None else self.idmap.host_uid(uid)

    def host_gid(self, gid: int) -> int:
        return gid if self.idmap is None else self.idmap.host_gid(gid)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name:
            problems.append("name must not be empty")
        for label in ("rootfs", "log_path", "exit_path", "cwd"):
            if not os.path.isabs(getattr(self, label)):
                problems.append(f"{label} {getattr(self, label)!r} must be an absolute path")
        if not self.argv or not self.argv[0]:
            problems.append("argv must name a command")
        problems += [
            f"env entry {e!r} must look like KEY=VALUE"
            for e in self.env
            if "=" not in e or e.startswith("=")
        ]
        problems += [
            f"unknown capability {c!r} (use names like NET_ADMIN)"
            for c in self.capabilities
            if c not in CAPABILITIES
        ]
        if self.hostname and self.namespaces.uts == "host":
            problems.append("hostname needs a private uts namespace (namespaces.uts='private')")
        if self.uid < 0 or self.gid < 0:
            problems.append("uid and gid must be >= 0")
        if self.log_max_size is not None and self.log_max_size <= 0:
            problems.append("log_max_size must be > 0 or None")
        if self.log_max_files < 1:
            problems.append("log_max_files must be >= 1")
        if self.teardown_grace_s < 0:
            problems.append("teardown_grace_s must be >= 0")
        if self.idmap is not None:
            problems += [
                f"{what} {value} is outside the user namespace's {self.idmap.size} ids"
                for what, value in (
                    ("uid", self.uid),
                    ("gid", self.gid),
                    *(("additional gid", g) for g in self.additional_gids),
                )
                if value >= self.idmap.size
            ]
        if problems:
            raise LaunchSpecError(f"launch spec {self.name!r}: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LaunchSpec:
        raw: dict[str, Any] = json.loads(text)
        raw["namespaces"] = Namespaces(**raw.get("namespaces", {}))
        raw["mounts"] = tuple(
            Mount(**{**m, "options": tuple(m.get("options", ()))}) for m in raw.get("mounts", ())
        )
        raw["devices"] = tuple(DeviceNode(**d) for d in raw.get("devices", ()))
        if raw.get("idmap") is not None:
            raw["idmap"] = IdMap(**raw["idmap"])
        raw["rlimits"] = tuple(tuple(u) for u in raw.get("rlimits", ()))
        for key in ("argv", "env", "additional_gids", "capabilities", "cgroup_procs"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    def path_env(self) -> str:
        """The PATH the command is searched in (inside the new root)."""
        for entry in self.env:
            if entry.startswith("PATH="):
                return entry[5:]
        return DEFAULT_PATH
