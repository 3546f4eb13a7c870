"""cgroup v1 / hybrid backend: one hierarchy per controller (cpu, cpuacct,
memory, pids, blkio, freezer, possibly co-mounted like "cpu,cpuacct"), plus
the empty cgroup2 hierarchy at root/unified where it is mounted, used for
cgroup.kill, cgroup.events and the PSI files. Mirrors v2.py function by function."""

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
    BLKIO_WEIGHT_DEFAULT,
    CPU_SHARES_DEFAULT,
    DeviceWeight,
    IoThrottle,
    Limits,
    shares_to_weight,
    swap_unlimited,
    weight_to_shares,
)
from .manager import Layout
from .stats import Stats

# The v1 controllers nsvisor uses. cpuset is joined too: a new v1 cpuset
# starts with empty cpus/mems, which no task may join, so create() copies the
# parent's values down first (what cgroup.clone_children would do, without
# changing a flag on a cgroup we did not create). devices carries the device
# policy (set_devices), not a Limits field.
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer", "devices")

# blkio.throttle files: Limits field of IoThrottle -> file.
THROTTLE_FILES = (
    ("read_bps", "blkio.throttle.read_bps_device"),
    ("write_bps", "blkio.throttle.write_bps_device"),
    ("read_iops", "blkio.throttle.read_iops_device"),
    ("write_iops", "blkio.throttle.write_iops_device"),
)
# Per-device files: create()/update() read which devices have an entry now so
# a device no longer in Limits is reset (declarative, like v2's io.max).
DEVICE_FILES = (
    *(f for _, f in THROTTLE_FILES),
    "blkio.bfq.weight_device",
    "blkio.weight_device",
)

_MEMSW = "memory.memsw.limit_in_bytes"
_SWAP_MISSING = "swap accounting is off (boot with swapaccount=1)"
_IO_MISSING = (
    "the io controller has no weight support on this device/scheduler "
    "(blkio.weight needs CFQ, gone since 5.0; blkio.bfq.weight needs the BFQ scheduler)"
)
_THROTTLE_MISSING = (
    "the blkio controller has no throttling (kernel without CONFIG_BLK_DEV_THROTTLING)"
)


def find_hierarchies(root: str) -> dict[str, str]:
    """controller -> hierarchy directory, from the directory names under root.

    Handles separate mounts ("cpu", "cpuacct") and co-mounts ("cpu,cpuacct",
    often with "cpu" and "cpuacct" symlinks to it): symlinks are resolved so a
    co-mounted hierarchy is used once."""
    result: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return result
    for entry in entries:
        full = os.path.join(root, entry)
        if entry == "unified" or not os.path.isdir(full):
            continue
        real = os.path.realpath(full)
        for controller in os.path.basename(real).split(","):
            if controller in CONTROLLERS:
                result.setdefault(controller, real)
    return result


