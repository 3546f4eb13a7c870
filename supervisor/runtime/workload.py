"""The workload's side of the fork: from the monitor's child to execve.

Runs single-threaded in the forked child, so it may only call the kernel and
never return: `exec_workload` either execs or reports on the error pipe and
_exits. The order of the set-up is data (WORKLOAD_STEPS, NAMESPACE_ORDER) and
the mount set-up is a pure plan (`rootfs_plan`) that an executor applies, so
both can be read and tested without root.

Error pipe protocol (written to `errfd`, which is O_CLOEXEC): first
"P<host pid>\n" (the monitor lives in the new pid namespace and cannot map its
child's pid to the host's; /proc/self of the still-visible host /proc can), then
on failure "E<exit code> <message>". EOF without "E" means execve succeeded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from supervisor.runtime import linux, seccomp, userns
from supervisor.runtime.caps import CAPABILITIES
from supervisor.runtime.console import CONSOLE_FD, setup_console
from supervisor.runtime.rlimits import apply as apply_rlimits
from supervisor.runtime.rlimits import set_oom_score_adj
from supervisor.runtime.spec import IdMap, LaunchSpec

# Exit codes as Docker uses them: 125 the runtime failed, 126 the command could
# not be invoked, 127 the command was not found.
EXIT_SETUP_FAILED = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127

# Namespace creation order, mount last: by then everything that reads host
# paths (cgroup.procs, a network namespace file) is done. The user namespace
# of --userns=auto is not in it: it is made before and entered after all the
# others (supervisor.runtime.userns), so they are owned by the host's.
# The cgroup namespace comes after joining the container's cgroups so its root
# is the container's cgroup ("0::/" inside).
NAMESPACE_ORDER: tuple[tuple[str, int], ...] = (
    ("ipc", linux.CLONE_NEWIPC),
    ("uts", linux.CLONE_NEWUTS),
    ("net", linux.CLONE_NEWNET),
    ("cgroup", linux.CLONE_NEWCGROUP),
    ("mount", linux.CLONE_NEWNS),
)

# Docker's defaults (moby oci/defaults.go).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# name, major, minor (all mode 0666, as runc's default devices)
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
)

_NOSUID_NODEV_NOEXEC = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
_OPTION_FLAGS = {"nosuid": linux.MS_NOSUID, "nodev": linux.MS_NODEV, "noexec": linux.MS_NOEXEC}


# --- the mount plan ----------------------------------------------------------


@dataclass(frozen=True)
class MountFs:
    """Mount a filesystem (or change propagation) at `target`."""

    source: str | None
    target: str
    fstype: str | None
    flags: int
    data: str | None = None
    in_root: bool = True  # target is inside the rootfs (resolved safely)


@dataclass(frozen=True)
class MakeDir:
    target: str
    mode: int = 0o755


@dataclass(frozen=True)
class MakeDev:
    target: str
    major: int
    minor: int
    block: bool = False  # a block device (--device); the defaults are char devices
    mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    link_target: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Bind:
    """Bind a host path; create the target like the source (dir or file)."""

    source: str
    target: str
    flags: int
    readonly: bool


@dataclass(frozen=True)
class RootBind:
    """--userns=auto: the rootfs bound on itself so that the container's root
    owns it (an idmapped mount, or a one-time chown where the filesystem has
    none: supervisor.runtime.userns.rootfs_bind)."""

    rootfs: str


@dataclass(frozen=True)
class PivotRoot:
    rootfs: str


@dataclass(frozen=True)
class Mask:
    """After pivot: /dev/null over a file, an empty read-only tmpfs over a dir."""

    path: str


@dataclass(frozen=True)
class ReadOnly:
    """After pivot: bind the path onto itself and remount it read-only."""

    path: str


Op = MountFs | MakeDir | MakeDev | Symlink | Bind | RootBind | PivotRoot | Mask | ReadOnly


def _split_options(options: Sequence[str]) -> tuple[int, str | None]:
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _OPTION_FLAGS:
            flags |= _OPTION_FLAGS[opt]
        else:
            data.append(opt)
    return flags, ",".join(data) or None


def _host_ids_option(option: str, spec: LaunchSpec) -> str:
    key, sep, value = option.partition("=")
    if sep and value.isdigit() and key in ("uid", "gid"):
        host = spec.host_uid(int(value)) if key == "uid" else spec.host_gid(int(value))
        return f"{key}={host}"
    return option


def rootfs_plan(spec: LaunchSpec) -> list[Op]:
    """The whole mount set-up, in order. Paths before PivotRoot are relative to
    the rootfs (resolved with `secure_join` when applied), paths after it are
    absolute in the new root. Pure.

    With a user namespace (spec.idmap) what the container's root should own
    is owned by its host uid/gid: the rootfs (RootBind), the tmpfs roots, the
    device nodes, and devpts's tty group."""
    owner = ""
    if spec.idmap is not None:
        owner = f",uid={spec.host_uid(0)},gid={spec.host_gid(0)}"
    ops: list[Op] = [
        # Nothing we mount may propagate back to the host.
        MountFs(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, in_root=False),
        # pivot_root needs the new root to be a mount point.
        RootBind(spec.rootfs)
        if spec.idmap is not None
        else MountFs(spec.rootfs, spec.rootfs, None, linux.MS_BIND | linux.MS_REC, in_root=False),
        MakeDir("/proc"),
        MountFs("proc", "/proc", "proc", _NOSUID_NODEV_NOEXEC),
        MakeDir("/sys"),
        MountFs("sysfs", "/sys", "sysfs", _NOSUID_NODEV_NOEXEC | linux.MS_RDONLY),
        MakeDir("/dev"),
        MountFs(
            "tmpfs",
            "/dev",
            "tmpfs",
            linux.MS_NOSUID | linux.MS_STRICTATIME,
            "mode=755,size=65536k" + owner,
        ),
    ]
    ruid, rgid = spec.host_uid(0), spec.host_gid(0)
    ops += [
        MakeDev(f"/dev/{name}", major, minor, uid=ruid, gid=rgid) for name, major, minor in DEVICES
    ]
    for d in spec.devices:  # --device: usable only because the cgroup policy allows it
        if os.path.dirname(d.path) != "/dev":
            ops.append(MakeDir(os.path.dirname(d.path)))
        ops.append(
            MakeDev(
                d.path,
                d.major,
                d.minor,
                d.type == "b",
                d.mode,
                spec.host_uid(d.uid),
                spec.host_gid(d.gid),
            )
        )
    ops += [
        MakeDir("/dev/pts"),
        MountFs(
            "devpts",
            "/dev/pts",
            "devpts",
            linux.MS_NOSUID | linux.MS_NOEXEC,
            f"newinstance,ptmxmode=0666,mode=0620,gid={spec.host_gid(5)}",
        ),
        MakeDir("/dev/shm", 0o1777),
        MountFs("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k" + owner),
    ]
    if spec.namespaces.ipc == "private":
        ops += [
            MakeDir("/dev/mqueue"),
            MountFs("mqueue", "/dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC),
        ]
    ops += [Symlink(link, f"/dev/{name}", ruid, rgid) for link, name in DEV_SYMLINKS]
    for m in spec.mounts:
        options = m.options
        if m.type == "tmpfs" and spec.idmap is not None:
            # Owners are the container's ids: the kernel reads them as host ids.
            options = tuple(_host_ids_option(o, spec) for o in options)
            if not any(o.startswith(("uid=", "gid=")) for o in options):
                options += (f"uid={spec.host_uid(0)}", f"gid={spec.host_gid(0)}")
        flags, data = _split_options(options)
        if m.type == "bind":
            ops.append(Bind(m.source, m.destination, flags, m.readonly))
        else:
            ops.append(MakeDir(m.destination))
            ops.append(
                MountFs(
                    "tmpfs",
                    m.destination,
                    "tmpfs",
                    flags
                    | linux.MS_NOSUID
                    | linux.MS_NODEV
                    | (linux.MS_RDONLY if m.readonly else 0),
                    data,
                )
            )
    ops.append(PivotRoot(spec.rootfs))
    ops += [Mask(p) for p in MASKED_PATHS]
    ops += [ReadOnly(p) for p in READONLY_PATHS]
    if spec.read_only:
        ops.append(ReadOnly("/"))
    return ops


def secure_join(root: str, unsafe: str) -> str:
    """Resolve `unsafe` inside `root` as if root were "/": symlinks and ".."
    can never leave it (filepath-securejoin's rule). Missing components are
    joined lexically."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise OSError(
                    errno.ELOOP, f"too many symlinks resolving {unsafe} in {root}", unsafe
                )
            link = os.readlink(current)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _locked_flags(path: str) -> int:
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in linux.STATVFS_TO_MS if f_flag & st)


def _remount(path: str, extra: int) -> None:
    linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | extra | _locked_flags(path))


def apply(
    ops: Sequence[Op], rootfs: str, idmap: IdMap | None = None, userns_fd: int | None = None
) -> None:
    """Apply a plan from `rootfs_plan` to the kernel (idmap and userns_fd: the
    container's user namespace, for a RootBind)."""
    root = rootfs  # before PivotRoot paths resolve inside the rootfs; after it, "/"
    for op in ops:
        if isinstance(op, RootBind):
            if idmap is None or userns_fd is None:
                raise OSError(errno.EINVAL, "rootfs bind: no user namespace to map it to")
            userns.rootfs_bind(op.rootfs, idmap, userns_fd)
            continue
        if isinstance(op, MountFs):
            target = secure_join(root, op.target) if op.in_root else op.target
            linux.mount(op.source, target, op.fstype, op.flags, op.data)
        elif isinstance(op, MakeDir):
            path = secure_join(root, op.target)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, op.mode)
        elif isinstance(op, MakeDev):
            path = secure_join(root, op.target)
            kind = stat.S_IFBLK if op.block else stat.S_IFCHR
            linux.mknod(path, kind | op.mode, os.makedev(op.major, op.minor))
            os.chmod(path, op.mode)  # mknod honours the umask
            if op.uid or op.gid:
                os.chown(path, op.uid, op.gid)
        elif isinstance(op, Symlink):
            path = secure_join(root, op.target)
            os.symlink(op.link_target, path)
            if op.uid or op.gid:
                os.lchown(path, op.uid, op.gid)
        elif isinstance(op, Bind):
            target = secure_join(root, op.target)
            if os.path.isdir(op.source):
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            linux.mount(op.source, target, None, linux.MS_BIND | linux.MS_REC)
            if op.readonly or op.flags:
                _remount(target, op.flags | (linux.MS_RDONLY if op.readonly else 0))
        elif isinstance(op, PivotRoot):
            # runc's trick: pivot_root(".", ".") stacks the old root on top of
            # the new one at "/"; detaching it leaves only the new root. Unlike
            # chroot, the old root is gone from this mount namespace entirely.
            os.chdir(op.rootfs)
            linux.pivot_root(".", ".")
            linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
            linux.umount2(".", linux.MNT_DETACH)
            os.chdir("/")
            root = "/"
        elif isinstance(op, Mask):
            if os.path.isdir(op.path):
                linux.mount("tmpfs", op.path, "tmpfs", linux.MS_RDONLY)
            elif os.path.exists(op.path):
                linux.mount("/dev/null", op.path, None, linux.MS_BIND)
        elif isinstance(op, ReadOnly) and os.path.exists(op.path):
            if op.path != "/":
                linux.mount(op.path, op.path, None, linux.MS_BIND | linux.MS_REC)
            _remount(op.path, linux.MS_RDONLY)


# --- the steps before exec ---------------------------------------------------


def _is_v1(procs_file: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(procs_file), "tasks"))


