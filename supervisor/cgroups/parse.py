"""Pure parsers for cgroup files: one small `str -> value` function per format.

No I/O here; the backends read files and hand the text over.
"""

from __future__ import annotations

import contextlib

from .stats import IoDevice, Pressure

# "Unlimited" is spelled three ways by the kernel, and this is the one place
# that knows them:
#   - "max" in every v2 limit file and in v1 pids.max;
#   - "-1" in v1 cpu.cfs_quota_us (and what we write to v1 memory limits);
#   - v1 memory.limit_in_bytes / memsw.limit_in_bytes read back as
#     PAGE_COUNTER_MAX * PAGE_SIZE = LONG_MAX rounded down to a page
#     (9223372036854771712 with 4 KiB pages; other page sizes give other
#     values), so anything at or above 2**62 counts as unlimited: no machine
#     has 4 EiB of memory.
_V1_UNLIMITED_FLOOR = 1 << 62


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_limit(text: str) -> int | None:
    """A limit value: an int, or None for unlimited (see the table above)."""
    value = text.strip()
    if value == "max":
        return None
    number = int(value)
    if number < 0 or number >= _V1_UNLIMITED_FLOOR:
        return None
    return number


def format_limit_v2(value: int | None) -> str:
    return "max" if value is None else str(value)


def format_limit_v1(value: int | None) -> str:
    return "-1" if value is None else str(value)


def format_pids_max(value: int | None) -> str:
    """pids.max is "max" on both v1 and v2."""
    return "max" if value is None else str(value)


def parse_keyed(text: str) -> dict[str, int]:
    """Flat keyed files, one "key value" per line: memory.stat, cpu.stat,
    memory.events, cgroup.events, pids.events, memory.oom_control, cpuacct.stat.
    Lines that are not two fields are skipped."""
    tokens = text.split()
    if len(tokens) == 2 * text.count("\n"):
        # Every scrape parses a memory.stat (~40 lines) per container: pair
        # the tokens up at once when there are two per line (the kernel's
        # files always), ~30% faster than line by line.
        it = iter(tokens)
        with contextlib.suppress(ValueError):
            return dict(zip(it, map(int, it), strict=True))
    result: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[0]] = int(parts[1])
    return result


def parse_procs(text: str) -> list[int]:
    return [int(line) for line in text.split()]


def parse_count(text: str) -> int:
    """Number of entries in cgroup.procs / cgroup.threads (one id a line)."""
    return len(text.split())


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """v2 cpu.max: "QUOTA PERIOD" or "max PERIOD" -> (quota or None, period)."""
    quota, period = text.split()
    return parse_limit(quota), int(period)


def format_cpu_max(quota_us: int | None, period_us: int) -> str:
    return f"{format_limit_v2(quota_us)} {period_us}"


def parse_io_weight(text: str) -> int:
    """io.weight / io.bfq.weight / blkio.bfq.weight: "default N" followed by
    per-device "MAJ:MIN N" lines; or a bare "N" (v1 blkio.weight, and
    blkio.bfq.weight reads as a bare number). Returns the default weight."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 1:
            return int(parts[0])
        if len(parts) == 2 and parts[0] == "default":
            return int(parts[1])
    raise ValueError(f"no default weight in {text!r}")


def parse_io_stat(text: str) -> list[IoDevice]:
    """v2 io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0"."""
    devices: list[IoDevice] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        major, minor = (int(n) for n in parts[0].split(":"))
        fields = dict(part.split("=", 1) for part in parts[1:])

        def get(key: str, fields: dict[str, str] = fields) -> int | None:
            return int(fields[key]) if key in fields else None

        devices.append(
            IoDevice(major, minor, get("rbytes"), get("wbytes"), get("rios"), get("wios"))
        )
    return devices