def plan(
    limits: Limits,
    files: set[str],
    current_memsw: int | None,
    now: Mapping[str, frozenset[tuple[int, int]]] | None = None,
    cpuset_parent: Mapping[str, str] | None = None,
) -> list[_fs.Write]:
    """The writes that apply `limits`, in order. `files` are the names in the
    cgroup's hierarchy directories (memsw and weight files are optional);
    `current_memsw` the memsw limit now (None = unlimited); `now` maps each
    per-device file (DEVICE_FILES) to the devices it has entries for;
    `cpuset_parent` the parent's cpuset.cpus/cpuset.mems, the values a None
    cpuset field resets to (v1 has no "inherit"). Pure."""
    for wanted, field, fix in (
        (limits.memory_high is not None, "memory_high", "use --memory (a hard limit)"),
        (limits.oom_group, "oom_group", "without it the OOM killer picks single processes"),
    ):
        if wanted:
            raise KernelError(
                f"{field} needs cgroup v2 (this host runs the v1/hybrid layout, which has "
                f"no counterpart); remove --{field.replace('_', '-')}: {fix}",
                errno=errno.EINVAL,
            )
    if not swap_unlimited(limits.swap_max) and limits.memory_max is None:
        raise KernelError(
            "swap_max without memory_max cannot be expressed on cgroup v1 "
            f"({_MEMSW} limits memory+swap); set memory_max too or remove swap_max",
            errno=errno.EINVAL,
        )
    mem = _fs.Write(
        "memory",
        "memory.limit_in_bytes",
        parse.format_limit_v1(limits.memory_max),
        "memory_max",
        required=limits.memory_max is not None,
    )
    writes = [mem]
    memsw_target: int | None = None
    if limits.memory_max is not None and not swap_unlimited(limits.swap_max):
        assert limits.swap_max is not None
        memsw_target = limits.memory_max + limits.swap_max
    if _MEMSW in files or memsw_target is not None:
        memsw = _fs.Write(
            "memory",
            _MEMSW,
            parse.format_limit_v1(memsw_target),
            "swap_max",
            required=memsw_target is not None,
            missing_hint=_SWAP_MISSING,
        )
        # The kernel keeps memory.limit <= memsw.limit at every step, so raise
        # memsw first when the new memory limit is above the current memsw.
        writes = [memsw, mem] if _above(limits.memory_max, current_memsw) else [mem, memsw]
    writes += [
        _fs.Write(
            "cpu", "cpu.cfs_period_us", str(limits.cpu_period_us), "cpu_period_us", required=False
        ),
        _fs.Write(
            "cpu",
            "cpu.cfs_quota_us",
            parse.format_limit_v1(limits.cpu_quota_us),
            "cpu_quota_us",
            required=limits.cpu_quota_us is not None,
        ),
    ]
    if limits.cpu_quota_us is not None:
        # With a quota the period matters: its file must exist too.
        writes[-2] = _fs.Write(
            "cpu", "cpu.cfs_period_us", str(limits.cpu_period_us), "cpu_period_us", True
        )
    # cpu.shares is native here; cpu_weight is converted only without shares.
    if limits.cpu_shares is not None:
        shares, field = limits.cpu_shares, "cpu_shares"
    elif limits.cpu_weight is not None:
        shares, field = weight_to_shares(limits.cpu_weight), "cpu_weight"
    else:
        shares, field = CPU_SHARES_DEFAULT, "cpu_shares"
    required = limits.cpu_shares is not None or limits.cpu_weight is not None
    writes.append(_fs.Write("cpu", "cpu.shares", str(shares), field, required))
    writes.append(
        _fs.Write(
            "pids",
            "pids.max",
            parse.format_pids_max(limits.pids_max),
            "pids_max",
            required=limits.pids_max is not None,
        )
    )
    # blkio.weight (CFQ) and blkio.bfq.weight both take Docker's 10..1000 units.
    w = limits.io_weight
    if "blkio.weight" not in files and "blkio.bfq.weight" in files:
        value = str(BFQ_WEIGHT_DEFAULT if w is None else w)
        writes.append(
            _fs.Write("blkio", "blkio.bfq.weight", value, "io_weight", w is not None, _IO_MISSING)
        )
    else:
        value = str(BLKIO_WEIGHT_DEFAULT if w is None else w)
        writes.append(
            _fs.Write("blkio", "blkio.weight", value, "io_weight", w is not None, _IO_MISSING)
        )
    writes += _memory_extra_writes(limits)
    writes += _cpuset_writes(limits, cpuset_parent or {})
    writes += _blkio_device_writes(limits, files, now or {})
    return writes


def _memory_extra_writes(limits: Limits) -> list[_fs.Write]:
    return [
        _fs.Write(
            "memory",
            "memory.soft_limit_in_bytes",
            parse.format_limit_v1(limits.memory_low),
            "memory_low",
            limits.memory_low is not None,
        ),
        # Writing 1 stops the OOM killer for this cgroup: tasks that hit the
        # limit wait in the kernel until memory is freed or the limit raised.
        _fs.Write(
            "memory",
            "memory.oom_control",
            "1" if limits.oom_kill_disable else "0",
            "oom_kill_disable",
            limits.oom_kill_disable,
        ),
    ]