def fork_into_cgroup(cgroup_procs: Sequence[str]) -> tuple[int, tuple[str, ...]]:
    """fork(2), the child started in the container's cgroup2 cgroup when it
    has one (clone3 CLONE_INTO_CGROUP, kernel 5.7+): (pid, the cgroup files
    the child must still join), pid 0 in the child. Joining by a write to
    cgroup.procs takes the kernel's threadgroup lock, whose first writer
    after a quiet spell waits for an RCU grace period (5-20 ms here); a
    child cloned into the cgroup takes none of it. The v1 hierarchies of a
    hybrid host are still joined by writes (cheap ones: _join_cgroups).
    Where the clone is refused (an older kernel), a plain fork and all of
    them by writes."""
    unified = [p for p in cgroup_procs if not _is_v1(p)]
    if len(unified) == 1:
        try:
            fd = os.open(os.path.dirname(unified[0]), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                pid, _ = linux.clone3(0, cgroup_fd=fd)
            except OSError:
                pass
            else:
                return pid, tuple(p for p in cgroup_procs if p != unified[0])
            finally:
                os.close(fd)
    return os.fork(), tuple(cgroup_procs)


def _join_cgroups(spec: LaunchSpec) -> None:
    # A v1 hierarchy (it has a tasks file) is joined through tasks: "0" there
    # moves only this thread, the workload's only one, and skips the lock
    # whose first writer after a quiet spell waits for an RCU grace period.
    # The cgroup2 one is joined at the fork (fork_into_cgroup), or here where
    # that was refused.
    for path in spec.cgroup_procs:
        tasks = os.path.join(os.path.dirname(path), "tasks")
        fd = os.open(tasks if _is_v1(path) else path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _unshare(spec: LaunchSpec) -> None:
    private = {
        "ipc": spec.namespaces.ipc == "private",
        "uts": spec.namespaces.uts == "private",
        "net": spec.namespaces.net == "none",
        "cgroup": spec.namespaces.cgroup == "private",
        "mount": True,
    }
    if spec.namespaces.net == "join":
        _join_netns(spec.namespaces.net_path)
    # One unshare(2) for all of them; only when it fails, one at a time in
    # NAMESPACE_ORDER, so that the error names the namespace.
    flags = [(name, flag) for name, flag in NAMESPACE_ORDER if private[name]]
    try:
        linux.unshare(sum(flag for _, flag in flags))
        return
    except OSError:
        pass
    for name, flag in flags:
        try:
            linux.unshare(flag)
        except OSError as e:
            raise OSError(
                e.errno, f"unshare {name} namespace: {os.strerror(e.errno or 0)}"
            ) from None


def _join_netns(path: str) -> None:
    """Bridge networks and container:NAME: the daemon made and configured the
    namespace before the launch (supervisor.network); the workload only joins
    it, in the host mount namespace still, where the file is visible."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(
            e.errno, f"open network namespace {path}: {os.strerror(e.errno or 0)}"
        ) from None
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
    finally:
        os.close(fd)


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name[16] + short flags, padded to 40 bytes


def _network(spec: LaunchSpec) -> None:
    if spec.namespaces.net != "none":
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def _hostname(spec: LaunchSpec) -> None:
    if spec.namespaces.uts == "private":
        linux.sethostname(spec.hostname or spec.name[:64])


# The user namespace fd between its creation and its entry (a forked,
# single-threaded process: one container per process).
_userns_fd: list[int] = []


def _create_userns(spec: LaunchSpec) -> None:
    if spec.idmap is not None:
        _userns_fd.append(userns.create_userns(spec.idmap))


def _unprivileged_net(spec: LaunchSpec) -> None:
    if spec.idmap is not None:
        userns.allow_unprivileged_net(spec.namespaces.net == "host")


def _enter_userns(spec: LaunchSpec) -> None:
    if spec.idmap is not None:
        userns.enter(_userns_fd.pop())


def _mounts(spec: LaunchSpec) -> None:
    if spec.idmap is not None:
        # Create what the plan creates as the container's root: an idmapped
        # rootfs refuses (EOVERFLOW) a creator whose fsuid it cannot map, and
        # new mount points, nodes and links then belong to the container's
        # root. A non-zero fsuid drops the file capabilities from the
        # effective set: raise them again from the permitted one (still the
        # host's, until the user namespace is entered).
        linux.set_fs_ids(spec.host_uid(0), spec.host_gid(0))
        _, permitted, _ = linux.capget()
        linux.capset(permitted, permitted, 0)
    apply(rootfs_plan(spec), spec.rootfs, spec.idmap, _userns_fd[0] if _userns_fd else None)


def _chdir(spec: LaunchSpec) -> None:
    os.chdir(spec.cwd)


def _caps_mask(names: Sequence[str]) -> int:
    return sum(1 << CAPABILITIES[n] for n in set(names))


def _privileges(spec: LaunchSpec) -> None:
    drop_privileges(spec.capabilities, spec.uid, spec.gid, spec.additional_gids)


def drop_privileges(
    capabilities: Sequence[str], uid: int, gid: int, additional_gids: Sequence[int]
) -> None:
    """The container's identity and capability sets, then no_new_privs.
    Shared with exec, so an exec'd process gets exactly the workload's."""
    keep = _caps_mask(capabilities)
    # The bounding set first: dropping needs CAP_SETPCAP, gone after setuid.
    for cap in range(linux.cap_last_cap() + 1):
        if not keep & (1 << cap):
            linux.prctl(linux.PR_CAPBSET_DROP, cap)
    os.setgroups(list(additional_gids))
    os.setgid(gid)
    os.setuid(uid)  # for uid != 0 this clears permitted and effective
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    if uid == 0:
        linux.capset(keep, keep, 0)
    else:
        linux.capset(0, 0, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


# The workload's end of the gate (after the error pipe, 3, and the console
# socket, 4): one byte from nsvisor-monitor once it has its signals, the
# attach socket and the OOM baseline. The set-up runs meanwhile; only execve
# waits. EOF (the monitor failed) ends the workload with GATE_CLOSED.
GATE_FD = CONSOLE_FD + 1
GATE_CLOSED = 125


def _gate(spec: LaunchSpec) -> None:
    if os.read(GATE_FD, 1) != b"G":
        os._exit(GATE_CLOSED)
    os.close(GATE_FD)


def _seccomp(spec: LaunchSpec) -> None:
    """The last step before execve: after no_new_privs (set in _privileges), so
    an unprivileged workload may install it and it binds everything exec'd."""
    try:
        # The program prepared before the zygote was forked, or built now.
        seccomp.install(spec.seccomp, spec.capabilities)
    except seccomp.ProfileError as e:
        raise OSError(errno.EINVAL, str(e)) from None


def _resources(spec: LaunchSpec) -> None:
    """ulimits and oom_score_adj: inherited across exec, set while the
    workload still has CAP_SYS_RESOURCE (raising a hard limit or lowering
    oom_score_adj needs it), so before the privileges are dropped."""
    apply_rlimits(spec.rlimits)
    if spec.oom_score_adj is not None:
        set_oom_score_adj(spec.oom_score_adj)


WORKLOAD_STEPS: tuple[tuple[str, Callable[[LaunchSpec], None]], ...] = (
    ("join cgroups", _join_cgroups),
    ("create the user namespace", _create_userns),
    ("create namespaces", _unshare),
    ("bring up lo", _network),
    ("allow unprivileged ports and ping", _unprivileged_net),
    ("set hostname", _hostname),
    ("set up mounts", _mounts),
    ("set up the console", setup_console),
    ("chdir", _chdir),
    ("set rlimits and oom_score_adj", _resources),
    ("enter the user namespace", _enter_userns),
    ("drop privileges", _privileges),
    # Last before seccomp: a profile might refuse read(2).
    ("wait for the monitor", _gate),
    ("load the seccomp profile", _seccomp),
)


def _execvpe(spec: LaunchSpec) -> NoReturn:
    execvpe(spec.argv, spec.env, spec.path_env())


def execvpe(argv: Sequence[str], env_list: Sequence[str], path_env: str) -> NoReturn:
    """execve with PATH search in the new root (os.execvpe's rule: keep going
    on ENOENT/ENOTDIR, remember the first other error). Shared with exec."""
    cmd = argv[0]
    env = dict(e.split("=", 1) for e in env_list)
    env.setdefault("PATH", path_env)  # as Docker: a PATH is always set
    candidates = [cmd] if "/" in cmd else [os.path.join(d or ".", cmd) for d in path_env.split(":")]
    first_error: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, list(argv), env)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) and first_error is None:
                first_error = e
    raise first_error or OSError(errno.ENOENT, os.strerror(errno.ENOENT), cmd)