def parse_blkio(service_bytes: str, serviced: str) -> list[IoDevice]:
    """v1 blkio.throttle.io_service_bytes_recursive + io_serviced_recursive:
    lines "8:0 Read 4096" (also Write, Sync, Async, Discard, Total) and a final
    "Total N" over all devices, which is skipped."""
    bytes_by_dev = _blkio_ops(service_bytes)
    ops_by_dev = _blkio_ops(serviced)
    devices: list[IoDevice] = []
    for dev in sorted(bytes_by_dev.keys() | ops_by_dev.keys()):
        b = bytes_by_dev.get(dev, {})
        o = ops_by_dev.get(dev, {})
        devices.append(
            IoDevice(dev[0], dev[1], b.get("Read"), b.get("Write"), o.get("Read"), o.get("Write"))
        )
    return devices


def _blkio_ops(text: str) -> dict[tuple[int, int], dict[str, int]]:
    result: dict[tuple[int, int], dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # "Total N" summary line
        major, minor = (int(n) for n in parts[0].split(":"))
        result.setdefault((major, minor), {})[parts[1]] = int(parts[2])
    return result


def parse_pressure(text: str) -> Pressure:
    """PSI: "some avg10=0.00 avg60=0.00 avg300=0.00 total=123" and, except in
    cpu.pressure before 5.13, a "full ..." line."""
    totals: dict[str, int] = {}
    with contextlib.suppress(ValueError):
        # The kernel's lines end in "total=N": the fast way (3 files per
        # container on every scrape), or the general one below.
        for line in text.splitlines():
            head, sep, total = line.rpartition(" total=")
            if sep:
                totals[head.partition(" ")[0]] = int(total)
        if "some" in totals:
            return Pressure(totals["some"], totals.get("full"))
    totals = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key == "total":
                totals[parts[0]] = int(value)
    if "some" not in totals:
        raise ValueError(f"no 'some' line in {text!r}")
    return Pressure(totals["some"], totals.get("full"))


def parse_freezer_state(text: str) -> str:
    """v1 freezer.state: THAWED, FREEZING or FROZEN."""
    return text.strip()


def parse_device_keys(text: str) -> frozenset[tuple[int, int]]:
    """The devices that have an entry in a per-device file: lines starting
    with "MAJ:MIN" (io.max, io.weight, blkio.throttle.*_device,
    blkio.bfq.weight_device); "default N" and blank lines are skipped."""
    devices: set[tuple[int, int]] = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            if major.isdigit() and minor.isdigit():
                devices.add((int(major), int(minor)))
    return frozenset(devices)


def parse_device_values(text: str) -> dict[tuple[int, int], int]:
    """ "MAJ:MIN N" lines (v1 blkio.throttle.*_device, per-device weights)."""
    result: dict[tuple[int, int], int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            if major.isdigit() and minor.isdigit():
                result[(int(major), int(minor))] = int(parts[1])
    return result


def parse_io_max(text: str) -> dict[tuple[int, int], dict[str, int | None]]:
    """v2 io.max: "8:16 rbps=2097152 wbps=max riops=max wiops=120" ->
    {(8, 16): {"rbps": 2097152, "wbps": None, "riops": None, "wiops": 120}}."""
    result: dict[tuple[int, int], dict[str, int | None]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        major, minor = (int(n) for n in parts[0].split(":"))
        values: dict[str, int | None] = {}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            values[key] = parse_limit(value)
        result[(major, minor)] = values
    return result


def format_io_max(
    major: int,
    minor: int,
    rbps: int | None,
    wbps: int | None,
    riops: int | None,
    wiops: int | None,
) -> str:
    """One io.max line; "max" for unlimited (all four "max" removes the entry)."""
    f = format_limit_v2
    return f"{major}:{minor} rbps={f(rbps)} wbps={f(wbps)} riops={f(riops)} wiops={f(wiops)}"


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel cpu/node list "0-3,5,7-8" -> {0,1,2,3,5,7,8}; "" -> empty.
    ValueError on anything else (the message is for the user)."""
    result: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text.strip()!r} is not a list like 0-3,5")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{part!r}: range goes backwards; write it as {last}-{first}")
        result.update(range(first, last + 1))
    return frozenset(result)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """{0,1,2,5} -> "0-2,5" (the kernel's own spelling)."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)