def _cpuset_writes(limits: Limits, parent: Mapping[str, str]) -> list[_fs.Write]:
    writes: list[_fs.Write] = []
    for file, value, field in (
        ("cpuset.cpus", limits.cpuset_cpus, "cpuset_cpus"),
        ("cpuset.mems", limits.cpuset_mems, "cpuset_mems"),
    ):
        if value is not None:
            writes.append(_fs.Write("cpuset", file, value, field, True))
        elif parent.get(file):
            writes.append(_fs.Write("cpuset", file, parent[file], field, False))
    return writes


def _blkio_device_writes(
    limits: Limits, files: set[str], now: Mapping[str, frozenset[tuple[int, int]]]
) -> list[_fs.Write]:
    writes: list[_fs.Write] = []
    for attr, file in THROTTLE_FILES:
        values: dict[tuple[int, int], int | None] = {
            (t.major, t.minor): getattr(t, attr) for t in limits.io_throttle
        }
        for dev in sorted(values.keys() | now.get(file, frozenset())):
            value = values.get(dev)
            if value is None and dev not in now.get(file, frozenset()):
                continue  # nothing to set, nothing to reset
            # "MAJ:MIN 0" removes the device's rule.
            writes.append(
                _fs.Write(
                    "blkio",
                    file,
                    f"{dev[0]}:{dev[1]} {value or 0}",
                    "io_throttle",
                    value is not None,
                    _THROTTLE_MISSING,
                )
            )
    bfq = "blkio.weight_device" not in files and "blkio.bfq.weight_device" in files
    weight_file = "blkio.bfq.weight_device" if bfq else "blkio.weight_device"
    wanted = {(d.major, d.minor) for d in limits.io_weight_devices}
    for d in limits.io_weight_devices:
        writes.append(
            _fs.Write(
                "blkio",
                weight_file,
                f"{d.major}:{d.minor} {d.weight}",
                "io_weight_devices",
                True,
                _IO_MISSING,
            )
        )
    for major, minor in sorted(now.get(weight_file, frozenset()) - wanted):
        # BFQ drops a device's own weight on "default"; CFQ on 0.
        reset = "default" if bfq else "0"
        writes.append(
            _fs.Write("blkio", weight_file, f"{major}:{minor} {reset}", "io_weight_devices", False)
        )
    return writes


def _above(a: int | None, b: int | None) -> bool:
    """a > b where None is unlimited."""
    if a is None:
        return b is not None
    return b is not None and a > b


