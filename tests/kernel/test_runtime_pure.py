"""The runtime's pure parts and its mount executor against a recording fake of
the kernel seam: no root, no namespaces (lives beside the kernel tests because
it tests the same modules; not marked kernel)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.runtime import linux, workload
from supervisor.runtime.rootfs import is_static_elf
from supervisor.runtime.spec import LaunchSpec, LaunchSpecError, Mount, Namespaces
from supervisor.runtime.workload import (
    Bind,
    Mask,
    MountFs,
    PivotRoot,
    ReadOnly,
    rootfs_plan,
    secure_join,
)
from supervisor.runtime.zygote import LaunchError, _Events


def _spec(**kw: Any) -> LaunchSpec:
    base: dict[str, Any] = {
        "name": "web",
        "rootfs": "/srv/rootfs",
        "argv": ("httpd", "-f"),
        "log_path": "/var/lib/nsvisor/web.log",
        "exit_path": "/var/lib/nsvisor/web.exit",
    }
    return LaunchSpec(**{**base, **kw})


# --- LaunchSpec ------------------------------------------------------------------


def test_launch_spec_json_round_trip() -> None:
    spec = _spec(
        env=("PATH=/bin", "A=b=c"),
        uid=1000,
        additional_gids=(5, 6),
        hostname="h",
        namespaces=Namespaces(pid="private", ipc="host", net="host"),
        mounts=(
            Mount(
                type="bind", source="/data", destination="/d", readonly=True, options=("nosuid",)
            ),
            Mount(type="tmpfs", destination="/tmp", options=("size=1m",)),
        ),
        read_only=True,
        capabilities=("KILL",),
        cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",),
        oom_kill_file="/sys/fs/cgroup/x/memory.events",
        teardown_grace_s=0.5,
    )
    assert LaunchSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["namespaces"]["net"] == "host"


def test_launch_spec_reports_every_problem() -> None:
    with pytest.raises(LaunchSpecError) as e:
        _spec(rootfs="rel", argv=(), env=("NOEQUALS",), capabilities=("FLY",))
    text = str(e.value)
    for needle in ("rootfs 'rel'", "argv", "NOEQUALS", "FLY"):
        assert needle in text


def test_hostname_needs_a_private_uts_namespace() -> None:
    with pytest.raises(LaunchSpecError, match="uts"):
        _spec(hostname="x", namespaces=Namespaces(uts="host"))


def test_path_env_defaults_to_dockers() -> None:
    assert _spec(env=()).path_env().startswith("/usr/local/sbin:")
    assert _spec(env=("PATH=/x",)).path_env() == "/x"


# --- the mount plan ----------------------------------------------------------------


def test_plan_order_private_first_pivot_then_masks_read_only_root_last() -> None:
    ops = rootfs_plan(
        _spec(
            read_only=True,
            mounts=(Mount(type="bind", source="/data", destination="/d"),),
        )
    )
    first = ops[0]
    assert isinstance(first, MountFs) and first.flags & linux.MS_PRIVATE and first.target == "/"
    pivot = next(i for i, op in enumerate(ops) if isinstance(op, PivotRoot))
    assert all(i < pivot for i, op in enumerate(ops) if isinstance(op, Bind))
    assert all(i > pivot for i, op in enumerate(ops) if isinstance(op, Mask | ReadOnly))
    assert ops[-1] == ReadOnly("/")
    targets = [op.target for op in ops if isinstance(op, MountFs)]
    assert targets.index("/proc") < targets.index("/dev") < targets.index("/dev/pts")


def test_plan_without_private_ipc_has_no_mqueue() -> None:
    targets = [
        op.target
        for op in rootfs_plan(_spec(namespaces=Namespaces(ipc="host")))
        if isinstance(op, MountFs)
    ]
    assert "/dev/mqueue" not in targets
    assert "/dev/mqueue" in [op.target for op in rootfs_plan(_spec()) if isinstance(op, MountFs)]


def test_secure_join_keeps_symlinks_and_dotdot_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/../../etc", root / "abs")
    os.symlink("../../../etc", root / "etc" / "rel")
    assert secure_join(str(root), "/abs/x") == str(root / "etc" / "x")
    assert secure_join(str(root), "/etc/rel/y") == str(root / "etc" / "y")
    assert secure_join(str(root), "/../../../z") == str(root / "z")
    assert secure_join(str(root), "/new/dir") == str(root / "new" / "dir")


def test_apply_against_a_recording_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor makes the kernel calls of the plan in the plan's order,
    resolving rootfs-relative targets inside the rootfs."""
    calls: list[tuple[Any, ...]] = []
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    volume = tmp_path / "vol"
    volume.mkdir()
    monkeypatch.setattr(linux, "mount", lambda *a: calls.append(("mount", *a)))
    monkeypatch.setattr(linux, "umount2", lambda *a: calls.append(("umount2", *a)))
    monkeypatch.setattr(linux, "pivot_root", lambda *a: calls.append(("pivot_root", *a)))
    monkeypatch.setattr(linux, "mknod", lambda path, mode, dev: open(path, "w").close())
    monkeypatch.chdir(tmp_path)
    plan = [
        op
        for op in rootfs_plan(
            _spec(
                rootfs=str(rootfs),
                mounts=(Mount(type="bind", source=str(volume), destination="/v", readonly=True),),
            )
        )
        if not isinstance(op, Mask | ReadOnly)
    ]
    workload.apply(plan, str(rootfs))
    names = [c[0] for c in calls]
    assert names.index("pivot_root") == len(names) - 3  # then make "." slave, then detach it
    assert calls[-1] == ("umount2", ".", linux.MNT_DETACH)
    mounted = [c[2] for c in calls if c[0] == "mount"]
    assert str(rootfs / "proc") in mounted and str(rootfs / "v") in mounted
    ro = [
        c
        for c in calls
        if c[0] == "mount" and c[2] == str(rootfs / "v") and c[4] & linux.MS_REMOUNT
    ]
    assert ro and ro[0][4] & linux.MS_RDONLY and ro[0][4] & linux.MS_BIND
    assert (
        os.path.islink(rootfs / "dev" / "ptmx")
        and os.readlink(rootfs / "dev" / "ptmx") == "pts/ptmx"
    )
    assert oct(os.stat(rootfs / "dev" / "null").st_mode & 0o777) == "0o666"


# --- launch protocol, rootfs ---------------------------------------------------


def test_events_accept_started_before_monitor() -> None:
    r, w = os.pipe()
    try:
        ev = _Events("web")
        ev.feed(b'{"event":"started","workload_pid":12,"started_at":3.0}\n', [])
        assert not ev.done
        ev.feed(b'{"event":"monitor","pid":11}\n', [w])
        assert ev.done
        launched = ev.result()
        assert (launched.pid, launched.pidfd, launched.workload_pid, launched.started_at) == (
            11,
            w,
            12,
            3.0,
        )
    finally:
        os.close(r)
        os.close(w)


def test_events_error_carries_the_monitor_pid() -> None:
    r, w = os.pipe()
    os.close(r)
    ev = _Events("web")
    ev.feed(b'{"event":"monitor","pid":11}\n', [w])
    ev.feed(
        b'{"event":"error","message":"exec \'x\' in rootfs /r: No such file or directory"}\n', []
    )
    with pytest.raises(LaunchError, match="container web: exec 'x'") as e:
        ev.result()
    assert e.value.pid == 11


def test_busybox_is_static_and_python_is_not() -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("/bin/busybox missing (apt-get install busybox-static)")
    assert is_static_elf("/bin/busybox")
    assert not is_static_elf(os.path.realpath("/bin/ls"))
