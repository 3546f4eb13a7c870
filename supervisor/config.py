"""Container and daemon configuration: validated once at the edge, frozen after.

Pure: no trio, no root, no clock. The only I/O is reading the config file and,
when `check_fs` is true, looking at the rootfs (does it exist, does the command
resolve in it, which uid a user name has), so a typo is reported by
`nsvisor check-config` or by the API's 400 answer instead of by a failed exec.

One raw form for every source: a [containers.NAME] table in the TOML file, the
"spec" object of POST /v1/containers and the dict the CLI builds from `run`
options use the same keys (RAW_KEYS). `validate_container` turns it into a
`ContainerSpec` with units in the field names, or raises ConfigError listing
EVERY problem, one Problem per field, each saying what was wrong and the fix.
`ContainerSpec.to_raw()` goes back to the raw form (persistence, `inspect`).

Validation is a list of small checks (STYLE habit 12): each field has one
function that reads the raw value and either returns the parsed value or adds a
Problem; a field that fails gets its default so that later cross-field checks
still run and report more problems in one go.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from supervisor.cgroups import options as limit_options
from supervisor.cgroups.options import DeviceLimit
from supervisor.errors import ConfigError, Problem
from supervisor.network import shaping
from supervisor.network.model import (
    PortMapping,
    parse_network_mode,
    parse_publish,
    parse_subnet,
    uses_bridge,
)
from supervisor.policy import Backoff, RestartPolicy, parse_restart_policy
from supervisor.runtime import rlimits
from supervisor.runtime.caps import effective_caps, normalize_cap
from supervisor.runtime.devices import DeviceMapping, parse_device
from supervisor.runtime.seccomp import SecurityOpts, parse_security_opts
from supervisor.units import parse_duration, parse_signal, parse_size, signal_name

# ---------------------------------------------------------------------------
# Constants

RAW_KEYS: tuple[str, ...] = (
    "name",
    "rootfs",
    "command",
    "env",
    "workdir",
    "user",
    "hostname",
    "memory",
    "memory_swap",
    "cpus",
    "cpu_shares",
    "cpu_weight",
    "pids_limit",
    "io_weight",
    "blkio_weight_device",
    "device_read_bps",
    "device_write_bps",
    "device_read_iops",
    "device_write_iops",
    "cpu_period",
    "cpu_quota",
    "cpuset_cpus",
    "cpuset_mems",
    "memory_reservation",
    "memory_high",
    "oom_kill_disable",
    "oom_score_adj",
    "oom_group",
    "ulimits",
    "network_rate",
    "restart",
    "backoff_initial",
    "backoff_factor",
    "backoff_max",
    "backoff_reset",
    "volumes",
    "tmpfs",
    "read_only",
    "stop_signal",
    "stop_timeout",
    "network",
    "publish",
    "pid",
    "ipc",
    "uts",
    "cgroupns",
    "cap_add",
    "cap_drop",
    "security_opt",
    "seccomp_profile",
    "devices",
    "userns",
    "auto_remove",
    "tty",
    "interactive",
    "health_cmd",
    "health_interval",
    "health_timeout",
    "health_retries",
    "health_start_period",
    "on_unhealthy",
    "log_max_size",
    "log_max_files",
)

# Keys people bring from Docker / compose that difflib would not map well.
_KEY_HINTS: dict[str, str] = {
    "image": 'nsvisor runs a rootfs directory, not an image; use rootfs = "/path/to/rootfs"',
    "ports": 'did you mean publish? (publish = ["8080:80"] with network = "bridge")',
    "entrypoint": 'did you mean command? (the whole argv, e.g. command = ["/bin/httpd", "-f"])',
    "cmd": "did you mean command?",
    "args": "did you mean command?",
    "environment": "did you mean env?",
    "working_dir": "did you mean workdir?",
    "mem_limit": "did you mean memory?",
    "memswap_limit": "did you mean memory_swap?",
    "blkio_weight": "did you mean io_weight?",
    "ulimit": 'did you mean ulimits? (ulimits = ["nofile=1024:2048"])',
    "rm": "did you mean auto_remove?",
    "privileged": 'not supported; grant capabilities with cap_add = ["ALL"] if you must',
    "healthcheck": "write the health check as health_cmd, health_interval, health_timeout, health_retries, health_start_period",
    "max_size": "did you mean log_max_size? (Docker's max-size log option)",
    "max_file": "did you mean log_max_files? (Docker's max-file log option)",
    "log_max_file": "did you mean log_max_files?",
}

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD_US = 100_000  # Docker's --cpus uses the CFS default period, 100 ms
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker's minimum for --memory
DEFAULT_STOP_TIMEOUT_S = 10.0
_MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS

NamespaceMode = Literal["private", "host"]
# "none" | "host" | "bridge" | a user-defined network's name | "container:NAME"
NetworkMode = str


# ---------------------------------------------------------------------------
# The validated form


@dataclass(frozen=True)
class Mount:
    """A bind mount (volumes) or a tmpfs, in the order given."""

    type: Literal["bind", "tmpfs"]
    destination: str  # absolute path inside the container
    source: str = ""  # bind: absolute host path; tmpfs: ""
    read_only: bool = False
    size_bytes: int | None = None  # tmpfs only; None = kernel default (half of RAM)
    mode: int | None = None  # tmpfs only, e.g. 0o1777; None = kernel default
    flags: tuple[str, ...] = ()  # tmpfs only: noexec, nosuid, nodev (and their opposites)

    def to_raw(self) -> str:
        if self.type == "bind":
            return f"{self.source}:{self.destination}:{'ro' if self.read_only else 'rw'}"
        opts: list[str] = []
        if self.size_bytes is not None:
            opts.append(f"size={self.size_bytes}")
        if self.mode is not None:
            opts.append(f"mode={self.mode:o}")
        if self.read_only:
            opts.append("ro")
        opts.extend(self.flags)
        return f"{self.destination}:{','.join(opts)}" if opts else self.destination


@dataclass(frozen=True)
class HealthCheck:
    """Docker's HEALTHCHECK with its defaults, plus what to do when unhealthy."""

    command: tuple[str, ...]  # argv; a string in the config runs as ["sh", "-c", STR]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0
    on_unhealthy: Literal["restart", "none"] = "none"