class V1Manager:
    """CgroupManager for a v1 or hybrid host.

    use_unified=False ignores root/unified even when mounted: no cgroup.kill,
    no cgroup.events, no PSI. Tests use it to exercise the freezer kill path."""

    layout: Layout = "hybrid"

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        parent: str = "nsvisor",
        *,
        use_unified: bool = True,
        stat_fds: int = 0,
    ) -> None:
        _fs.validate_name(parent, "cgroup parent")
        self.root = root
        self.parent = parent
        self.stat_files = _fs.StatFiles(stat_fds)
        self._spec: _fs.SpecCache[_Spec] = _fs.SpecCache()
        self._stat_paths: dict[str, _StatPaths] = {}
        self.hierarchies = find_hierarchies(root)
        unified = os.path.join(root, "unified")
        self.unified: str | None = (
            unified
            if use_unified and os.path.exists(os.path.join(unified, "cgroup.procs"))
            else None
        )
        if not self.hierarchies and self.unified is None:
            raise KernelError(
                f"no cgroup hierarchies under {root}: mount cgroup v1 controllers or cgroup2 there",
                errno=errno.ENOENT,
                path=root,
            )

    def _bases(self) -> list[str]:
        """Every hierarchy directory once (co-mounts deduplicated), unified last."""
        bases = list(dict.fromkeys(self.hierarchies.values()))
        if self.unified is not None:
            bases.append(self.unified)
        return bases

    def _dirs(self, name: str) -> list[str]:
        _fs.validate_name(name)
        return [os.path.join(base, self.parent, name) for base in self._bases()]

    def _ctl(self, controller: str, name: str) -> str | None:
        """The cgroup's directory in one controller's hierarchy, None if not mounted."""
        _fs.validate_name(name)
        base = self.hierarchies.get(controller)
        return None if base is None else os.path.join(base, self.parent, name)

    def _unified_dir(self, name: str) -> str | None:
        _fs.validate_name(name)
        return None if self.unified is None else os.path.join(self.unified, self.parent, name)

    # --- limits -----------------------------------------------------------

    def create(self, name: str, limits: Limits) -> None:
        self._forget(name)
        created: list[str] = []
        try:
            for base, directory in zip(self._bases(), self._dirs(name), strict=True):
                _fs.mkdirs(directory, base, created)
            self._init_cpuset(name)
            self._apply(name, limits)
        except BaseException:
            for d in reversed(created):
                with contextlib.suppress(KernelError):
                    _fs.rmdir_retry(d)
            raise
        finally:  # after the writes: a scrape meanwhile may have read the old values
            self._spec.invalidate(name)

    def update(self, name: str, limits: Limits) -> None:
        # A cgroup made before cpuset was joined (live restore across an
        # upgrade) has no cpuset directory: that is not an error unless a
        # cpuset limit is asked for (then the write reports the missing file).
        cpuset = self._ctl("cpuset", name)
        missing = [d for d in self._dirs(name) if not os.path.isdir(d) and d != cpuset]
        if missing:
            raise KernelError(
                f"cgroup {missing[0]} does not exist; create() it first",
                errno=errno.ENOENT,
                path=missing[0],
            )
        try:
            self._apply(name, limits)
        finally:  # after the writes: a scrape meanwhile may have read the old values
            self._spec.invalidate(name)

    def _apply(self, name: str, limits: Limits) -> None:
        files: set[str] = set()
        for controller in ("memory", "cpu", "pids", "blkio", "cpuset"):
            d = self._ctl(controller, name)
            if d is not None and os.path.isdir(d):
                files.update(os.listdir(d))
        now: dict[str, frozenset[tuple[int, int]]] = {}
        blkio = self._ctl("blkio", name)
        for f in DEVICE_FILES:
            if blkio is not None and f in files:
                try:
                    now[f] = parse.parse_device_keys(_fs.read_text(os.path.join(blkio, f)))
                except OSError as e:
                    raise _fs.io_error(os.path.join(blkio, f), e, "read", "run as root") from e
        cpuset_parent = self._cpuset_parent(name)
        memory = self._ctl("memory", name)
        current_memsw = None
        if memory is not None and _MEMSW in files:
            try:
                current_memsw = parse.parse_limit(_fs.read_text(os.path.join(memory, _MEMSW)))
            except OSError as e:
                raise _fs.io_error(os.path.join(memory, _MEMSW), e, "read", "run as root") from e
        for w in plan(limits, files, current_memsw, now, cpuset_parent):
            directory = self._ctl(w.controller, name)
            if directory is None:
                if w.required:
                    raise KernelError(
                        f"the {w.controller} controller is not mounted at "
                        f"{os.path.join(self.root, w.controller)}; mount it or remove {w.field}",
                        errno=errno.ENOENT,
                        path=os.path.join(self.root, w.controller),
                    )
                continue
            _fs.apply_write(directory, w)

    def _cpuset_parent(self, name: str) -> dict[str, str]:
        """The parent cgroup's cpuset.cpus/mems (what a None field resets to)."""
        d = self._ctl("cpuset", name)
        result: dict[str, str] = {}
        if d is None:
            return result
        for f in ("cpuset.cpus", "cpuset.mems"):
            with contextlib.suppress(OSError):
                result[f] = _fs.read_text(os.path.join(os.path.dirname(d), f)).strip()
        return result

    def _init_cpuset(self, name: str) -> None:
        """Copy cpus and mems down from the parent into every cpuset directory
        between the hierarchy's root and the cgroup that is still empty (only
        our own: the parent and below). No task can join an empty cpuset."""
        base = self.hierarchies.get("cpuset")
        if base is None:
            return
        directory = base
        for component in f"{self.parent}/{name}".split("/"):
            parent, directory = directory, os.path.join(directory, component)
            for f in ("cpuset.cpus", "cpuset.mems"):
                path = os.path.join(directory, f)
                try:
                    if _fs.read_text(path).strip():
                        continue
                    _fs.write_text(path, _fs.read_text(os.path.join(parent, f)).strip())
                except FileNotFoundError:
                    continue  # a fixture tree without the file
                except OSError as e:
                    raise _fs.io_error(path, e, "initialise", "run as root") from e

    def set_devices(self, name: str, rules: Sequence[DeviceRule]) -> None:
        """The v1 devices controller is the policy; the cgroup2 BPF program
        (when the unified hierarchy is mounted) is added as defence in depth
        and may fail (an old kernel without CONFIG_CGROUP_BPF). Without the
        devices controller the BPF program is the policy and must attach."""
        directory = self._ctl("devices", name)
        if directory is not None:
            devices.apply_v1(directory, rules)
        unified = self._unified_dir(name)
        if unified is not None:
            try:
                devices.apply_v2(unified, rules)
            except KernelError:
                if directory is None:
                    raise
        elif directory is None:
            raise KernelError(
                f"no devices controller under {self.root} and no cgroup2 hierarchy: "
                "mount the v1 devices controller, or the container's devices would be unrestricted",
                errno=errno.ENOENT,
                path=self.root,
            )

    def read_limits(self, name: str) -> Limits:
        self._require(name)
        r = _fs.StatReader()
        memory, cpu, pids, blkio = (self._ctl(c, name) for c in ("memory", "cpu", "pids", "blkio"))
        mem = r.read(_j(memory, "memory.limit_in_bytes"), parse.parse_limit)
        memsw = r.read(_j(memory, _MEMSW), parse.parse_limit, optional=True)
        period = r.read(_j(cpu, "cpu.cfs_period_us"), parse.parse_int)
        weight = r.read(_j(blkio, "blkio.weight"), parse.parse_io_weight, optional=True)
        bfq = r.read(_j(blkio, "blkio.bfq.weight"), parse.parse_io_weight, optional=True)
        per_dev: dict[tuple[int, int], int] = {}
        for f in ("blkio.weight_device", "blkio.bfq.weight_device"):
            per_dev.update(r.read(_j(blkio, f), parse.parse_device_values, optional=True) or {})
        throttle: dict[tuple[int, int], dict[str, int]] = {}
        for attr, f in THROTTLE_FILES:
            for dev, v in (r.read(_j(blkio, f), parse.parse_device_values, True) or {}).items():
                throttle.setdefault(dev, {})[attr] = v
        cpuset = self._ctl("cpuset", name)
        cpus = r.read(_j(cpuset, "cpuset.cpus"), str.strip, optional=True)
        mems = r.read(_j(cpuset, "cpuset.mems"), str.strip, optional=True)
        oom = r.read(_j(memory, "memory.oom_control"), parse.parse_keyed) or {}
        return Limits(
            memory_max=mem,
            swap_max=_swap_only(mem, memsw),
            cpu_quota_us=r.read(_j(cpu, "cpu.cfs_quota_us"), parse.parse_limit),
            cpu_period_us=100_000 if period is None else period,
            cpu_shares=r.read(_j(cpu, "cpu.shares"), parse.parse_int),
            pids_max=r.read(_j(pids, "pids.max"), parse.parse_limit),
            io_weight=weight if weight is not None else bfq,
            io_weight_devices=tuple(
                DeviceWeight(mj, mn, w) for (mj, mn), w in sorted(per_dev.items())
            ),
            io_throttle=tuple(IoThrottle(mj, mn, **v) for (mj, mn), v in sorted(throttle.items())),
            memory_low=r.read(_j(memory, "memory.soft_limit_in_bytes"), parse.parse_limit),
            oom_kill_disable=oom.get("oom_kill_disable") == 1,
            cpuset_cpus=cpus or None,
            cpuset_mems=mems or None,
        )

    def _require(self, name: str) -> None:
        for d in self._dirs(name):
            if not os.path.isdir(d):
                raise KernelError(f"cgroup {d} does not exist", errno=errno.ENOENT, path=d)

    # --- membership -------------------------------------------------------

    def procs_files(self, name: str) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self._dirs(name)]

    def path(self, name: str) -> str:
        _fs.validate_name(name)
        return f"/{self.parent}/{name}"

    def pids(self, name: str) -> list[int]:
        pids: set[int] = set()
        for d in self._dirs(name):
            pids |= _fs.read_procs_tree(d)
        return sorted(pids)

    def populated(self, name: str) -> bool:
        unified = self._unified_dir(name)
        if unified is not None:
            events = _fs.read_keyed(os.path.join(unified, "cgroup.events"))
            if events.get("populated") == 1:
                return True
        # v1 has no populated flag; a process may also have joined only v1.
        return bool(self.pids(name))

    def events_file(self, name: str) -> str | None:
        unified = self._unified_dir(name)
        return None if unified is None else os.path.join(unified, "cgroup.events")

    # --- kill and remove ----------------------------------------------------

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        unified = self._unified_dir(name)
        if unified is not None and os.path.exists(os.path.join(unified, "cgroup.kill")):  # 5.14+
            kill_file = os.path.join(unified, "cgroup.kill")
            try:
                _fs.write_text(kill_file, "1")
            except FileNotFoundError:
                pass  # removed meanwhile
            except OSError as e:
                raise _fs.io_error(kill_file, e, "write 1 to", "run as root") from e
            events = os.path.join(unified, "cgroup.events")
            _fs.wait_for(lambda: _fs.read_keyed(events).get("populated", 0) == 0, deadline)
            # Anything left joined the v1 hierarchies only: the freezer loop below.
        freezer = self._ctl("freezer", name)
        state = _j(freezer, "freezer.state")
        has_freezer = state is not None and os.path.exists(state)

        def freezer_state() -> str:
            assert state is not None
            try:
                return parse.parse_freezer_state(_fs.read_text(state))
            except FileNotFoundError:
                return "FROZEN"  # gone: nothing left to wait for

        def set_state(value: str) -> None:
            assert state is not None
            with contextlib.suppress(FileNotFoundError):
                _fs.write_text(state, value)

        _fs.freeze_kill_loop(
            list_pids=lambda: self.pids(name),
            freeze=(lambda: set_state("FROZEN")) if has_freezer else None,
            is_frozen=lambda: freezer_state() == "FROZEN",
            thaw=lambda: set_state("THAWED"),
            deadline=deadline,
            what=self.path(name),
        )

    def remove(self, name: str) -> None:
        self._forget(name)
        for d in self._dirs(name):
            _fs.rmdir_tree(d)

    def remove_parent(self) -> None:
        for base in self._bases():
            self.stat_files.close_under(os.path.join(base, self.parent))
            _fs.rmdir_tree(os.path.join(base, self.parent))

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
        for d in self._dirs(name):
            self.stat_files.close_under(d)

    def close(self) -> None:
        self.stat_files.close()

    # --- stats --------------------------------------------------------------

    def oom_kill_file(self, name: str) -> str | None:
        return _j(self._ctl("memory", name), "memory.oom_control")

    def oom_kill_count(self, name: str) -> int | None:
        return self.memory_events(name).get("oom_kill")

    def memory_events(self, name: str) -> dict[str, int]:
        """What v1 really counts: oom_kill (memory.oom_control, 4.13+) and
        max, the times a charge hit a limit. A charge is checked against memsw
        first and fails on exactly one counter, so max = memory.failcnt +
        memory.memsw.failcnt (with swap 0 every hit is a memsw hit). Measured:
        on 6.18 both failcnt files stay 0 even while the limit is hit and the
        OOM killer runs, so do not alert on v1 "max". v1 has no counterpart
        of v2's low/high/oom/oom_group_kill."""
        memory = self._ctl("memory", name)
        if memory is None:
            return {}
        r = _fs.StatReader()
        failcnt = r.read(os.path.join(memory, "memory.failcnt"), parse.parse_int)
        return (
            _memory_events(
                r,
                os.path.join(memory, "memory.oom_control"),
                failcnt,
                os.path.join(memory, "memory.memsw.failcnt"),
            )
            or {}
        )

    def stats(self, name: str) -> Stats:
        p = self._stat_paths.get(name) or self._make_stat_paths(name)
        r = _fs.StatReader(self.stat_files)
        cpu_stat = r.read(p.cpu_stat, parse.parse_keyed) or {}
        user_ns = r.read(p.usage_user, parse.parse_int, optional=True)
        system_ns = r.read(p.usage_sys, parse.parse_int, optional=True)
        if user_ns is None or system_ns is None:
            # cpuacct.usage_user/_sys exist since 4.7; cpuacct.stat is in USER_HZ ticks.
            ticks = r.read(p.cpuacct_stat, parse.parse_keyed) or {}
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            user_ns = ticks["user"] * ns_per_tick if "user" in ticks else None
            system_ns = ticks["system"] * ns_per_tick if "system" in ticks else None
        mem = r.read(p.memory_stat, parse.parse_keyed) or {}
        spec = self._spec.get(name, functools.partial(_read_spec, p), r)
        io = None
        if p.service_bytes is not None:
            service_bytes = r.read(p.service_bytes, str)
            serviced = r.read(p.serviced, str)
            if service_bytes is not None or serviced is not None:
                io = parse.parse_blkio(service_bytes or "", serviced or "")
        failcnt = r.read(p.failcnt, parse.parse_int)  # once: also in memory_events
        events = (
            None
            if p.oom_control is None or p.memsw_failcnt is None
            else _memory_events(r, p.oom_control, failcnt, p.memsw_failcnt)
        )
        return Stats(
            cpu_usage_ns=r.read(p.usage, parse.parse_int),
            cpu_user_ns=user_ns,
            cpu_system_ns=system_ns,
            cpu_periods=cpu_stat.get("nr_periods"),
            cpu_throttled_periods=cpu_stat.get("nr_throttled"),
            cpu_throttled_ns=cpu_stat.get("throttled_time"),  # already ns on v1
            memory_usage=r.read(p.usage_in_bytes, parse.parse_int),
            memory_max_usage=r.read(p.max_usage_in_bytes, parse.parse_int),
            memory_limit=spec.memory_limit,
            # total_swap is in memory.stat only with swap accounting on.
            memory_swap_usage=mem.get("total_swap"),
            memory_swap_limit=_swap_only(spec.memory_limit, spec.memsw_limit),
            memory_reservation=spec.memory_reservation,
            # total_* include child cgroups, matching v2's hierarchical numbers.
            memory_rss=mem.get("total_rss"),
            memory_cache=mem.get("total_cache"),
            memory_mapped_file=mem.get("total_mapped_file"),
            memory_inactive_file=mem.get("total_inactive_file"),
            memory_failcnt=failcnt,
            memory_events=events,
            memory_pgfault=mem.get("pgfault"),
            memory_pgmajfault=mem.get("pgmajfault"),
            memory_pgfault_hierarchy=mem.get("total_pgfault"),
            memory_pgmajfault_hierarchy=mem.get("total_pgmajfault"),
            # Every hierarchy has the same members. The cgroup2 one's
            # cgroup.procs restarts its task list at offset 0, so its fd is
            # kept (~12 us less a container a scrape); a v1 one is opened
            # anew every time (see StatFiles).
            processes=r.read(p.procs, parse.parse_count, fresh=p.unified is None),
            pids_current=r.read(p.pids_current, parse.parse_int),
            pids_max=spec.pids_max,
            io=io,
            pressure=None if p.unified is None else _fs.read_pressure(r, p.unified),
            cpu_quota_us=spec.cpu_quota_us,
            cpu_period_us=spec.cpu_period_us,
            cpu_shares=spec.cpu_shares,
            # Derived, for dashboards that read the v2 unit on every host.
            cpu_weight=None if spec.cpu_shares is None else shares_to_weight(spec.cpu_shares),
            errors=r.errors,
        )

    def _make_stat_paths(self, name: str) -> _StatPaths:
        unified = self._unified_dir(name)
        cpu, acct, memory, pids, blkio = (
            self._ctl(c, name) for c in ("cpu", "cpuacct", "memory", "pids", "blkio")
        )
        p = _StatPaths(
            cpu_stat=_j(cpu, "cpu.stat"),
            usage=_j(acct, "cpuacct.usage"),
            usage_user=_j(acct, "cpuacct.usage_user"),
            usage_sys=_j(acct, "cpuacct.usage_sys"),
            cpuacct_stat=_j(acct, "cpuacct.stat"),
            oom_control=_j(memory, "memory.oom_control"),
            memsw_failcnt=_j(memory, "memory.memsw.failcnt"),
            memory_stat=_j(memory, "memory.stat"),
            usage_in_bytes=_j(memory, "memory.usage_in_bytes"),
            max_usage_in_bytes=_j(memory, "memory.max_usage_in_bytes"),
            failcnt=_j(memory, "memory.failcnt"),
            limit=_j(memory, "memory.limit_in_bytes"),
            memsw_limit=_j(memory, _MEMSW),
            soft_limit=_j(memory, "memory.soft_limit_in_bytes"),
            shares=_j(cpu, "cpu.shares"),
            quota=_j(cpu, "cpu.cfs_quota_us"),
            period=_j(cpu, "cpu.cfs_period_us"),
            service_bytes=_j(blkio, "blkio.throttle.io_service_bytes_recursive"),
            serviced=_j(blkio, "blkio.throttle.io_serviced_recursive"),
            procs=_j(unified or pids or memory, "cgroup.procs"),
            pids_current=_j(pids, "pids.current"),
            pids_max=_j(pids, "pids.max"),
            unified=unified,
        )
        self._stat_paths[name] = p
        return p


