"""From the user's ContainerSpec to what the kernel-facing layers take: cgroup
Limits and the zygote's LaunchSpec. Pure; the one place that maps one to the
others."""

from __future__ import annotations

import os

from supervisor.cgroups import CgroupManager, Limits
from supervisor.cgroups.limits import DeviceWeight, IoThrottle
from supervisor.config import ContainerSpec
from supervisor.runtime.spec import DeviceNode, IdMap, LaunchSpec, Mount, Namespaces, NetMode


def limits_for(spec: ContainerSpec) -> Limits:
    return Limits(
        memory_max=spec.memory_bytes,
        swap_max=spec.swap_bytes,
        cpu_quota_us=spec.cpu_quota_us,
        cpu_period_us=spec.cpu_period_us,
        cpu_shares=spec.cpu_shares,
        cpu_weight=spec.cpu_weight,
        pids_max=spec.pids_limit,
        io_weight=spec.io_weight,
        io_weight_devices=tuple(
            DeviceWeight(d.major, d.minor, d.value) for d in spec.io_weight_devices
        ),
        io_throttle=io_throttle(spec),
        memory_low=spec.memory_reservation_bytes,
        memory_high=spec.memory_high_bytes,
        oom_kill_disable=spec.oom_kill_disable,
        oom_group=spec.oom_group,
        cpuset_cpus=spec.cpuset_cpus,
        cpuset_mems=spec.cpuset_mems,
    )


def io_throttle(spec: ContainerSpec) -> tuple[IoThrottle, ...]:
    """The four --device-*-bps/iops lists merged into one entry per device."""
    per_device: dict[tuple[int, int], dict[str, int]] = {}
    for attr, items in (
        ("read_bps", spec.device_read_bps),
        ("write_bps", spec.device_write_bps),
        ("read_iops", spec.device_read_iops),
        ("write_iops", spec.device_write_iops),
    ):
        for d in items:
            per_device.setdefault((d.major, d.minor), {})[attr] = d.value
    return tuple(IoThrottle(mj, mn, **v) for (mj, mn), v in sorted(per_device.items()))


def _mount(m: object) -> Mount:
    from supervisor.config import Mount as SpecMount

    assert isinstance(m, SpecMount)
    options: list[str] = []
    if m.type == "tmpfs":
        if m.size_bytes is not None:
            options.append(f"size={m.size_bytes}")
        if m.mode is not None:
            options.append(f"mode={m.mode:o}")
        options.extend(m.flags)
    return Mount(
        type=m.type,
        destination=m.destination,
        source=m.source,
        readonly=m.read_only,
        options=tuple(options),
    )


def launch_spec_for(
    spec: ContainerSpec,
    cgroups: CgroupManager,
    log_path: str,
    exit_path: str,
    *,
    net_path: str = "",
    net_files: tuple[tuple[str, str], ...] = (),
    idmap: IdMap | None = None,
) -> LaunchSpec:
    """net_path / net_files: the network namespace to join and the files
    (hosts, resolv.conf) to bind, from supervisor.network, for a bridge
    network or container:NAME; empty for none and host."""
    net: NetMode = "join" if net_path else ("host" if spec.network == "host" else "none")
    return LaunchSpec(
        name=spec.name,
        rootfs=spec.rootfs,
        argv=spec.command,
        env=spec.env,
        cwd=spec.workdir,
        uid=spec.uid,
        gid=spec.gid,
        additional_gids=spec.additional_gids,
        hostname=spec.hostname if spec.uts == "private" else "",
        namespaces=Namespaces(
            pid=spec.pid,
            uts=spec.uts,
            ipc=spec.ipc,
            cgroup=spec.cgroupns,
            net=net,
            net_path=net_path,
        ),
        mounts=tuple(Mount(type="bind", destination=dst, source=src) for src, dst in net_files)
        + tuple(_mount(m) for m in spec.mounts),
        read_only=spec.read_only,
        capabilities=tuple(sorted(spec.capabilities)),
        cgroup_procs=tuple(cgroups.procs_files(spec.name)),
        oom_kill_file=cgroups.oom_kill_file(spec.name),
        log_path=log_path,
        exit_path=exit_path,
        log_max_size=spec.log_max_size_bytes,
        log_max_files=spec.log_max_files,
        rlimits=spec.ulimits,
        oom_score_adj=spec.oom_score_adj,
        tty=spec.tty,
        stdin=spec.interactive,
        attach_path=os.path.join(os.path.dirname(log_path), "attach.sock"),
        seccomp=spec.seccomp,
        devices=tuple(
            DeviceNode(path=d.container_path, type=d.type, major=d.major, minor=d.minor)
            for d in spec.devices
        ),
        idmap=idmap,
    )
