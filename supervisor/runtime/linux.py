"""The narrow ctypes seam to the kernel calls Python's os module lacks (3.11).

Every function raises OSError(errno, strerror, path) on failure, so a caller's
message can name both the errno and the path involved. Nothing here decides
anything: the runtime's plans (workload.py) choose what to call and in which
order; tests can replace this module's functions with a recording fake.

x86_64 and aarch64 only (the syscall numbers below); other architectures fail
at import with a message that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import signal

# --- constants (linux/include/uapi/linux/sched.h, mount.h, prctl.h) ---------

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

CLOSE_RANGE_MAX = 0xFFFFFFFF

# statvfs f_flag bits -> the MS_* flag that must be repeated on a bind remount.
# A bind remount replaces the per-mount flags; the kernel refuses (EPERM) to
# clear a flag that is "locked" (inherited from a more privileged mount
# namespace), so a read-only remount must carry the existing ones along. This is
# runc's getMountFlags/remount logic. ST_RELATIME (4096) is not MS_RELATIME.
STATVFS_TO_MS: tuple[tuple[int, int], ...] = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
SECCOMP_SET_MODE_FILTER = 1
# The new mount API (same numbers on every architecture since 5.2/5.12).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long
_libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CapDataPair = _CapData * 2
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def _fs(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    ret = _libc.mount(_fs(source), _fs(target), _fs(fstype), flags, _fs(data))
    what = " ".join(w for w in ("mount", fstype or "(bind/remount)", source, "on", target) if w)
    _check(ret, what, target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_fs(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    try:
        nr = _SYS_PIVOT_ROOT[platform.machine()]
    except KeyError:
        raise OSError(
            38, f"pivot_root: no syscall number for {platform.machine()}", new_root
        ) from None
    ret = _libc.syscall(ctypes.c_long(nr), _fs(new_root), _fs(put_old))
    _check(ret, f"pivot_root {new_root}", new_root)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind `source` on `target` through an idmapped mount: file owners are
    shown shifted by the user namespace's mapping (on-disk uid 0 is the
    namespace's root). open_tree(OPEN_TREE_CLONE) makes a detached copy of the
    mount, mount_setattr(MOUNT_ATTR_IDMAP) maps it (only a detached mount may
    be), move_mount attaches it. EINVAL/EOPNOTSUPP from mount_setattr: the
    filesystem does not support idmapped mounts (the caller falls back)."""
    fd = _check(
        _libc.syscall(
            ctypes.c_long(_SYS_OPEN_TREE),
            ctypes.c_int(-100),  # AT_FDCWD
            _fs(source),
            ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
        ),
        f"open_tree {source}",
        source,
    )
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_MOUNT_SETATTR),
                ctypes.c_int(fd),
                b"",
                ctypes.c_uint(AT_EMPTY_PATH),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
            f"idmap the mount of {source}",
            source,
        )
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_MOVE_MOUNT),
                ctypes.c_int(fd),
                b"",
                ctypes.c_int(-100),
                _fs(target),
                ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
            ),
            f"move_mount {source} to {target}",
            target,
        )
    finally:
        os.close(fd)


def set_fs_ids(uid: int, gid: int) -> None:
    """setfsuid/setfsgid: the ids files are created with and access is checked
    against (this thread). Neither reports failure; read back to check."""
    _libc.setfsgid(ctypes.c_uint(gid))
    _libc.setfsuid(ctypes.c_uint(uid))
    # (-1 is no id: the call only returns the current one, as a C int)
    now_uid = _libc.setfsuid(ctypes.c_uint(0xFFFFFFFF)) & 0xFFFFFFFF
    now_gid = _libc.setfsgid(ctypes.c_uint(0xFFFFFFFF)) & 0xFFFFFFFF
    if (now_uid, now_gid) != (uid, gid):
        raise OSError(1, f"setfsuid/setfsgid {uid}/{gid}: refused")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_mode_filter(program: bytes) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, program): install a raw BPF program
    (8-byte sock_filter instructions) in this thread. Resolved at import: it
    runs after pivot_root, when no library could be opened."""
    nr = _SYS_SECCOMP.get(platform.machine())
    if nr is None:
        raise OSError(38, f"seccomp: no syscall number for {platform.machine()}")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    ret = _libc.syscall(
        ctypes.c_long(nr),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(0),
        ctypes.byref(prog),
    )
    _check(ret, "seccomp(SECCOMP_SET_MODE_FILTER)")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns(fd {fd}, 0x{nstype:x})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname {name!r}")


def mknod(path: str, mode: int, device: int) -> None:
    try:
        os.mknod(path, mode, device)
    except OSError as e:
        raise OSError(e.errno, f"mknod {path}: {os.strerror(e.errno or 0)}", path) from None


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = _CapDataPair()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


# clone3(2): fork(2) with flags. Python has no clone, so through ctypes,
# bracketed by PyOS_BeforeFork / PyOS_AfterFork_* exactly as os.fork()
# brackets fork(2) (the import lock, os.register_at_fork hooks, the
# interpreter's thread state). The GIL stays held (PyDLL). Only from a
# single-threaded process.
_SYS_CLONE3 = 435
CLONE_PIDFD = 0x1000
CLONE_PARENT = 0x8000
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
        ("set_tid", ctypes.c_uint64),
        ("set_tid_size", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
    ]


_pylibc = ctypes.PyDLL(None, use_errno=True)
_pylibc.syscall.restype = ctypes.c_long


def clone3(flags: int, cgroup_fd: int | None = None) -> tuple[int, int]:
    """(pid, pidfd) in the parent, (0, -1) in the child; pidfd is -1 without
    CLONE_PIDFD in flags. cgroup_fd: a cgroup2 directory the child starts in
    (CLONE_INTO_CGROUP): no cgroup.procs write, so none of the RCU grace
    period such a write waits for after a quiet spell."""
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs(
        flags=flags | (CLONE_INTO_CGROUP if cgroup_fd is not None else 0),
        pidfd=ctypes.addressof(pidfd),
        # With CLONE_PARENT the child takes our own exit signal (SIGCHLD to
        # our parent); clone3 refuses one given alongside.
        exit_signal=0 if flags & CLONE_PARENT else signal.SIGCHLD,
        cgroup=cgroup_fd if cgroup_fd is not None else 0,
    )
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _pylibc.syscall(
        ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
    )
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid, pidfd.value


def pidfd_open(pid: int) -> int:
    return os.pidfd_open(pid)


def close_range(first: int, last: int = CLOSE_RANGE_MAX, flags: int = 0) -> None:
    _check(_libc.close_range(first, last, flags), f"close_range({first}, {last})")


def cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())