@dataclass(frozen=True)
class ContainerSpec:
    """One container, validated and normalised, whatever its source."""

    name: str
    rootfs: str  # absolute, normalised host path
    command: tuple[str, ...]
    env: tuple[str, ...] = ()  # "K=V", PATH always present
    workdir: str = "/"
    user: str = ""  # as given ("" = root); uid/gid below are resolved
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    hostname: str = ""
    memory_bytes: int | None = None  # None = unlimited
    # Swap only (not memory+swap): Docker's --memory-swap is the total, so
    # swap_bytes = memory_swap - memory; memory set and memory_swap unset gives
    # swap equal to memory (Docker); None = unlimited.
    swap_bytes: int | None = None
    cpu_quota_us: int | None = None  # None = no CFS quota
    cpu_period_us: int = CPU_PERIOD_US
    cpu_shares: int | None = None  # cgroup v1 cpu.shares (2..262144)
    cpu_weight: int | None = None  # cgroup v2 cpu.weight (1..10000)
    pids_limit: int | None = None  # None = unlimited
    io_weight: int | None = None  # 10..1000 (blkio.weight / io.weight)
    # Issue 9: per-device I/O (path as given + major:minor + bytes/s, IO/s or weight).
    io_weight_devices: tuple[DeviceLimit, ...] = ()
    device_read_bps: tuple[DeviceLimit, ...] = ()
    device_write_bps: tuple[DeviceLimit, ...] = ()
    device_read_iops: tuple[DeviceLimit, ...] = ()
    device_write_iops: tuple[DeviceLimit, ...] = ()
    cpuset_cpus: str | None = None  # normalised list, e.g. "0-1,3"
    cpuset_mems: str | None = None
    memory_reservation_bytes: int | None = None  # v2 memory.low, v1 soft limit
    memory_high_bytes: int | None = None  # v2 memory.high
    oom_kill_disable: bool = False
    oom_score_adj: int | None = None
    oom_group: bool = False
    ulimits: tuple[rlimits.Ulimit, ...] = ()
    # --network-rate IN[:OUT] in bits/s (supervisor.network.shaping); bridge only.
    network_rate_in_bps: int | None = None
    network_rate_out_bps: int | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    backoff: Backoff = field(default_factory=Backoff)
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    stop_signal: int = 15
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    network: NetworkMode = "none"
    publish: tuple[PortMapping, ...] = ()  # -p, only with a bridge network
    pid: NamespaceMode = "private"
    ipc: NamespaceMode = "private"
    uts: NamespaceMode = "private"
    cgroupns: NamespaceMode = "private"
    cap_add: tuple[str, ...] = ()  # normalised names, as given
    cap_drop: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()  # the final set (effective_caps)
    security_opt: tuple[str, ...] = ()  # as given (Docker's --security-opt)
    # The LaunchSpec's seccomp setting: "default", "unconfined" or the profile's
    # JSON text (read once, at validation; persisted as seccomp_profile).
    seccomp: str = "default"
    seccomp_source: str = "default"  # for inspect: default, unconfined or the file
    devices: tuple[DeviceMapping, ...] = ()  # --device, resolved on the host
    userns: str = ""  # "host", "auto", or "" = the daemon's default
    auto_remove: bool = False
    # run -t / -i: a pty kept by the monitor / stdin kept open for attach.
    tty: bool = False
    interactive: bool = False
    health: HealthCheck | None = None
    log_max_size_bytes: int | None = None  # None = no rotation (Docker's default)
    log_max_files: int = 1  # files kept, the current one included (Docker's max-file)

    @property
    def memory_swap_bytes(self) -> int | None:
        """Docker's total memory+swap; None = unlimited (or no memory limit)."""
        if self.memory_bytes is None or self.swap_bytes is None:
            return None
        return self.memory_bytes + self.swap_bytes

    @property
    def cpus(self) -> float | None:
        if self.cpu_quota_us is None:
            return None
        return self.cpu_quota_us / self.cpu_period_us

    def _limits_raw(self) -> dict[str, Any]:
        """The issue-9 limits in raw form (only those set)."""
        raw: dict[str, Any] = {}
        fmt: dict[str, Callable[[int], str]] = {
            "blkio_weight_device": str,
            "device_read_bps": limit_options.format_rate,
            "device_write_bps": limit_options.format_rate,
            "device_read_iops": str,
            "device_write_iops": str,
        }
        for key, fmt_value in fmt.items():
            attr = "io_weight_devices" if key == "blkio_weight_device" else key
            items: tuple[DeviceLimit, ...] = getattr(self, attr)
            if items:
                raw[key] = [f"{d.path}:{fmt_value(d.value)}" for d in items]
        for key, value in (
            ("cpuset_cpus", self.cpuset_cpus),
            ("cpuset_mems", self.cpuset_mems),
            ("memory_reservation", self.memory_reservation_bytes),
            ("memory_high", self.memory_high_bytes),
            ("oom_score_adj", self.oom_score_adj),
        ):
            if value is not None:
                raw[key] = value
        for key, flag in (
            ("oom_kill_disable", self.oom_kill_disable),
            ("oom_group", self.oom_group),
        ):
            if flag:
                raw[key] = True
        if self.ulimits:
            raw["ulimits"] = [rlimits.format_ulimit(u) for u in self.ulimits]
        if self.network_rate_in_bps is not None:
            rate = shaping.format_net_rate(self.network_rate_in_bps)
            if self.network_rate_out_bps is not None:
                rate += ":" + shaping.format_net_rate(self.network_rate_out_bps)
            raw["network_rate"] = rate
        return raw

    @property
    def backoff_initial_s(self) -> float:
        return self.backoff.initial_s

    @property
    def backoff_max_s(self) -> float:
        return self.backoff.max_s

    def to_raw(self) -> dict[str, Any]:
        """The raw form; validate_container(spec.to_raw()) == spec."""
        raw: dict[str, Any] = {
            "name": self.name,
            "rootfs": self.rootfs,
            "command": list(self.command),
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "hostname": self.hostname,
        }
        if self.memory_bytes is not None:
            raw["memory"] = self.memory_bytes
            total = self.memory_swap_bytes
            raw["memory_swap"] = -1 if total is None else total
        cpus = self.cpus
        if self.cpu_period_us != CPU_PERIOD_US:
            raw["cpu_period"] = self.cpu_period_us
            if self.cpu_quota_us is not None:
                raw["cpu_quota"] = self.cpu_quota_us
        elif cpus is not None:
            raw["cpus"] = cpus
        for key in ("cpu_shares", "cpu_weight", "pids_limit", "io_weight"):
            value = getattr(self, key)
            if value is not None:
                raw[key] = value
        raw.update(self._limits_raw())
        raw["restart"] = str(self.restart)
        raw["backoff_initial"] = self.backoff.initial_s
        raw["backoff_factor"] = self.backoff.factor
        raw["backoff_max"] = self.backoff.max_s
        raw["backoff_reset"] = self.backoff.reset_after_s
        raw["volumes"] = [m.to_raw() for m in self.mounts if m.type == "bind"]
        raw["tmpfs"] = [m.to_raw() for m in self.mounts if m.type == "tmpfs"]
        raw["read_only"] = self.read_only
        raw["stop_signal"] = signal_name(self.stop_signal)
        raw["stop_timeout"] = self.stop_timeout_s
        raw["network"] = self.network
        if self.publish:
            raw["publish"] = [p.to_raw() for p in self.publish]
        raw["pid"] = self.pid
        raw["ipc"] = self.ipc
        raw["uts"] = self.uts
        raw["cgroupns"] = self.cgroupns
        raw["cap_add"] = list(self.cap_add)
        raw["cap_drop"] = list(self.cap_drop)
        if self.security_opt:
            raw["security_opt"] = list(self.security_opt)
        if self.seccomp not in ("default", "unconfined"):
            raw["seccomp_profile"] = self.seccomp
        if self.devices:
            raw["devices"] = [d.to_raw() for d in self.devices]
        if self.userns:
            raw["userns"] = self.userns
        raw["auto_remove"] = self.auto_remove
        if self.tty:
            raw["tty"] = True
        if self.interactive:
            raw["interactive"] = True
        if self.health is not None:
            h = self.health
            raw["health_cmd"] = list(h.command)
            raw["health_interval"] = h.interval_s
            raw["health_timeout"] = h.timeout_s
            raw["health_retries"] = h.retries
            raw["health_start_period"] = h.start_period_s
            raw["on_unhealthy"] = h.on_unhealthy
        if self.log_max_size_bytes is not None:
            raw["log_max_size"] = self.log_max_size_bytes
            raw["log_max_files"] = self.log_max_files
        return raw


# ---------------------------------------------------------------------------
# Helpers


def suggest_key(key: str, known: Iterable[str]) -> str:
    """The fix for an unknown key: a hint, or "did you mean X?", or the list."""
    if key in _KEY_HINTS:
        return _KEY_HINTS[key]
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key.replace("-", "_").lower(), known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "known keys: " + ", ".join(known)