@dataclass(frozen=True)
class _StatPaths:
    """The files stats() reads for one cgroup (None: hierarchy not mounted)."""

    cpu_stat: str | None
    usage: str | None
    usage_user: str | None
    usage_sys: str | None
    cpuacct_stat: str | None
    oom_control: str | None
    memsw_failcnt: str | None
    memory_stat: str | None
    usage_in_bytes: str | None
    max_usage_in_bytes: str | None
    failcnt: str | None
    limit: str | None
    memsw_limit: str | None
    soft_limit: str | None
    shares: str | None
    quota: str | None
    period: str | None
    service_bytes: str | None
    serviced: str | None
    procs: str | None
    pids_current: str | None
    pids_max: str | None
    unified: str | None


@dataclass(frozen=True)
class _Spec:
    """The limit files of one cgroup, as stats() reports them (SpecCache)."""

    memory_limit: int | None
    memsw_limit: int | None
    memory_reservation: int | None
    cpu_shares: int | None
    cpu_quota_us: int | None
    cpu_period_us: int | None
    pids_max: int | None


def _read_spec(p: _StatPaths, r: _fs.StatReader) -> _Spec:
    return _Spec(
        memory_limit=r.read(p.limit, parse.parse_limit),
        memsw_limit=r.read(p.memsw_limit, parse.parse_limit, optional=True),
        memory_reservation=r.read(p.soft_limit, parse.parse_limit, optional=True),
        cpu_shares=r.read(p.shares, parse.parse_int),
        cpu_quota_us=r.read(p.quota, parse.parse_limit),
        cpu_period_us=r.read(p.period, parse.parse_int),
        pids_max=r.read(p.pids_max, parse.parse_limit),
    )


def _memory_events(
    r: _fs.StatReader, oom_control: str, failcnt: int | None, memsw_failcnt: str
) -> dict[str, int] | None:
    """v1's counters (see V1Manager.memory_events); `failcnt` is memory.failcnt,
    read by the caller (stats() reports it too)."""
    oom = r.read(oom_control, parse.parse_keyed)
    memsw = r.read(memsw_failcnt, parse.parse_int, optional=True)
    if oom is None and failcnt is None:
        return None
    events: dict[str, int] = {}
    if oom is not None and "oom_kill" in oom:
        events["oom_kill"] = oom["oom_kill"]
    if failcnt is not None:
        events["max"] = failcnt + (memsw or 0)
    return events


def _swap_only(memory: int | None, memsw: int | None) -> int | None:
    """memsw limits memory+swap; the swap part alone, None when unlimited."""
    if memory is None or memsw is None:
        return None
    return max(0, memsw - memory)


def _j(directory: str | None, file: str) -> str | None:
    """Path of a file in a hierarchy that may not be mounted (None)."""
    return None if directory is None else os.path.join(directory, file)
