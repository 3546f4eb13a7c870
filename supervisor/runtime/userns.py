"""User namespaces (`--userns=auto`), the workload's side.

The container's user namespace is made first and entered last:

1. `create_userns`: a throw-away child unshares a user namespace; the
   workload, still host root, writes its uid_map/gid_map ("0 BASE SIZE") and
   keeps an fd of it. (A process cannot map itself from inside; runc has its
   parent write the maps, here the parent is the one doing the set-up.)
2. Every other namespace and every mount is made by host root, so they are
   owned by the host's user namespace: /proc, sysfs of the container's
   network namespace, devpts, the device nodes and the rootfs bind, through an
   idmapped mount (`rootfs_bind`) where the filesystem supports one, or after a
   one-time shift of the rootfs's owners (`shift_tree`) where it does not.
3. `enter`: setns into the user namespace right before the privileges are
   dropped. The capabilities the container keeps are then capabilities in a
   namespace that owns nothing: container root can use them on files it owns
   (ids mapped into its range) and nowhere else; its mounts, network and
   hostname belong to the host's namespace, and a process that gets out of
   the container's namespaces is an unprivileged host uid (BASE + its uid).

Unprivileged ports and ICMP sockets: the network namespace is owned by the
host's user namespace, so container root lacks CAP_NET_BIND_SERVICE/NET_RAW
over it; like Docker (which sets these for every container) the workload sets
net.ipv4.ip_unprivileged_port_start=0 and ping_group_range in the container's
own network namespace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat

from supervisor.runtime import linux
from supervisor.runtime.spec import IdMap


def create_userns(idmap: IdMap) -> int:
    """A new user namespace with the mapping; returns an O_CLOEXEC fd of it.
    Must run in a single-threaded process with CAP_SETUID/CAP_SETGID."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the holder: unshare, say so, wait to be killed
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            linux.unshare(linux.CLONE_NEWUSER)
            # Its pid as the host's /proc names it (the workload runs in the
            # container's pid namespace already, fork returned that pid).
            os.write(ready_w, os.readlink("/proc/self").encode())
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        host_pid = os.read(ready_r, 32).decode()
        if not host_pid.isdigit():
            raise OSError(errno.EPERM, "unshare user namespace: the holder process failed")
        uid_map, gid_map = idmap.map_lines()
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            path = f"/proc/{host_pid}/{name}"
            try:
                _write(path, text)
            except OSError as e:
                raise OSError(
                    e.errno, f"write {name} {text.strip()!r}: {os.strerror(e.errno or 0)}"
                ) from None
        return os.open(f"/proc/{host_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)  # EOF: the holder exits (it is killed too, to be sure)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _write(path: str, text: str) -> None:
    """One write(2) of the whole text: id maps and sysctls take no partial writes."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter(userns_fd: int) -> None:
    """setns into the container's user namespace (full capabilities in it, to
    be dropped to the container's set next)."""
    linux.setns(userns_fd, linux.CLONE_NEWUSER)
    os.close(userns_fd)


# Errors of mount_setattr(MOUNT_ATTR_IDMAP) that mean "not on this filesystem
# or kernel" (EINVAL: the fs lacks FS_ALLOW_IDMAP; ENOSYS: no mount_setattr).
_NO_IDMAP = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM)


def rootfs_bind(rootfs: str, idmap: IdMap, userns_fd: int) -> str:
    """Make the rootfs a mount point the container's root owns. Returns how:
    "idmap" (an idmapped bind), "shifted" (already chowned into the range: a
    plain bind), "chown" (shifted now, then a plain bind)."""
    owner = os.lstat(rootfs).st_uid
    if owner == idmap.uid:
        linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
        return "shifted"
    if owner != 0:
        raise OSError(
            errno.EPERM,
            f"rootfs {rootfs} is owned by uid {owner}, neither root nor this container's"
            f" first uid {idmap.uid}: it was shifted for another user namespace (on a"
            " filesystem without idmapped mounts, give each --userns=auto container its"
            " own rootfs copy)",
            rootfs,
        )
    try:
        linux.idmapped_bind(rootfs, rootfs, userns_fd)
        return "idmap"
    except OSError as e:
        if e.errno not in _NO_IDMAP:
            raise
    shift_tree(rootfs, idmap)
    linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    return "chown"


def shift_tree(root: str, idmap: IdMap) -> None:
    """Add the range's base to every owner below `root` (one filesystem, no
    symlinks followed), the root directory last: an interrupted shift is
    finished by the next start (ids already in the range are left as they
    are, so running it twice changes nothing). setuid/setgid bits, which
    chown clears, are put back."""
    dev = os.lstat(root).st_dev

    def shift(path: str, st: os.stat_result) -> None:
        uid = st.st_uid + idmap.uid if st.st_uid < idmap.size else st.st_uid
        gid = st.st_gid + idmap.gid if st.st_gid < idmap.size else st.st_gid
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))

    def walk(path: str) -> None:
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue  # another filesystem mounted below: not ours
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path)
                shift(entry.path, st)

    walk(root)
    shift(root, os.lstat(root))


def allow_unprivileged_net(in_host_netns: bool) -> None:
    """In the container's own network namespace (seen through the host's
    /proc before pivot_root): ports below 1024 and ICMP echo sockets for
    everyone, as Docker sets them; nothing with the host's network."""
    if in_host_netns:
        return
    for key, value in (
        ("net/ipv4/ip_unprivileged_port_start", "0"),
        ("net/ipv4/ping_group_range", "0 2147483647"),
    ):
        _write(f"/proc/sys/{key}", value)
