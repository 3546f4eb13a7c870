"""The user's spelling of the issue-9 limits -> values the backends take.

Pure except for the host facts a check needs (is this path a block device,
which CPUs are online), each read through one small function with an
injectable root so tests can point it at a fixture tree. Every ValueError
says what was wrong and the accepted form; supervisor.config prefixes the key.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from . import parse

# Docker's --device-read-bps takes units.RAMInBytes ("10mb" = 10 MiB/s).
# Unlike Docker a bare number is refused: "10" could be meant as 10 MB/s, and
# a throttle to 10 bytes/s stalls the container.
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(b|[kmgt](?:i?b)?)$", re.IGNORECASE)
_RATE_MULT = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
RATE_FORMS = "use a rate with a unit like 10mb (per second; b, kb, mb, gb, binary: 1kb = 1024)"
_MAX_IOPS = 1 << 40


@dataclass(frozen=True)
class DeviceLimit:
    """One DEVICE:VALUE option: the path as given, its numbers, the value
    (bytes/s, IO/s or a weight)."""

    path: str
    major: int
    minor: int
    value: int


def parse_rate(text: str) -> int:
    """Bytes per second from "10mb", "512k", "1g", "100b"."""
    m = _RATE_RE.match(text.strip())
    if not m:
        if re.fullmatch(r"\d+(\.\d+)?", text.strip()):
            raise ValueError(f'"{text}" has no unit; {RATE_FORMS}')
        raise ValueError(f'"{text}" is not a rate; {RATE_FORMS}')
    value = int(float(m.group(1)) * _RATE_MULT[m.group(2)[0].lower()])
    if value <= 0:
        raise ValueError(f'"{text}" is zero; {RATE_FORMS} (leave the option out for no limit)')
    return value


def format_rate(value: int) -> str:
    """The inverse of parse_rate, exact: 10485760 -> "10mb", 1000 -> "1000b"."""
    for unit, mult in (("tb", 1 << 40), ("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if value % mult == 0:
            return f"{value // mult}{unit}"
    return f"{value}b"


def parse_iops(text: str) -> int:
    t = str(text).strip()
    if not t.isdigit() or not 0 < int(t) <= _MAX_IOPS:
        raise ValueError(f'"{text}" is not a number of I/O operations per second; use e.g. 100')
    return int(t)


def parse_weight(text: str) -> int:
    t = str(text).strip()
    if not t.isdigit() or not 10 <= int(t) <= 1000:
        raise ValueError(f'"{text}" is not a weight; use a whole number from 10 to 1000')
    return int(t)


def block_device(path: str, sys_root: str = "/sys") -> tuple[int, int]:
    """(major, minor) of a whole-disk block device; ValueError otherwise."""
    if not path.startswith("/"):
        raise ValueError(f'"{path}" is not an absolute device path; use e.g. /dev/sda')
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(
            f"device {path} does not exist ({e.strerror}); give a block device of this host, "
            "e.g. /dev/sda (see lsblk)"
        ) from None
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device; give a disk like /dev/sda (see lsblk)")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if os.path.exists(os.path.join(sys_root, "dev", "block", f"{major}:{minor}", "partition")):
        raise ValueError(
            f"{path} is a partition; the kernel throttles whole disks only: "
            "give the disk it is on (lsblk -no pkname " + path + ")"
        )
    return major, minor


def parse_device_value(text: str, kind: str, sys_root: str = "/sys") -> DeviceLimit:
    """ "DEVICE:VALUE" where kind is "rate", "iops" or "weight"."""
    if not isinstance(text, str) or ":" not in text:
        example = {"rate": "/dev/sda:10mb", "iops": "/dev/sda:100", "weight": "/dev/sda:200"}[kind]
        raise ValueError(f'"{text}" is not DEVICE:VALUE; use e.g. {example}')
    path, _, value = text.rpartition(":")
    parsed = {"rate": parse_rate, "iops": parse_iops, "weight": parse_weight}[kind](value)
    major, minor = block_device(path, sys_root)
    return DeviceLimit(path, major, minor, parsed)


def online(kind: str, sys_root: str = "/sys") -> frozenset[int]:
    """The host's online CPUs ("cpu") or memory nodes ("node"); a host without
    NUMA information has node 0."""
    path = os.path.join(sys_root, "devices", "system", kind, "online")
    try:
        with open(path) as f:
            return parse.parse_cpu_list(f.read())
    except (OSError, ValueError):
        return frozenset({0}) if kind == "node" else frozenset(range(os.cpu_count() or 1))


def parse_cpuset(text: str, kind: str, sys_root: str = "/sys") -> str:
    """A cpu or node list, checked against the host: normalised ("0-1,3")."""
    what = "CPUs" if kind == "cpu" else "memory nodes"
    have = online(kind, sys_root)
    host = parse.format_cpu_list(have)
    try:
        wanted = parse.parse_cpu_list(str(text))
    except ValueError as e:
        raise ValueError(f"{e}; use {what} of this host ({host})") from None
    if not wanted:
        raise ValueError(f"is empty; use {what} of this host ({host}), e.g. 0")
    missing = wanted - have
    if missing:
        raise ValueError(
            f'"{text}" names {what} {parse.format_cpu_list(missing)} that this host does not '
            f"have online; use {what} from {host}"
        )
    return parse.format_cpu_list(wanted)


def layout_problems(
    layout: str, *, memory_high: bool, oom_group: bool, oom_kill_disable: bool
) -> list[tuple[str, str]]:
    """(raw key, message) for every option the cgroup layout cannot honour;
    checked before anything is created so that nothing starts."""
    problems: list[tuple[str, str]] = []
    if layout == "v2" and oom_kill_disable:
        problems.append(
            (
                "oom_kill_disable",
                "is not supported on cgroup v2 (the kernel always OOM-kills above memory.max); "
                "remove it, or use memory_high to throttle before the limit",
            )
        )
    if layout != "v2":
        for wanted, key in ((memory_high, "memory_high"), (oom_group, "oom_group")):
            if wanted:
                problems.append(
                    (key, "needs cgroup v2; this host runs the v1/hybrid layout: remove it")
                )
    return problems