def resolve_in_rootfs(rootfs: str, path: str) -> str | None:
    """The host path of `path` inside `rootfs`, following symlinks as the
    container would see them: an absolute target is relative to the rootfs and
    ".." never climbs above it. None when a component is missing or the links
    loop. The result is always inside rootfs (a link cannot escape it)."""
    root = os.path.realpath(rootfs)
    todo = [p for p in path.split("/") if p]
    todo.reverse()
    parts: list[str] = []
    followed = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        host = os.path.join(root, *parts, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if followed > _MAX_SYMLINKS:
                return None
            try:
                target = os.readlink(host)
            except OSError:
                return None
            if target.startswith("/"):
                parts = []
            extra = [p for p in target.split("/") if p]
            extra.reverse()
            todo.extend(extra)
            continue
        parts.append(part)
    return os.path.join(root, *parts)


def _is_executable_file(host_path: str) -> bool:
    try:
        st = os.stat(host_path)  # already confined; no symlink left at the end
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def find_command(rootfs: str, command: str, *, path_env: str, workdir: str = "/") -> str | None:
    """The host path of the executable `command` resolves to in the rootfs.

    With a "/" in it, it is a path (relative ones from workdir); otherwise it is
    searched in path_env like execvp does. None when nothing executable matches.
    """
    if "/" in command:
        candidate = command if command.startswith("/") else os.path.join(workdir, command)
        host = resolve_in_rootfs(rootfs, candidate)
        return host if host and _is_executable_file(host) else None
    for directory in path_env.split(":"):
        if not directory.startswith("/"):
            continue  # a relative PATH entry depends on the cwd; execvp would too, skip it
        host = resolve_in_rootfs(rootfs, f"{directory}/{command}")
        if host and _is_executable_file(host):
            return host
    return None


def _read_db(rootfs: str, path: str) -> list[list[str]] | None:
    """/etc/passwd or /etc/group of the rootfs as split lines; None if absent."""
    host = resolve_in_rootfs(rootfs, path)
    if host is None:
        return None
    try:
        with open(host, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


# ---------------------------------------------------------------------------
# validate_container

T = TypeVar("T")


class _Checker:
    """Collects problems while the fields are parsed one by one."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(key, message))

    def get(self, key: str, parse: Callable[[Any], T], default: T) -> T:
        """parse(raw[key]) or default; a ValueError becomes a Problem on key."""
        if key not in self.raw or self.raw[key] is None:
            return default
        try:
            return parse(self.raw[key])
        except ValueError as exc:
            self.add(key, str(exc))
            return default


def _q(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _str(what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{_q(value)} is not a string; {what}")
        return value

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_q(value)} is not a boolean; use true or false")
    return value


def _number(value: Any, forms: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{_q(value)} is not a number; {forms}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{_q(value)} is not a number; {forms}")


def _int_in(lo: int, hi: int, zero_unset: bool, doc: str) -> Callable[[Any], int | None]:
    forms = f"use a whole number from {lo} to {hi}{' (0 = unset)' if zero_unset else ''}; {doc}"

    def parse(value: Any) -> int | None:
        number = _number(value, forms)
        if number != int(number):
            raise ValueError(f"{_q(value)} is not a whole number; {forms}")
        n = int(number)
        if zero_unset and n == 0:
            return None
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range; {forms}")
        return n

    return parse


def _str_list(value: Any, example: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{_q(value)} is not a list of strings; use e.g. {example}")
    return list(value)


def _parse_command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(
                f"{_q(value)} cannot be split into words ({exc}); fix the quoting or use a list"
            ) from None
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise ValueError(
            f'{_q(value)} is not a list of strings; use e.g. ["/bin/sh", "-c", "echo hi"]'
        )
    if not argv or not argv[0]:
        raise ValueError('is empty; give the program to run, e.g. ["/bin/httpd", "-f"]')
    return tuple(argv)


_ENV_KEY = re.compile(r"^[^=\0]+$")


def _parse_env(value: Any) -> tuple[str, ...]:
    items: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            if not isinstance(v, str | int | float):
                raise ValueError(
                    f'{k}: {_q(v)} is not a string; env values are strings, e.g. {k} = "1"'
                )
            items.append(f"{k}={v}")
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ValueError(
            f'{_q(value)} is neither a list of "K=V" strings nor a table; use e.g. ["DEBUG=1"] or {{DEBUG = "1"}}'
        )
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise ValueError(f'{_q(item)} is not "KEY=VALUE"; write e.g. "DEBUG=1"')
        if "\0" in item:
            raise ValueError(f"{_q(item)} contains a NUL byte")
    return tuple(items)


def _parse_mode(value: Any) -> NamespaceMode:
    if value not in ("private", "host"):
        raise ValueError(
            f'{_q(value)} is not a namespace mode; use "private" (the default) or "host"'
        )
    return "host" if value == "host" else "private"


def _parse_network(value: Any) -> NetworkMode:
    return parse_network_mode(value)  # whether a named network exists is the daemon's check


def _parse_publish(value: Any) -> tuple[PortMapping, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f'{_q(value)} is not a list of port mappings; e.g. ["8080:80"]')
    return tuple(parse_publish(item) for item in items)


def _parse_volume(spec: str, check_fs: bool) -> Mount:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f'{_q(spec)} is not "SRC:DST[:ro|rw]"; e.g. "/srv/data:/data:ro"')
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not src.startswith("/"):
        raise ValueError(
            f'{_q(spec)}: source {_q(src)} is not an absolute host path (named volumes are not supported); e.g. "/srv/data:/data"'
        )
    if not dst.startswith("/"):
        raise ValueError(
            f"{_q(spec)}: destination {_q(dst)} is not an absolute path in the container"
        )
    if os.path.normpath(dst) == "/":
        raise ValueError(
            f"{_q(spec)}: cannot mount over the container's root; pick a directory like /data"
        )
    if mode not in ("ro", "rw"):
        raise ValueError(f"{_q(spec)}: mode {_q(mode)} is not ro or rw")
    if check_fs and not os.path.exists(src):
        raise ValueError(f"{_q(spec)}: source {src} does not exist on the host; create it first")
    return Mount(
        "bind", os.path.normpath(dst), source=os.path.normpath(src), read_only=mode == "ro"
    )


_TMPFS_FLAGS = ("noexec", "exec", "nosuid", "suid", "nodev", "dev")


def _parse_tmpfs(spec: str) -> Mount:
    dst, _, opts = spec.partition(":")
    if not dst.startswith("/") or os.path.normpath(dst) == "/":
        raise ValueError(
            f'{_q(spec)}: destination must be an absolute path other than /; e.g. "/run:size=64m,mode=1777"'
        )
    size: int | None = None
    mode: int | None = None
    read_only = False
    flags: list[str] = []
    for opt in filter(None, opts.split(",")):
        key, sep, val = opt.partition("=")
        if key == "size" and sep:
            size = parse_size(val)
        elif key == "mode" and sep:
            try:
                mode = int(val, 8)
            except ValueError:
                raise ValueError(
                    f"{_q(spec)}: mode {_q(val)} is not octal; e.g. mode=1777"
                ) from None
            if not 0 <= mode <= 0o7777:
                raise ValueError(f"{_q(spec)}: mode {val} is out of range 0..7777")
        elif opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt in _TMPFS_FLAGS:
            flags.append(opt)
        else:
            raise ValueError(
                f"{_q(spec)}: unknown option {_q(opt)}; use size=64m, mode=1777, ro, noexec, nosuid, nodev"
            )
    return Mount(
        "tmpfs",
        os.path.normpath(dst),
        read_only=read_only,
        size_bytes=size,
        mode=mode,
        flags=tuple(flags),
    )


def _resolve_user(user: str, rootfs: str, c: _Checker) -> tuple[int, int, tuple[int, ...]]:
    """Docker's rules: UID or name, optional :GID or :group; names come from
    the rootfs's /etc/passwd and /etc/group; without a group the primary gid
    of the passwd entry (else 0); supplementary groups from /etc/group."""
    name_part, sep, group_part = user.partition(":")
    passwd = _read_db(rootfs, "/etc/passwd") or []
    groups = _read_db(rootfs, "/etc/group") or []
    uid: int | None = None
    gid: int | None = None
    username: str | None = None
    if name_part.isdigit():
        uid = int(name_part)
        for row in passwd:
            if len(row) >= 4 and row[2] == name_part:
                username, gid = row[0], int(row[3]) if row[3].isdigit() else 0
                break
    elif name_part:
        for row in passwd:
            if len(row) >= 4 and row[0] == name_part and row[2].isdigit():
                username, uid = row[0], int(row[2])
                gid = int(row[3]) if row[3].isdigit() else 0
                break
        if uid is None:
            c.add(
                "user",
                f"user {_q(name_part)} not found in {rootfs}/etc/passwd; use a numeric UID[:GID] or add the user to the rootfs",
            )
            return 0, 0, ()
    else:
        uid = 0
        username = "root"
        gid = 0
    if sep:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            for row in groups:
                if len(row) >= 3 and row[0] == group_part and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                c.add(
                    "user",
                    f"group {_q(group_part)} not found in {rootfs}/etc/group; use a numeric GID or add the group",
                )
                return uid, 0, ()
    if gid is None:
        gid = 0
    extra: list[int] = []
    if username is not None and not sep:
        for row in groups:
            if len(row) >= 4 and row[2].isdigit() and username in row[3].split(","):
                g = int(row[2])
                if g != gid and g not in extra:
                    extra.append(g)
    for value, what in ((uid, "uid"), (gid, "gid")):
        if value >= 2**32 - 1:
            c.add("user", f"{what} {value} is out of range; use a number below 4294967295")
    return uid, gid, tuple(extra)


def validate_container(
    raw: Mapping[str, Any],
    *,
    host_cpus: int | None = None,
    source: str | None = None,
    check_fs: bool = True,
) -> ContainerSpec:
    """Validate one raw container dict; raise ConfigError with every problem.

    host_cpus: the upper bound for cpus (None: os.cpu_count()). source: where
    the dict came from, for the error's rendering ("FILE", "API request").
    check_fs: look at the rootfs (exists, command resolves, user names).
    """
    c = _Checker(raw)
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [Problem("spec", f"{_q(raw)} is not a table/object of container keys")], source
        )
    for key in raw:
        if key not in RAW_KEYS:
            c.add(str(key), f"unknown key; {suggest_key(str(key), RAW_KEYS)}")

    # identity -------------------------------------------------------------
    name = c.get("name", _str("a container name like web-1"), "")
    if "name" not in raw:
        c.add(
            "name", "missing; name the container (letters, digits, _ . -, at most 63, e.g. web-1)"
        )
    elif isinstance(raw["name"], str) and not NAME_RE.match(name):
        c.add(
            "name",
            f"{_q(name)} is not a valid name; use [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,62}} (letters, digits, _ . -; starting with a letter or digit; at most 63)",
        )

    rootfs = c.get("rootfs", _str("the path of a rootfs directory"), "")
    rootfs_ok = False
    if "rootfs" not in raw:
        c.add(
            "rootfs",
            "missing; give the container's root filesystem directory (build one with `nsvisor rootfs busybox DIR`)",
        )
    elif rootfs:
        if not rootfs.startswith("/"):
            c.add("rootfs", f"{_q(rootfs)} is not an absolute path; use e.g. /srv/rootfs/web")
        else:
            rootfs = os.path.normpath(rootfs)
            if check_fs and not os.path.exists(rootfs):
                c.add(
                    "rootfs",
                    f"rootfs {rootfs} does not exist; build one with `nsvisor rootfs busybox {rootfs}`",
                )
            elif check_fs and not os.path.isdir(rootfs):
                c.add(
                    "rootfs",
                    f"rootfs {rootfs} is not a directory; give the directory that holds the container's /bin, /etc, ...",
                )
            else:
                rootfs_ok = check_fs

    command: tuple[str, ...] = c.get("command", _parse_command, ())
    if "command" not in raw:
        c.add("command", 'missing; give the program to run, e.g. command = ["/bin/httpd", "-f"]')

    env_given: tuple[str, ...] = c.get("env", _parse_env, ())
    env = list(env_given)
    env_keys = [e.partition("=")[0] for e in env]
    if "PATH" not in env_keys:
        env.insert(0, f"PATH={DEFAULT_PATH}")  # Docker's default when the image sets none
    path_env = DEFAULT_PATH
    for item in env:  # the last PATH wins, as in execve's environment
        k, _, v = item.partition("=")
        if k == "PATH":
            path_env = v

    workdir = c.get("workdir", _str("an absolute path like /app"), "/")
    if not workdir.startswith("/"):
        c.add("workdir", f"{_q(workdir)} is not an absolute path; use e.g. /app")
        workdir = "/"
    workdir = os.path.normpath(workdir)

    if (
        command
        and rootfs_ok
        and find_command(rootfs, command[0], path_env=path_env, workdir=workdir) is None
    ):
        if "/" in command[0]:
            c.add(
                "command",
                f"command {_q(command[0])} not found in rootfs {rootfs} (or not an executable regular file); check the path inside the rootfs",
            )
        else:
            c.add(
                "command",
                f"command {_q(command[0])} not found in rootfs {rootfs} (searched PATH {path_env}); give an absolute path or install it in the rootfs",
            )

    def parse_user(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)  # user = 1000 in TOML
        return _str('use "UID[:GID]" or "name[:group]"')(value)

    user = c.get("user", parse_user, "")
    uid, gid = 0, 0
    extra_gids: tuple[int, ...] = ()
    if user and not re.fullmatch(r"[^:\s]+(:[^:\s]+)?", user):
        c.add(
            "user", f'{_q(user)} is not "UID[:GID]" or "name[:group]"; e.g. "1000:1000" or "nobody"'
        )
    elif (
        re.fullmatch(r"\d*(:\d+)?", user) or rootfs_ok or (not check_fs and rootfs.startswith("/"))
    ):
        # Names need the rootfs's /etc/passwd; without check_fs (restoring a
        # persisted spec) it is still read when there. A broken rootfs is
        # already reported above, so a user name is not reported twice.
        uid, gid, extra_gids = _resolve_user(user, rootfs, c)

    hostname = c.get("hostname", _str("a host name like web-1"), name)
    if not hostname:
        hostname = name
    # A hostname derived from an invalid name is not reported again.
    explicit = bool(raw.get("hostname")) or bool(NAME_RE.match(name))
    if explicit and (len(hostname) > 64 or re.search(r"[\s/\0]", hostname)):
        c.add(
            "hostname",
            f"{_q(hostname)} is not a valid host name; use at most 64 letters, digits, - and .",
        )

    # resources ------------------------------------------------------------
    memory = c.get("memory", parse_size, None)
    if memory == 0:
        memory = None  # Docker: 0 = unlimited
    if memory is not None and memory < MIN_MEMORY_BYTES:
        c.add(
            "memory",
            f"{_q(raw['memory'])} is below the minimum of 6MiB; use at least 6m (Docker's limit)",
        )
        memory = None

    def parse_swap(value: Any) -> int | None:
        if value in (-1, "-1"):
            return -1
        return parse_size(value)

    memory_swap = c.get("memory_swap", parse_swap, None)
    swap_bytes: int | None = None
    if memory_swap == 0:
        memory_swap = None
    if memory_swap is not None and memory is None and "memory" not in raw:
        c.add(
            "memory_swap",
            "is set without memory; set memory too (memory_swap is the total of memory and swap) or remove it",
        )
    elif memory is not None:
        if memory_swap is None:
            swap_bytes = memory  # Docker: swap equal to memory, total 2x
        elif memory_swap == -1:
            swap_bytes = None
        elif memory_swap < memory:
            c.add(
                "memory_swap",
                f"{_q(raw['memory_swap'])} is less than memory {_q(raw['memory'])}; memory_swap is memory + swap, so use at least the memory value, or -1 for unlimited swap",
            )
        else:
            swap_bytes = memory_swap - memory

    cpus_limit = host_cpus if host_cpus is not None else (os.cpu_count() or 1)
    cpus = c.get("cpus", lambda v: _number(v, "use a number of CPUs like 0.5 or 2"), None)
    cpu_quota: int | None = None
    if cpus is not None:
        if cpus != cpus or cpus <= 0:
            c.add("cpus", f"{_q(raw['cpus'])} must be more than 0; use e.g. 0.5 or 2")
        elif cpus > cpus_limit:
            c.add(
                "cpus",
                f"{_q(raw['cpus'])} is more than the {cpus_limit} CPUs of this host; use at most {cpus_limit}",
            )
        elif cpus < 0.01:
            c.add("cpus", f"{_q(raw['cpus'])} is too small; the smallest quota is 0.01 CPU")
        else:
            cpu_quota = round(cpus * CPU_PERIOD_US)

    cpu_shares = c.get(
        "cpu_shares", _int_in(2, 262144, True, "relative CPU weight, 1024 = default"), None
    )
    cpu_weight = c.get(
        "cpu_weight", _int_in(1, 10000, False, "cgroup v2 cpu.weight, 100 = default"), None
    )
    if cpu_shares is not None and cpu_weight is not None:
        c.add(
            "cpu_weight",
            "is set together with cpu_shares; set one of them (cpu_shares is converted to a weight on cgroup v2)",
        )

    def parse_pids(value: Any) -> int | None:
        n = _number(value, "use a positive whole number, or -1 for unlimited")
        if n != int(n) or n < -1:
            raise ValueError(
                f"{_q(value)} is not a valid pids limit; use a positive whole number, or -1 (or 0) for unlimited"
            )
        return None if n in (0, -1) else int(n)

    pids_limit = c.get("pids_limit", parse_pids, None)
    limits = _validate_limits(c, memory, cpu_quota)
    if limits["cpu_quota_us"] is not None:
        cpu_quota = limits.pop("cpu_quota_us")
    else:
        limits.pop("cpu_quota_us")
    io_weight = c.get(
        "io_weight",
        _int_in(10, 1000, True, "relative block I/O weight like Docker's --blkio-weight"),
        None,
    )

    # supervision ----------------------------------------------------------
    def parse_restart(value: Any) -> RestartPolicy:
        if not isinstance(value, str):
            raise ValueError(
                f"{_q(value)} is not a string; use one of no, on-failure[:N], always, unless-stopped"
            )
        return parse_restart_policy(value)

    restart = c.get("restart", parse_restart, RestartPolicy())
    d = Backoff()
    b_initial = c.get("backoff_initial", parse_duration, d.initial_s)
    b_factor = c.get("backoff_factor", lambda v: _number(v, "use a number like 2"), d.factor)
    b_max = c.get("backoff_max", parse_duration, d.max_s)
    b_reset = c.get("backoff_reset", parse_duration, d.reset_after_s)
    if b_initial <= 0:
        c.add(
            "backoff_initial", f"{_q(raw['backoff_initial'])} must be more than 0; use e.g. 100ms"
        )
    if b_factor < 1:
        c.add(
            "backoff_factor",
            f"{_q(raw['backoff_factor'])} is less than 1 (the delay would shrink); use e.g. 2",
        )
    if b_max < b_initial:
        c.add(
            "backoff_max",
            f"{_q(raw.get('backoff_max', b_max))} is less than backoff_initial ({b_initial}s); make it at least that",
        )
    backoff = Backoff(initial_s=b_initial, factor=b_factor, max_s=b_max, reset_after_s=b_reset)

    auto_remove = c.get("auto_remove", _bool, False)
    if auto_remove and restart.name != "no":
        c.add(
            "auto_remove",
            f"conflicts with restart {_q(str(restart))}; a removed container cannot be restarted, drop one of them",
        )

    health = _validate_health(c, restart)
    tty = c.get("tty", _bool, False)
    interactive = c.get("interactive", _bool, False)
    log_max_size = c.get("log_max_size", parse_size, None)
    if log_max_size == 0:
        log_max_size = None
    if log_max_size is not None and log_max_size < 4096:
        c.add("log_max_size", f"{_q(raw['log_max_size'])} is too small; use at least 4k, e.g. 10m")
        log_max_size = None
    log_max_files: int | None = c.get(
        "log_max_files", _int_in(1, 1000, False, "files kept, the current one included"), None
    )
    if "log_max_files" in raw and "log_max_size" not in raw:
        c.add("log_max_files", "is set without log_max_size; set log_max_size too (e.g. 10m)")

    stop_signal = c.get("stop_signal", parse_signal, 15)
    stop_timeout = c.get("stop_timeout", parse_duration, DEFAULT_STOP_TIMEOUT_S)

    # filesystem -----------------------------------------------------------
    mounts: list[Mount] = []
    for key, example in (
        ("volumes", '["/srv/data:/data:ro"]'),
        ("tmpfs", '["/run:size=64m,mode=1777"]'),
    ):
        no_entries: list[str] = []
        entries = c.get(key, functools.partial(_str_list, example=example), no_entries)
        for entry in entries:
            try:
                mounts.append(
                    _parse_volume(entry, check_fs) if key == "volumes" else _parse_tmpfs(entry)
                )
            except ValueError as exc:
                c.add(key, str(exc))
    seen: set[str] = set()
    for m in mounts:
        if m.destination in seen:
            c.add(
                "volumes" if m.type == "bind" else "tmpfs",
                f"{m.destination} is mounted twice; give each destination once",
            )
        seen.add(m.destination)
    read_only = c.get("read_only", _bool, False)

    # namespaces, capabilities ---------------------------------------------
    network: NetworkMode = c.get("network", _parse_network, "none")
    publish: tuple[PortMapping, ...] = c.get("publish", _parse_publish, ())
    if publish and not uses_bridge(network):
        c.add(
            "publish",
            f'needs a bridge network, not network = "{network}"; add network = "bridge" (--network bridge)',
        )
    pid: NamespaceMode = c.get("pid", _parse_mode, "private")
    ipc: NamespaceMode = c.get("ipc", _parse_mode, "private")
    uts: NamespaceMode = c.get("uts", _parse_mode, "private")
    cgroupns: NamespaceMode = c.get("cgroupns", _parse_mode, "private")
    if uts == "host" and raw.get("hostname"):
        c.add(
            "hostname",
            'cannot be set with uts = "host" (the host\'s name is shared); remove one of them',
        )

    caps: dict[str, list[str]] = {}
    for key in ("cap_add", "cap_drop"):
        caps[key] = []
        no_caps: list[str] = []
        for cap in c.get(key, functools.partial(_str_list, example='["NET_ADMIN"]'), no_caps):
            try:
                norm = normalize_cap(cap)
            except ValueError as exc:
                c.add(key, str(exc))
                continue
            if norm not in caps[key]:
                caps[key].append(norm)

    # security ---------------------------------------------------------------
    no_opts: list[str] = []
    security_opt = c.get(
        "security_opt",
        functools.partial(_str_list, example='["seccomp=unconfined"]'),
        no_opts,
    )
    inline = raw.get("seccomp_profile")
    if inline is not None and not isinstance(inline, str):
        c.add("seccomp_profile", "must be the JSON text of a Docker seccomp profile")
        inline = None
    if inline is not None and not any(o.startswith("seccomp=/") for o in security_opt):
        security_opt = [*security_opt, "seccomp=/inline"]
    sec = SecurityOpts()
    try:
        sec = parse_security_opts(security_opt, inline)
    except ValueError as exc:
        c.add("security_opt", str(exc))
    devices: list[DeviceMapping] = []
    no_devices: list[str] = []
    for entry in c.get(
        "devices",
        functools.partial(_str_list, example='["/dev/fuse", "/dev/sdb:/dev/xvdb:r"]'),
        no_devices,
    ):
        try:
            devices.append(parse_device(entry))
        except ValueError as exc:
            c.add("devices", str(exc))
    userns = c.get("userns", _choice(("host", "auto")), "")

    no_rate: tuple[int | None, int | None] = (None, None)
    rate_in, rate_out = c.get("network_rate", shaping.parse_network_rate, no_rate)
    if rate_in is not None and not uses_bridge(network):
        c.add(
            "network_rate",
            f'needs a bridge network (a veth to shape), not network = "{network}"; '
            'add network = "bridge" (--network bridge) or remove it',
        )

    if c.problems:
        raise ConfigError(c.problems, source)
    return ContainerSpec(
        name=name,
        rootfs=rootfs,
        command=command,
        env=tuple(env),
        workdir=workdir,
        user=user,
        uid=uid,
        gid=gid,
        additional_gids=extra_gids,
        hostname=hostname,
        memory_bytes=memory,
        swap_bytes=swap_bytes,
        cpu_quota_us=cpu_quota,
        **limits,
        network_rate_in_bps=rate_in,
        network_rate_out_bps=rate_out,
        cpu_shares=cpu_shares,
        cpu_weight=cpu_weight,
        pids_limit=pids_limit,
        io_weight=io_weight,
        restart=restart,
        backoff=backoff,
        mounts=tuple(mounts),
        read_only=read_only,
        stop_signal=stop_signal,
        stop_timeout_s=stop_timeout,
        network=network,
        publish=publish,
        pid=pid,
        ipc=ipc,
        uts=uts,
        cgroupns=cgroupns,
        cap_add=tuple(caps["cap_add"]),
        cap_drop=tuple(caps["cap_drop"]),
        capabilities=effective_caps(caps["cap_add"], caps["cap_drop"]),
        security_opt=tuple(o for o in security_opt if o != "seccomp=/inline"),
        seccomp=sec.seccomp,
        seccomp_source=sec.seccomp_source,
        devices=tuple(devices),
        userns=userns,
        auto_remove=auto_remove,
        tty=tty,
        interactive=interactive,
        health=health,
        log_max_size_bytes=log_max_size,
        log_max_files=log_max_files or 1,
    )


def _device_list(kind: str) -> Callable[[Any], tuple[DeviceLimit, ...]]:
    example = {"rate": "/dev/sda:10mb", "iops": "/dev/sda:100", "weight": "/dev/sda:200"}[kind]

    def parse(value: Any) -> tuple[DeviceLimit, ...]:
        items = _str_list(value, f'["{example}"]')
        result = tuple(limit_options.parse_device_value(item, kind) for item in items)
        seen: set[tuple[int, int]] = set()
        for d in result:
            if (d.major, d.minor) in seen:
                raise ValueError(f"{d.path} is given twice; give each device once")
            seen.add((d.major, d.minor))
        return result

    return parse


def _parse_ulimits(value: Any) -> tuple[rlimits.Ulimit, ...]:
    """["nofile=1024:2048"] or a table {nofile = "1024:2048", nproc = 100}."""
    if isinstance(value, Mapping):
        items = [f"{k}={v}" for k, v in value.items()]
    else:
        items = _str_list(value, '["nofile=1024:2048"]')
    parsed = [rlimits.parse_ulimit(item) for item in items]
    names = [u[0] for u in parsed]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{name} is given twice; give each ulimit once")
    return tuple(parsed)


def _validate_limits(c: _Checker, memory: int | None, cpu_quota: int | None) -> dict[str, Any]:
    """The issue-9 limits: ContainerSpec fields by name (plus cpu_quota_us
    when cpu_quota was given, for the caller)."""
    raw = c.raw
    out: dict[str, Any] = {}
    none: tuple[DeviceLimit, ...] = ()
    out["io_weight_devices"] = c.get("blkio_weight_device", _device_list("weight"), none)
    for key in ("device_read_bps", "device_write_bps"):
        out[key] = c.get(key, _device_list("rate"), none)
    for key in ("device_read_iops", "device_write_iops"):
        out[key] = c.get(key, _device_list("iops"), none)
    out["cpuset_cpus"] = c.get(
        "cpuset_cpus", lambda v: limit_options.parse_cpuset(str(v), "cpu"), None
    )
    out["cpuset_mems"] = c.get(
        "cpuset_mems", lambda v: limit_options.parse_cpuset(str(v), "node"), None
    )

    period = c.get(
        "cpu_period",
        _int_in(1000, 1_000_000, True, "the CFS period in microseconds, default 100000"),
        None,
    )
    out["cpu_period_us"] = period or CPU_PERIOD_US
    quota: int | None = None
    if "cpu_quota" in raw:

        def parse_quota(value: Any) -> int | None:
            if value in (-1, "-1"):
                return None
            return _int_in(1000, 1 << 40, True, "microseconds per period, -1 = none")(value)

        quota = c.get("cpu_quota", parse_quota, None)
        if quota is not None and "cpus" in raw:
            c.add("cpu_quota", "is set together with cpus; set one of them (cpus = quota / period)")
            quota = None
    elif period is not None and cpu_quota is not None:
        c.add(
            "cpu_period",
            "is set together with cpus, which uses the 100ms period; use cpu_quota with cpu_period instead of cpus",
        )
    out["cpu_quota_us"] = quota

    for key, field_name in (
        ("memory_reservation", "memory_reservation_bytes"),
        ("memory_high", "memory_high_bytes"),
    ):
        value = c.get(key, parse_size, None) or None
        if value is not None and memory is not None and value > memory:
            what = (
                "a reservation is a soft limit below the hard one"
                if key == "memory_reservation"
                else "memory_high must be below memory to act before the OOM killer"
            )
            c.add(
                key,
                f"{_q(raw[key])} is above memory {_q(raw['memory'])}; {what}: lower it or raise memory",
            )
            value = None
        out[field_name] = value
    out["oom_kill_disable"] = c.get("oom_kill_disable", _bool, False)
    out["oom_group"] = c.get("oom_group", _bool, False)
    out["oom_score_adj"] = c.get(
        "oom_score_adj",
        _int_in(-1000, 1000, False, "the OOM killer's preference, -1000 = never kill"),
        None,
    )
    no_ulimits: tuple[rlimits.Ulimit, ...] = ()
    out["ulimits"] = c.get("ulimits", _parse_ulimits, no_ulimits)
    return out


_HEALTH_KEYS = (
    "health_interval",
    "health_timeout",
    "health_retries",
    "health_start_period",
    "on_unhealthy",
)


def _validate_health(c: _Checker, restart: RestartPolicy) -> HealthCheck | None:
    raw = c.raw
    if "health_cmd" not in raw or raw["health_cmd"] in (None, "", []):
        for key in _HEALTH_KEYS:
            if key in raw:
                c.add(
                    key, 'is set without health_cmd; add e.g. health_cmd = "wget -q -O- localhost"'
                )
        return None

    def parse_cmd(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return ("sh", "-c", value)  # Docker's CMD-SHELL form
        return _parse_command(value)

    def positive(key: str, default: float) -> float:
        value = c.get(key, parse_duration, default)
        if value <= 0:
            c.add(key, f"{_q(raw[key])} must be more than 0; use e.g. 30s")
            return default
        return value

    d = HealthCheck(command=("true",))
    command = c.get("health_cmd", parse_cmd, d.command)
    interval = positive("health_interval", d.interval_s)
    timeout = positive("health_timeout", d.timeout_s)
    retries: int | None = c.get(
        "health_retries", _int_in(1, 1000, False, "failures in a row"), None
    )
    start_period = c.get("health_start_period", parse_duration, d.start_period_s)
    on_unhealthy = c.get("on_unhealthy", _choice(("restart", "none")), "none")
    if on_unhealthy == "restart" and restart.name == "no":
        c.add(
            "on_unhealthy",
            '"restart" goes through the restart policy, which is "no"; set restart = "on-failure" or "always"',
        )
    return HealthCheck(
        command=command,
        interval_s=interval,
        timeout_s=timeout,
        retries=retries or d.retries,
        start_period_s=start_period,
        on_unhealthy="restart" if on_unhealthy == "restart" else "none",
    )


def resolve_user(user: str, rootfs: str) -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, supplementary gids) of "UID[:GID]" or "name[:group]" in the
    rootfs's /etc/passwd and /etc/group (exec -u). ConfigError if unknown."""
    c = _Checker({"user": user})
    if not re.fullmatch(r"[^:\s]+(:[^:\s]+)?", user):
        c.add("user", f'{_q(user)} is not "UID[:GID]" or "name[:group]"; e.g. "1000:1000"')
        raise ConfigError(c.problems)
    ids = _resolve_user(user, rootfs, c)
    if c.problems:
        raise ConfigError(c.problems)
    return ids


# ---------------------------------------------------------------------------
# The daemon's config file

DAEMON_KEYS: tuple[str, ...] = (
    "state_dir",
    "socket",
    "metrics_addr",
    "cgroup_root",
    "cgroup_parent",
    "log_level",
    "log_format",
    "stop_containers_on_shutdown",
    "bridge",
    "bridge_subnet",
    "net_prefix",
    "userns",
    "userns_user",
    "subuid_file",
    "subgid_file",
    "userns_size",
)
TOP_LEVEL_TABLES: tuple[str, ...] = ("daemon", "defaults", "containers", "networks")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL


@dataclass(frozen=True)
class DaemonConfig:
    """The [daemon] table, the containers declared in the file, and where it came from."""

    state_dir: str = "/var/lib/nsvisor"
    socket: str = "/run/nsvisor/nsvisor.sock"
    metrics_addr: str = "127.0.0.1:9323"
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = "nsvisor"
    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, json otherwise
    stop_containers_on_shutdown: bool = False
    # Bridge networking (supervisor.network): the default network's bridge and
    # subnet, and the prefix of every interface name (and of the nftables
    # table) this daemon makes; two daemons on one host need different ones.
    bridge: str = "nsvisor0"
    bridge_subnet: str = "10.88.0.0/16"
    net_prefix: str = "nsv"
    networks: tuple[tuple[str, str, int], ...] = ()  # [networks.NAME]: (name, subnet, mtu)
    # User namespaces (supervisor.daemon.userns): the default of containers
    # that set none, the dedicated user whose subuid/subgid entries are cut
    # into one range of userns_size ids per container.
    userns: str = "host"
    userns_user: str = "nsvisor"
    subuid_file: str = "/etc/subuid"
    subgid_file: str = "/etc/subgid"
    userns_size: int = 65536
    containers: tuple[ContainerSpec, ...] = ()
    source: str | None = None  # the config file, None when run without one

    @property
    def metrics_host(self) -> str:
        return split_host_port(self.metrics_addr)[0]

    @property
    def metrics_port(self) -> int:
        return split_host_port(self.metrics_addr)[1]


def split_host_port(addr: str) -> tuple[str, int]:
    """'127.0.0.1:9323' -> ('127.0.0.1', 9323); '[::1]:9323' -> ('::1', 9323)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", addr)
    if not m:
        raise ValueError(f'{_q(addr)} is not HOST:PORT; use e.g. "127.0.0.1:9323" or "[::1]:9323"')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"{_q(addr)}: port {port} is out of range 0..65535")
    return host, port


def _abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{_q(value)} is not an absolute path; use e.g. /var/lib/nsvisor")
    return os.path.normpath(value)


def _socket_path(value: Any) -> str:
    path = _abs_path(value)
    if len(path.encode()) > _SUN_PATH_MAX:
        raise ValueError(
            f"{_q(value)} is longer than the {_SUN_PATH_MAX} bytes a Unix socket path may have; use a shorter path"
        )
    return path


def _metrics_addr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'{_q(value)} is not a string; use e.g. "127.0.0.1:9323"')
    split_host_port(value)
    return value


def _cgroup_parent(value: Any) -> str:
    if not isinstance(value, str) or not value.strip("/"):
        raise ValueError(f'{_q(value)} is not a cgroup path; use e.g. "nsvisor"')
    if ".." in value.split("/"):
        raise ValueError(
            f'{_q(value)} contains ".."; give a path below the cgroup root, e.g. "nsvisor"'
        )
    return value.strip("/")


def _choice(
    options: tuple[str, ...], aliases: Mapping[str, str] | None = None
) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str):
            v = value.lower()
            v = (aliases or {}).get(v, v)
            if v in options:
                return v
        raise ValueError(f"{_q(value)} is not one of {', '.join(options)}")

    return parse


def _ifname(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}", value):
        raise ValueError(
            f'{_q(value)} is not an interface name (at most 15 characters); e.g. "nsvisor0"'
        )
    return value


def _subnet(value: Any) -> str:
    return str(parse_subnet(value))


def _user_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError(f'{_q(value)} is not a user name (lower case, at most 32); e.g. "nsvisor"')
    return value


def _userns_size(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 24:
        raise ValueError(
            f"{_q(value)} is not a number of ids in 1024..16777216; use 65536 (every uid a"
            " distribution's rootfs uses, nobody = 65534 included)"
        )
    return value


def _net_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9]{0,5}", value):
        raise ValueError(f'{_q(value)} is not 1..6 lower-case letters and digits; e.g. "nsv"')
    return value


_DAEMON_PARSERS: dict[str, Callable[[Any], Any]] = {
    "state_dir": _abs_path,
    "socket": _socket_path,
    "metrics_addr": _metrics_addr,
    "cgroup_root": _abs_path,
    "cgroup_parent": _cgroup_parent,
    "log_level": _choice(LOG_LEVELS, {"warn": "warning"}),
    "log_format": _choice(LOG_FORMATS),
    "stop_containers_on_shutdown": _bool,
    "bridge": _ifname,
    "bridge_subnet": _subnet,
    "net_prefix": _net_prefix,
    "userns": _choice(("host", "auto")),
    "userns_user": _user_name,
    "subuid_file": _abs_path,
    "subgid_file": _abs_path,
    "userns_size": _userns_size,
}


# -- finding the line of a key (pure, a plain scan; tomllib gives no positions)

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _split_dotted(text: str) -> tuple[str, ...] | None:
    """'containers."my.app"' -> ('containers', 'my.app'); None if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            quote = text[i]
            end = text.find(quote, i + 1)
            if end < 0:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return None
            parts.append(m.group(0))
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i == n:
            return tuple(parts)
        if text[i] != ".":
            return None
        i += 1


def find_line(text: str, table: tuple[str, ...], key: str | None = None) -> int | None:
    """The 1-based line of `key` inside the table `table` of a TOML text (the
    table's header line when key is None or not found), or None.

    A plain scan: headers `[a.b]` / `[[a.b]]` switch the current table; a line
    `key = ...` or `"key" = ...` in the right table is a hit. A table written
    inline in its parent (`web = { ... }`) is found through the parent.
    """
    current: tuple[str, ...] = ()
    header_line: int | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\[?([^\[\]]+)\]\]?\s*(#.*)?", stripped)
        if header:
            parsed = _split_dotted(header.group(1))
            if parsed is not None:
                current = parsed
                if current == table:
                    if key is None:
                        return lineno
                    header_line = header_line or lineno
                continue
        if key is None or current != table:
            continue
        eq = stripped.find("=")
        if eq > 0:
            dotted = _split_dotted(stripped[:eq])
            if dotted and dotted[0] == key:
                return lineno
    if key is not None:
        sub = _header_line(text, (*table, key))  # the key is itself a table: [table.key]
        if sub is not None:
            return sub
    if header_line is None and table:
        return find_line(text, table[:-1], table[-1])
    return header_line


def _header_line(text: str, table: tuple[str, ...]) -> int | None:
    for lineno, line in enumerate(text.splitlines(), 1):
        header = re.fullmatch(r"\[\[?([^\[\]]+)\]\]?\s*(#.*)?", line.strip())
        if header and _split_dotted(header.group(1)) == table:
            return lineno
    return None


def _section(table: tuple[str, ...]) -> str:
    return "[" + ".".join(_toml_key(t) for t in table) + "]"


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    overrides: Mapping[str, str] | None = None,
    host_cpus: int | None = None,
    check_fs: bool = True,
) -> DaemonConfig:
    """Read and validate a config file (None: defaults only) plus command-line
    overrides of [daemon] keys. Raises ConfigError listing every problem, each
    with its line: "FILE:LINE: [containers.web] memory: ..."."""
    source = os.fspath(path) if path is not None else None
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                [
                    Problem(
                        "config",
                        "file does not exist; give the path of a TOML file (see deploy/nsvisor.toml)",
                    )
                ],
                source,
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError([Problem("config", f"cannot read it: {reason}")], source) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            raise ConfigError(
                [Problem("syntax", f"{exc}; fix the TOML syntax", int(m.group(1)) if m else None)],
                source,
            ) from None

    problems: list[Problem] = []

    def add(table: tuple[str, ...], key: str | None, message: str) -> None:
        where = f"{_section(table)} {key}" if key else _section(table)
        if not table:
            where = key or "config"
        problems.append(Problem(where, message, find_line(text, table, key)))

    for key in data:
        if key not in TOP_LEVEL_TABLES:
            add(
                (),
                key,
                f"unknown top-level key; {suggest_key(key, TOP_LEVEL_TABLES)} (tables: [daemon], [defaults], [containers.NAME])",
            )

    def table_of(key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            add((), key, f"must be a table; write it as [{key}]")
            return {}
        return value

    # [daemon] -------------------------------------------------------------
    settings: dict[str, Any] = {}
    for key, value in table_of("daemon").items():
        if key not in DAEMON_KEYS:
            add(("daemon",), key, f"unknown key; {suggest_key(key, DAEMON_KEYS)}")
            continue
        try:
            settings[key] = _DAEMON_PARSERS[key](value)
        except ValueError as exc:
            add(("daemon",), key, str(exc))
    for key, value in (overrides or {}).items():
        if key not in DAEMON_KEYS:
            problems.append(
                Problem(
                    f"{key} (command line)",
                    f"unknown daemon setting; {suggest_key(key, DAEMON_KEYS)}",
                )
            )
            continue
        try:
            settings[key] = _DAEMON_PARSERS[key](value)
        except ValueError as exc:
            problems.append(Problem(f"{key} (command line)", str(exc)))

    # [defaults] -----------------------------------------------------------
    defaults: dict[str, Any] = {}
    for key, value in table_of("defaults").items():
        if key == "name":
            add(
                ("defaults",),
                key,
                "a name cannot be a default; each container is named by its [containers.NAME] table",
            )
        elif key not in RAW_KEYS:
            add(("defaults",), key, f"unknown key; {suggest_key(key, RAW_KEYS)}")
        else:
            defaults[key] = value

    # [networks.NAME] ------------------------------------------------------
    networks: list[tuple[str, str, int]] = []
    for name, table in table_of("networks").items():
        here = ("networks", name)
        if not isinstance(table, dict):
            add(
                ("networks",),
                name,
                f'must be a table; write it as {_section(here)} with subnet = "10.89.0.0/24"',
            )
            continue
        if not NAME_RE.match(name) or name in ("none", "host", "bridge", "container", "default"):
            add(here, None, f"{_q(name)} cannot name a network; use letters, digits, _ . -")
        for key in table:
            if key not in ("subnet", "mtu"):
                add(here, key, f"unknown key; {suggest_key(key, ('subnet', 'mtu'))}")
        try:
            subnet = _subnet(table.get("subnet"))
        except ValueError as exc:
            add(here, "subnet", str(exc))
            continue
        mtu = table.get("mtu", 1500)
        if not isinstance(mtu, int) or not 576 <= mtu <= 65535:
            add(here, "mtu", f"{_q(mtu)} is not an MTU in 576..65535")
            continue
        networks.append((name, subnet, mtu))
    all_nets = [("bridge", settings.get("bridge_subnet", DaemonConfig.bridge_subnet))] + [
        (n, sub) for n, sub, _ in networks
    ]
    for i, (n, sub) in enumerate(all_nets):
        for other, osub in all_nets[:i]:
            if ipaddress.ip_network(sub).overlaps(ipaddress.ip_network(osub)):
                add(
                    ("networks", n),
                    "subnet",
                    f"{sub} overlaps network {other} ({osub}); pick another subnet",
                )

    # [containers.NAME] ----------------------------------------------------
    specs: list[ContainerSpec] = []
    seen: set[tuple[str, str]] = set()
    for name, table in table_of("containers").items():
        here = ("containers", name)
        if not isinstance(table, dict):
            add(("containers",), name, f"must be a table; write it as {_section(here)}")
            continue
        if "name" in table and table["name"] != name:
            add(
                here,
                "name",
                f"{_q(table['name'])} differs from the table's name {_q(name)}; remove it, the table key is the name",
            )
        merged = {**defaults, **table, "name": name}
        try:
            specs.append(validate_container(merged, host_cpus=host_cpus, check_fs=check_fs))
        except ConfigError as exc:
            for p in exc.problems:
                if p.field in table or p.field not in defaults:
                    if p.field in table or p.field == "name":
                        add(here, p.field, p.message)
                    else:  # a missing key: point at the table's header
                        problems.append(
                            Problem(f"{_section(here)} {p.field}", p.message, find_line(text, here))
                        )
                elif ("defaults", p.field + p.message) not in seen:
                    seen.add(("defaults", p.field + p.message))
                    add(("defaults",), p.field, p.message)

    if problems:
        problems.sort(key=lambda p: p.line if p.line is not None else 1 << 30)
        raise ConfigError(problems, source)
    return DaemonConfig(
        **settings, containers=tuple(specs), networks=tuple(networks), source=source
    )


def check_config(
    path: str | os.PathLike[str], *, host_cpus: int | None = None, check_fs: bool = True
) -> list[str]:
    """Every problem of a config file, rendered "FILE:LINE: [table] key: message"; [] if OK."""
    try:
        load_config(path, host_cpus=host_cpus, check_fs=check_fs)
    except ConfigError as exc:
        return [p.render(exc.source) for p in exc.problems]
    return []
