"""The limits a container asks for, and the unit conversions between v1 and v2.

Pure: no I/O. The backends turn a Limits into a plan of file writes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Default values the kernel gives a fresh cgroup; a Limits field left at None
# resets the file to these, so create() and update() are declarative.
CPU_SHARES_DEFAULT = 1024
CPU_WEIGHT_DEFAULT = 100
BLKIO_WEIGHT_DEFAULT = 500  # v1 blkio.weight (CFQ, removed in 5.0)
BFQ_WEIGHT_DEFAULT = 100  # blkio.bfq.weight / io.bfq.weight
IO_WEIGHT_DEFAULT = 100  # v2 io.weight


@dataclass(frozen=True)
class IoThrottle:
    """Per-device block I/O caps (v2 io.max, v1 blkio.throttle.*_device).
    None = unlimited for that direction."""

    major: int
    minor: int
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None


@dataclass(frozen=True)
class DeviceWeight:
    """A per-device I/O weight in Docker's --blkio-weight-device units (10..1000)."""

    major: int
    minor: int
    weight: int


@dataclass(frozen=True)
class Limits:
    """Resource limits of one cgroup. None means unlimited / kernel default."""

    memory_max: int | None = None
    """bytes; None = unlimited."""
    swap_max: int | None = None
    """bytes of swap ONLY, on top of memory_max; None or -1 = unlimited.
    v2: memory.swap.max. v1: memory.memsw.limit_in_bytes = memory_max + swap_max
    (only where the memsw file exists, i.e. swap accounting is on)."""
    cpu_quota_us: int | None = None
    """None = no quota ("max")."""
    cpu_period_us: int = 100_000
    cpu_shares: int | None = None
    """v1 cpu.shares (2..262144); v2 converts it to cpu.weight."""
    cpu_weight: int | None = None
    """v2 cpu.weight (1..10000); v1 converts it to cpu.shares. When both are
    given each backend uses its native one."""
    pids_max: int | None = None
    io_weight: int | None = None
    """Docker --blkio-weight units (10..1000)."""
    io_weight_devices: tuple[DeviceWeight, ...] = ()
    io_throttle: tuple[IoThrottle, ...] = ()
    """Devices not listed are reset to unlimited (the backends read which
    devices the kernel has entries for)."""
    memory_low: int | None = None
    """--memory-reservation: v2 memory.low, v1 memory.soft_limit_in_bytes."""
    memory_high: int | None = None
    """v2 memory.high (throttle + reclaim above it); no v1 counterpart."""
    oom_kill_disable: bool = False
    """v1 memory.oom_control; v2 has no way to disable the OOM killer."""
    oom_group: bool = False
    """v2 memory.oom.group: the OOM killer takes the whole cgroup."""
    cpuset_cpus: str | None = None
    """A cpu list like "0-2,4"; None = the parent's."""
    cpuset_mems: str | None = None


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) -> cpu.weight (1..10000), runc's linear formula
    (opencontainers/cgroups ConvertCPUSharesToCgroupV2Value)."""
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """cpu.weight -> cpu.shares, the inverse of shares_to_weight.

    Rounded up (not down) so that weight -> shares -> weight is exact:
    flooring maps the default weight 100 to shares 2597, which maps back to 99.
    """
    return 2 + -(-((weight - 1) * 262142) // 9999)


def blkio_to_io_weight(weight: int) -> int:
    """Docker blkio weight (10..1000) -> v2 io.weight (1..10000), as runc does
    (ConvertBlkIOToIOWeightValue)."""
    return 1 + (weight - 10) * 9999 // 990


def io_to_blkio_weight(weight: int) -> int:
    """v2 io.weight -> Docker blkio weight; exact inverse of blkio_to_io_weight
    (that map is strictly increasing, so rounding up finds the preimage)."""
    return 10 + -(-((weight - 1) * 990) // 9999)


def swap_unlimited(swap_max: int | None) -> bool:
    """None and -1 both mean "no swap limit"."""
    return swap_max is None or swap_max == -1
