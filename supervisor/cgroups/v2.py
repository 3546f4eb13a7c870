"""cgroup v2 (unified) backend: one hierarchy at the root, controllers enabled
top-down through cgroup.subtree_control. Mirrors v1.py function by function."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from supervisor.errors import KernelError
from supervisor.runtime.devices import DeviceRule

from . import _fs, devices, parse
from .limits import (
    BFQ_WEIGHT_DEFAULT,
    CPU_WEIGHT_DEFAULT,
    IO_WEIGHT_DEFAULT,
    DeviceWeight,
    IoThrottle,
    Limits,
    blkio_to_io_weight,
    io_to_blkio_weight,
    shares_to_weight,
    swap_unlimited,
    weight_to_shares,
)
from .manager import Layout
from .stats import Stats

# Controllers nsvisor limits. cpuset on v2 needs no initialisation (an empty
# cpuset.cpus means "the parent's"), so it is enabled like the others.
CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")

# Files whose lines are per device; create()/update() read which devices have
# an entry now, so that a device no longer in Limits is reset (declarative).
DEVICE_FILES = ("io.max", "io.weight", "io.bfq.weight")

_SWAP_MISSING = (
    "swap accounting is off (kernel without CONFIG_MEMCG_SWAP, or booted with swapaccount=0)"
)
_IO_MISSING = "the io controller has no weight support on this device/scheduler"
_IO_MAX_MISSING = "the io controller has no io.max (kernel without CONFIG_BLK_DEV_THROTTLING)"


def plan(
    limits: Limits,
    files: set[str],
    now: Mapping[str, frozenset[tuple[int, int]]] | None = None,
) -> list[_fs.Write]:
    """The writes that apply `limits`. `files` are the names in the cgroup
    directory (to choose between io.weight and io.bfq.weight); `now` maps
    each per-device file (DEVICE_FILES) to the devices it has entries for,
    which are reset when `limits` no longer names them. Pure."""
    now = now or {}
    if limits.oom_kill_disable:
        raise KernelError(
            "oom_kill_disable is not supported on cgroup v2 (there is no memory.oom_control; "
            "the kernel always OOM-kills above memory.max); remove --oom-kill-disable, "
            "or use --memory-high to throttle before the limit",
            errno=errno.EINVAL,
        )
    writes = [
        _fs.Write(
            "memory",
            "memory.max",
            parse.format_limit_v2(limits.memory_max),
            "memory_max",
            required=limits.memory_max is not None,
        ),
        _fs.Write(
            "memory",
            "memory.swap.max",
            parse.format_limit_v2(None if swap_unlimited(limits.swap_max) else limits.swap_max),
            "swap_max",
            required=not swap_unlimited(limits.swap_max),
            missing_hint=_SWAP_MISSING,
        ),
        _fs.Write(
            "cpu",
            "cpu.max",
            parse.format_cpu_max(limits.cpu_quota_us, limits.cpu_period_us),
            "cpu_quota_us",
            required=limits.cpu_quota_us is not None,
        ),
    ]
    # cpu.weight is native here; cpu_shares is converted only when no weight is given.
    if limits.cpu_weight is not None:
        weight, field = limits.cpu_weight, "cpu_weight"
    elif limits.cpu_shares is not None:
        weight, field = shares_to_weight(limits.cpu_shares), "cpu_shares"
    else:
        weight, field = CPU_WEIGHT_DEFAULT, "cpu_weight"
    required = limits.cpu_weight is not None or limits.cpu_shares is not None
    writes.append(_fs.Write("cpu", "cpu.weight", str(weight), field, required))
    writes.append(
        _fs.Write(
            "pids",
            "pids.max",
            parse.format_pids_max(limits.pids_max),
            "pids_max",
            required=limits.pids_max is not None,
        )
    )
    # io.weight belongs to the iocost controller; io.bfq.weight to the BFQ
    # scheduler. Prefer io.weight (like the brief and cAdvisor's readers), fall
    # back to BFQ, which takes Docker's 10..1000 units unconverted.
    w = limits.io_weight
    if "io.weight" not in files and "io.bfq.weight" in files:
        value = str(BFQ_WEIGHT_DEFAULT if w is None else w)
        writes.append(
            _fs.Write("io", "io.bfq.weight", value, "io_weight", w is not None, _IO_MISSING)
        )
    else:
        value = f"default {IO_WEIGHT_DEFAULT if w is None else blkio_to_io_weight(w)}"
        writes.append(_fs.Write("io", "io.weight", value, "io_weight", w is not None, _IO_MISSING))
    writes += _memory_extra_writes(limits)
    writes += _cpuset_writes(limits)
    writes += _io_device_writes(limits, files, now)
    return writes


def _memory_extra_writes(limits: Limits) -> list[_fs.Write]:
    low = limits.memory_low
    return [
        # memory.low defaults to 0 (no protection), memory.high to "max".
        _fs.Write("memory", "memory.low", str(low or 0), "memory_low", low is not None),
        _fs.Write(
            "memory",
            "memory.high",
            parse.format_limit_v2(limits.memory_high),
            "memory_high",
            limits.memory_high is not None,
        ),
        # memory.oom.group exists since 4.19.
        _fs.Write(
            "memory",
            "memory.oom.group",
            "1" if limits.oom_group else "0",
            "oom_group",
            limits.oom_group,
            "memory.oom.group needs Linux 4.19 or newer",
        ),
    ]


def _cpuset_writes(limits: Limits) -> list[_fs.Write]:
    # An empty cpuset.cpus/mems on v2 means "use the parent's": the reset
    # value. Written as "\n": a zero-length write() never reaches the cgroup
    # file's handler (measured on 6.1: the old cpus stayed in force).
    return [
        _fs.Write(
            "cpuset",
            "cpuset.cpus",
            limits.cpuset_cpus or "\n",
            "cpuset_cpus",
            limits.cpuset_cpus is not None,
        ),
        _fs.Write(
            "cpuset",
            "cpuset.mems",
            limits.cpuset_mems or "\n",
            "cpuset_mems",
            limits.cpuset_mems is not None,
        ),
    ]


def _io_device_writes(
    limits: Limits, files: set[str], now: Mapping[str, frozenset[tuple[int, int]]]
) -> list[_fs.Write]:
    writes: list[_fs.Write] = []
    wanted = {(t.major, t.minor) for t in limits.io_throttle}
    for t in limits.io_throttle:
        value = parse.format_io_max(
            t.major, t.minor, t.read_bps, t.write_bps, t.read_iops, t.write_iops
        )
        writes.append(_fs.Write("io", "io.max", value, "io_throttle", True, _IO_MAX_MISSING))
    for major, minor in sorted(now.get("io.max", frozenset()) - wanted):
        value = parse.format_io_max(major, minor, None, None, None, None)
        writes.append(_fs.Write("io", "io.max", value, "io_throttle", False))
    bfq = "io.weight" not in files and "io.bfq.weight" in files
    weight_file = "io.bfq.weight" if bfq else "io.weight"
    wanted = {(d.major, d.minor) for d in limits.io_weight_devices}
    for d in limits.io_weight_devices:
        w = d.weight if bfq else blkio_to_io_weight(d.weight)
        writes.append(
            _fs.Write(
                "io",
                weight_file,
                f"{d.major}:{d.minor} {w}",
                "io_weight_devices",
                True,
                _IO_MISSING,
            )
        )
    for major, minor in sorted(now.get(weight_file, frozenset()) - wanted):
        # "MAJ:MIN default" drops the device's own weight (iocost and BFQ alike).
        value = f"{major}:{minor} default"
        writes.append(_fs.Write("io", weight_file, value, "io_weight_devices", False))
    return writes


class V2Manager:
    """CgroupManager for a pure cgroup v2 host.

    use_cgroup_kill=False makes kill() take the cgroup.freeze path of kernels
    before 5.14 (tests use it to exercise that path on a new kernel)."""

    layout: Layout = "v2"

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        parent: str = "nsvisor",
        *,
        use_cgroup_kill: bool = True,
        stat_fds: int = 0,
    ) -> None:
        _fs.validate_name(parent, "cgroup parent")
        self.root = root
        self.parent = parent
        self.use_cgroup_kill = use_cgroup_kill
        self.stat_files = _fs.StatFiles(stat_fds)
        self._spec: _fs.SpecCache[_Spec] = _fs.SpecCache()
        self._stat_paths: dict[str, _StatPaths] = {}

    def _dir(self, name: str) -> str:
        _fs.validate_name(name)
        return os.path.join(self.root, self.parent, name)

    # --- limits -----------------------------------------------------------

    def set_devices(self, name: str, rules: Sequence[DeviceRule]) -> None:
        """v2 has no devices controller: a BPF_PROG_TYPE_CGROUP_DEVICE program
        (supervisor.cgroups.devices), attached before any process joins."""
        devices.apply_v2(self._dir(name), rules)

    def create(self, name: str, limits: Limits) -> None:
        target = self._dir(name)
        self._forget(name)
        created: list[str] = []
        try:
            directory = self.root
            for component in f"{self.parent}/{name}".split("/"):
                self._enable_controllers(directory)
                directory = os.path.join(directory, component)
                _fs.mkdirs(directory, os.path.dirname(directory), created)
            self._apply(target, limits)
        except BaseException:
            # Undo only our mkdirs. Controllers we enabled in a pre-existing
            # cgroup's subtree_control stay: disabling them could take them
            # away from cgroups that are not ours.
            for d in reversed(created):
                with contextlib.suppress(KernelError):
                    _fs.rmdir_retry(d)
            raise
        finally:  # after the writes: a scrape meanwhile may have read the old values
            self._spec.invalidate(name)

    def update(self, name: str, limits: Limits) -> None:
        target = self._dir(name)
        if not os.path.isdir(target):
            raise KernelError(
                f"cgroup {target} does not exist; create() it first",
                errno=errno.ENOENT,
                path=target,
            )
        try:
            self._apply(target, limits)
        finally:  # after the writes: a scrape meanwhile may have read the old values
            self._spec.invalidate(name)

    def _apply(self, target: str, limits: Limits) -> None:
        subtree = os.path.join(os.path.dirname(target), "cgroup.subtree_control")
        files = set(os.listdir(target))
        now: dict[str, frozenset[tuple[int, int]]] = {}
        for f in DEVICE_FILES:
            if f in files:
                try:
                    now[f] = parse.parse_device_keys(_fs.read_text(_j(target, f)))
                except OSError as e:
                    raise _fs.io_error(_j(target, f), e, "read", "run as root") from e
        for w in plan(limits, files, now):
            hint = f"the {w.controller} controller is not enabled in {subtree}; enable it"
            _fs.apply_write(target, w if w.missing_hint else _with_hint(w, hint))

    def _enable_controllers(self, directory: str) -> None:
        """Enable our controllers for the children of `directory`, writing only
        what is available there and not yet enabled (no write at all otherwise,
        so a root we do not own is left alone when it is already set up)."""
        try:
            available = _fs.read_text(os.path.join(directory, "cgroup.controllers")).split()
            enabled = _fs.read_text(os.path.join(directory, "cgroup.subtree_control")).split()
        except OSError as e:
            raise _fs.io_error(
                directory, e, "read controllers of", "is cgroup2 mounted here?"
            ) from e
        wanted = [c for c in CONTROLLERS if c in available and c not in enabled]
        if not wanted:
            return
        path = os.path.join(directory, "cgroup.subtree_control")
        try:
            _fs.write_text(path, " ".join(f"+{c}" for c in wanted))
        except OSError as e:
            fix = (
                "the cgroup has processes of its own (no internal processes rule); move them to a leaf cgroup"
                if e.errno == errno.EBUSY
                else "run as root or delegate this subtree"
            )
            raise _fs.io_error(path, e, f"enable {' '.join(wanted)} in", fix) from e

    def read_limits(self, name: str) -> Limits:
        target = self._require(name)
        r = _fs.StatReader()
        quota, period = r.read(_j(target, "cpu.max"), parse.parse_cpu_max) or (None, 100_000)
        io_weight = r.read(_j(target, "io.weight"), parse.parse_io_weight, optional=True)
        bfq = r.read(_j(target, "io.bfq.weight"), parse.parse_io_weight, optional=True)
        io_max = r.read(_j(target, "io.max"), parse.parse_io_max, optional=True) or {}
        if io_weight is not None:
            per_dev = r.read(_j(target, "io.weight"), parse.parse_device_values) or {}
            devices = tuple(
                DeviceWeight(mj, mn, io_to_blkio_weight(w))
                for (mj, mn), w in sorted(per_dev.items())
            )
        else:
            per_dev = r.read(_j(target, "io.bfq.weight"), parse.parse_device_values, True) or {}
            devices = tuple(DeviceWeight(mj, mn, w) for (mj, mn), w in sorted(per_dev.items()))
        cpus = r.read(_j(target, "cpuset.cpus"), str.strip, optional=True)
        mems = r.read(_j(target, "cpuset.mems"), str.strip, optional=True)
        return Limits(
            memory_max=r.read(_j(target, "memory.max"), parse.parse_limit),
            swap_max=r.read(_j(target, "memory.swap.max"), parse.parse_limit, optional=True),
            cpu_quota_us=quota,
            cpu_period_us=period,
            cpu_weight=r.read(_j(target, "cpu.weight"), parse.parse_int),
            pids_max=r.read(_j(target, "pids.max"), parse.parse_limit),
            io_weight=io_to_blkio_weight(io_weight) if io_weight is not None else bfq,
            io_weight_devices=devices,
            io_throttle=tuple(
                IoThrottle(mj, mn, v.get("rbps"), v.get("wbps"), v.get("riops"), v.get("wiops"))
                for (mj, mn), v in sorted(io_max.items())
            ),
            memory_low=r.read(_j(target, "memory.low"), parse.parse_limit, optional=True) or None,
            memory_high=r.read(_j(target, "memory.high"), parse.parse_limit, optional=True),
            oom_group=r.read(_j(target, "memory.oom.group"), parse.parse_int, optional=True) == 1,
            cpuset_cpus=cpus or None,
            cpuset_mems=mems or None,
        )

    def _require(self, name: str) -> str:
        target = self._dir(name)
        if not os.path.isdir(target):
            raise KernelError(f"cgroup {target} does not exist", errno=errno.ENOENT, path=target)
        return target

    # --- membership -------------------------------------------------------

    def procs_files(self, name: str) -> list[str]:
        return [_j(self._dir(name), "cgroup.procs")]

    def path(self, name: str) -> str:
        _fs.validate_name(name)
        return f"/{self.parent}/{name}"

    def pids(self, name: str) -> list[int]:
        return sorted(_fs.read_procs_tree(self._dir(name)))

    def populated(self, name: str) -> bool:
        try:
            events = parse.parse_keyed(_fs.read_text(_j(self._dir(name), "cgroup.events")))
        except FileNotFoundError:
            return False
        return events.get("populated", 0) == 1

    def events_file(self, name: str) -> str | None:
        return _j(self._dir(name), "cgroup.events")

    # --- kill and remove ----------------------------------------------------

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        target = self._dir(name)
        if not os.path.isdir(target):
            return
        deadline = time.monotonic() + timeout_s
        kill_file = _j(target, "cgroup.kill")
        if self.use_cgroup_kill and os.path.exists(kill_file):  # since 5.14
            try:
                _fs.write_text(kill_file, "1")
            except FileNotFoundError:
                return  # removed meanwhile
            except OSError as e:
                raise _fs.io_error(kill_file, e, "write 1 to", "run as root") from e
            if _fs.wait_for(lambda: not self.populated(name), deadline):
                return
        freeze_file = _j(target, "cgroup.freeze")  # since 5.2
        has_freeze = os.path.exists(freeze_file)
        _fs.freeze_kill_loop(
            list_pids=lambda: self.pids(name),
            freeze=(lambda: _fs.write_text(freeze_file, "1")) if has_freeze else None,
            is_frozen=lambda: _fs.read_keyed(_j(target, "cgroup.events")).get("frozen") == 1,
            thaw=lambda: _fs.write_text(freeze_file, "0"),
            deadline=deadline,
            what=target,
        )

    def remove(self, name: str) -> None:
        self._forget(name)
        _fs.rmdir_tree(self._dir(name))

    def remove_parent(self) -> None:
        self.stat_files.close_under(os.path.join(self.root, self.parent))
        _fs.rmdir_tree(os.path.join(self.root, self.parent))

    def spec_generation(self, name: str) -> int:
        return self._spec.generation(name)

    def invalidate_spec(self, name: str) -> None:
        self._spec.invalidate(name)

    def forget(self, name: str) -> None:
        self._forget(name)

    def _forget(self, name: str) -> None:
        """Drop what stats() keeps for the cgroup: its open files and its
        cached limits (create() may make it anew, remove() ends it)."""
        self._spec.invalidate(name)
        self._stat_paths.pop(name, None)
        self.stat_files.close_under(self._dir(name))

    def close(self) -> None:
        self.stat_files.close()

    # --- stats --------------------------------------------------------------

    def oom_kill_file(self, name: str) -> str | None:
        return _j(self._dir(name), "memory.events")

    def oom_kill_count(self, name: str) -> int | None:
        return self.memory_events(name).get("oom_kill")

    def memory_events(self, name: str) -> dict[str, int]:
        return _fs.read_keyed(_j(self._dir(name), "memory.events"))

    def stats(self, name: str) -> Stats:
        p = self._stat_paths.get(name) or self._make_stat_paths(name)
        r = _fs.StatReader(self.stat_files)
        cpu = r.read(p.cpu_stat, parse.parse_keyed) or {}
        mem = r.read(p.memory_stat, parse.parse_keyed) or {}
        usage = r.read(p.memory_current, parse.parse_int)
        spec = self._spec.get(name, functools.partial(_read_spec, p), r)
        return Stats(
            cpu_usage_ns=_usec_to_ns(cpu.get("usage_usec")),
            cpu_user_ns=_usec_to_ns(cpu.get("user_usec")),
            cpu_system_ns=_usec_to_ns(cpu.get("system_usec")),
            # Throttling keys appear only with the cpu controller enabled.
            cpu_periods=cpu.get("nr_periods"),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_ns=_usec_to_ns(cpu.get("throttled_usec")),
            memory_usage=usage,
            # memory.peak exists since 5.19.
            memory_max_usage=r.read(p.memory_peak, parse.parse_int, optional=True),
            memory_limit=spec.memory_limit,
            # memory.swap.* exist only with swap accounting compiled in and on.
            memory_swap_usage=r.read(p.swap_current, parse.parse_int, optional=True),
            memory_swap_limit=spec.swap_limit,
            memory_reservation=spec.memory_reservation,
            memory_high=spec.memory_high,
            memory_rss=mem.get("anon"),
            memory_cache=mem.get("file"),
            memory_mapped_file=mem.get("file_mapped"),
            memory_inactive_file=mem.get("inactive_file"),
            memory_failcnt=None,  # v1 only
            memory_events=r.read(p.memory_events, parse.parse_keyed),
            # memory.stat is hierarchical on v2: one number for both scopes.
            memory_pgfault=mem.get("pgfault"),
            memory_pgmajfault=mem.get("pgmajfault"),
            memory_pgfault_hierarchy=mem.get("pgfault"),
            memory_pgmajfault_hierarchy=mem.get("pgmajfault"),
            # v2 cgroup.procs restarts its task iterator on a read at offset
            # 0 (cgroup_procs_start), so a kept fd is fresh (kernel test).
            processes=r.read(p.procs, parse.parse_count),
            pids_current=r.read(p.pids_current, parse.parse_int),
            pids_max=spec.pids_max,
            io=r.read(p.io_stat, parse.parse_io_stat),
            pressure=_fs.read_pressure(r, p.directory),
            cpu_quota_us=spec.cpu_quota_us,
            cpu_period_us=spec.cpu_period_us,
            # Derived for cAdvisor's container_spec_cpu_shares, which v2 hosts
            # also export (cAdvisor converts the same way).
            cpu_shares=_weight_to_shares_or_none(spec.cpu_weight),
            cpu_weight=spec.cpu_weight,
            errors=r.errors,
        )

    def _make_stat_paths(self, name: str) -> _StatPaths:
        d = self._dir(name)
        p = _StatPaths(
            directory=d,
            cpu_stat=_j(d, "cpu.stat"),
            memory_stat=_j(d, "memory.stat"),
            memory_current=_j(d, "memory.current"),
            memory_peak=_j(d, "memory.peak"),
            swap_current=_j(d, "memory.swap.current"),
            memory_events=_j(d, "memory.events"),
            procs=_j(d, "cgroup.procs"),
            pids_current=_j(d, "pids.current"),
            io_stat=_j(d, "io.stat"),
            cpu_max=_j(d, "cpu.max"),
            cpu_weight=_j(d, "cpu.weight"),
            memory_max=_j(d, "memory.max"),
            swap_max=_j(d, "memory.swap.max"),
            memory_low=_j(d, "memory.low"),
            memory_high=_j(d, "memory.high"),
            pids_max=_j(d, "pids.max"),
        )
        self._stat_paths[name] = p
        return p


@dataclass(frozen=True)
class _StatPaths:
    """The files stats() reads for one cgroup."""

    directory: str
    cpu_stat: str
    memory_stat: str
    memory_current: str
    memory_peak: str
    swap_current: str
    memory_events: str
    procs: str
    pids_current: str
    io_stat: str
    cpu_max: str
    cpu_weight: str
    memory_max: str
    swap_max: str
    memory_low: str
    memory_high: str
    pids_max: str


@dataclass(frozen=True)
class _Spec:
    """The limit files of one cgroup, as stats() reports them (SpecCache)."""

    memory_limit: int | None
    swap_limit: int | None
    memory_reservation: int | None
    memory_high: int | None
    cpu_quota_us: int | None
    cpu_period_us: int | None
    cpu_weight: int | None
    pids_max: int | None


def _read_spec(p: _StatPaths, r: _fs.StatReader) -> _Spec:
    cpu_max = r.read(p.cpu_max, parse.parse_cpu_max)
    return _Spec(
        memory_limit=r.read(p.memory_max, parse.parse_limit),
        swap_limit=r.read(p.swap_max, parse.parse_limit, optional=True),
        # 0 is "no protection": reported as unset, like an unlimited limit.
        memory_reservation=r.read(p.memory_low, parse.parse_limit, optional=True) or None,
        memory_high=r.read(p.memory_high, parse.parse_limit, optional=True),
        cpu_quota_us=cpu_max[0] if cpu_max else None,
        cpu_period_us=cpu_max[1] if cpu_max else None,
        cpu_weight=r.read(p.cpu_weight, parse.parse_int),
        pids_max=r.read(p.pids_max, parse.parse_limit),
    )


def _weight_to_shares_or_none(weight: int | None) -> int | None:
    return None if weight is None else weight_to_shares(weight)


def _with_hint(w: _fs.Write, hint: str) -> _fs.Write:
    return _fs.Write(w.controller, w.file, w.value, w.field, w.required, hint)


def _usec_to_ns(value: int | None) -> int | None:
    return None if value is None else value * 1000


def _j(directory: str, file: str) -> str:
    return os.path.join(directory, file)