def reset_signals() -> None:
    """Every disposition back to SIG_DFL, then nothing blocked: what a
    workload or an exec'd process must start with. Only the signals not at
    SIG_DFL already are written (getsignal is Python's own record; None, a
    handler set from C, is reset too): a sigaction per signal cost ~0.1 ms
    of every start. Also undoes Python's SIG_IGN of SIGPIPE/SIGXFSZ, which
    exec would otherwise hand on."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            if signal.getsignal(sig) != signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def describe(e: OSError) -> str:
    """strerror plus the path, once (the seam already puts paths in strerror)."""
    text = e.strerror or str(e)
    if e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


def _report(errfd: int, text: str) -> None:
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(errfd, data) :]


def exec_workload(
    spec: LaunchSpec,
    errfd: int,
    stdout_fd: int,
    stderr_fd: int,
    *,
    gate_fd: int,
    stdin_fd: int | None = None,
    console_fd: int | None = None,
) -> NoReturn:
    """Set up the container around this process and exec the command.
    Signals must be blocked by the caller around the fork (they are unblocked
    here once the dispositions are back to default). gate_fd: read end of the
    gate (GATE_FD); stdin_fd: the workload's stdin (default /dev/null);
    console_fd: the socket the pty master goes to with spec.tty
    (supervisor.runtime.console)."""
    code = EXIT_SETUP_FAILED
    try:
        signal.set_wakeup_fd(-1)
        reset_signals()
        os.setsid()
        # stdio first, then nothing of the monitor's survives but the error pipe.
        if console_fd is not None:  # out of the way of the dup2s below
            console_fd = fcntl.fcntl(console_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        gate_fd = fcntl.fcntl(gate_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull if stdin_fd is None else stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(errfd, 3, inheritable=False)
        errfd = 3
        if console_fd is not None:
            os.dup2(console_fd, CONSOLE_FD, inheritable=False)
        else:
            linux.close_range(CONSOLE_FD, CONSOLE_FD)
        os.dup2(gate_fd, GATE_FD, inheritable=False)
        linux.close_range(GATE_FD + 1)
        _report(errfd, f"P{os.readlink('/proc/self')}\n")
        for step, fn in WORKLOAD_STEPS:
            try:
                fn(spec)
            except OSError as e:
                raise RuntimeError(f"{step}: {describe(e)}") from None
        code = EXIT_NOT_FOUND
        try:
            _execvpe(spec)
        except OSError as e:
            code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_INVOKE
            raise RuntimeError(
                f"exec {spec.argv[0]!r} in rootfs {spec.rootfs}: {os.strerror(e.errno or 0)}"
            ) from None
    except BaseException as e:
        try:
            _report(errfd, f"E{code} {e}")
        finally:
            os._exit(code)
