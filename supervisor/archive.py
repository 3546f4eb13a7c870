"""Tar archives of paths inside a root that cannot be escaped, for `nsvisor cp`.

Every path is resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
from a directory fd that stands for "/": "..", absolute symlinks and
relative ones climbing out all stay inside it (the kernel clamps them at the
root, as chroot would), and /proc magic links (a container's /proc/1/root is
its monitor's, i.e. the host's, root) are refused. Below the resolved path
the walk only goes down by names with O_NOFOLLOW, and symlinks are archived
as symlinks, never followed.

The daemon uses it with /proc/<workload pid>/root (the container's mount
namespace: its volumes and tmpfs included) or, for a stopped container, the
rootfs directory; the CLI uses it with the local destination directory, so
an archive from a container cannot write outside it either.

Ownership and modes are kept (uid/gid numerically, like `cp -a`); device
nodes, fifos and sockets are skipped; hard links are copied as files.
openat2 exists since Linux 5.6.

A container with a user namespace (--userns=auto) is seen from the host with
its ids shifted (an idmapped rootfs, a chowned one, its tmpfs): `idmap`
translates them, so archives always carry the container's own ids, and
`as_container_root` makes the extracting thread create files as the
container's root (an idmapped mount refuses a creator it cannot map).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import posixpath
import shutil
import stat
import struct
import tarfile
from collections.abc import Iterator
from typing import IO

from supervisor.runtime.spec import IdMap

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ArchiveError(Exception):
    """A path that cannot be archived or extracted; carries an errno."""

    def __init__(self, errno_: int, message: str) -> None:
        self.errno = errno_
        super().__init__(message)


def openat2(
    dirfd: int,
    path: str,
    flags: int,
    mode: int = 0,
    resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
) -> int:
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    nr = _SYS_OPENAT2[platform.machine()]
    fd = _libc.syscall(nr, dirfd, os.fsencode(path), buf, ctypes.c_size_t(len(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def normalize(path: str) -> str:
    """An absolute, normalised path inside the root ("" and "." are "/")."""
    return posixpath.normpath("/" + path.lstrip("/")) if path.strip("/.") else "/"


def open_dir(rootfd: int, path: str) -> int:
    return openat2(rootfd, normalize(path), os.O_PATH | os.O_DIRECTORY)


NOBODY = 65534  # what an id outside the container's range is shown as


def _inner(host_id: int, base: int, idmap: IdMap | None) -> int:
    if idmap is None:
        return host_id
    return host_id - base if base <= host_id < base + idmap.size else NOBODY


def shifted_view(rootfd: int, idmap: IdMap | None) -> IdMap | None:
    """idmap when the root shows the container's ids shifted (a running
    container's root, a chowned rootfs), None when it shows them as they are
    (a stopped container's idmapped rootfs on disk) or there is no mapping."""
    if idmap is not None and os.fstat(rootfd).st_uid == idmap.uid:
        return idmap
    return None


@contextlib.contextmanager
def as_container_root(idmap: IdMap | None) -> Iterator[None]:
    """In this thread: fsuid/fsgid the container root's host ids, the file
    capabilities raised again (a non-zero fsuid drops them from the effective
    set; fsuid 0 again restores them)."""
    if idmap is None:
        yield
        return
    from supervisor.runtime import linux

    linux.set_fs_ids(idmap.uid, idmap.gid)
    try:
        _, permitted, _ = linux.capget()
        linux.capset(permitted, permitted, 0)
        yield
    finally:
        linux.set_fs_ids(0, 0)


def _add(
    tar: tarfile.TarFile, dirfd: int, name: str, arcname: str, idmap: IdMap | None = None
) -> None:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    info = tarfile.TarInfo(arcname)
    if idmap is None:
        info.uid, info.gid = st.st_uid, st.st_gid
    else:
        info.uid, info.gid = (
            _inner(st.st_uid, idmap.uid, idmap),
            _inner(st.st_gid, idmap.gid, idmap),
        )
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        with os.fdopen(fd, "rb") as f:
            info.size = os.fstat(fd).st_size
            tar.addfile(info, f)
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd
        )
        try:
            for entry in sorted(os.listdir(fd)):
                _add(tar, fd, entry, f"{arcname}/{entry}", idmap)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(name, dir_fd=dirfd)
        tar.addfile(info)
    # devices, fifos, sockets: not copied


def write_tar(rootfd: int, path: str, out: IO[bytes], idmap: IdMap | None = None) -> None:
    """Archive `path` (inside the root) to `out`; its entry is named by the
    path's last component ("." for the root itself). idmap: the root shows
    the ids shifted by it (`shifted_view`)."""
    path = normalize(path)
    parent, name = posixpath.split(path)
    try:
        pfd = open_dir(rootfd, parent)
    except OSError as exc:
        raise ArchiveError(exc.errno or errno.ENOENT, f"{path}: {exc.strerror}") from None
    try:
        if not name:  # the root itself
            name = "."
        try:
            os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise ArchiveError(exc.errno or errno.ENOENT, f"{path}: {exc.strerror}") from None
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, pfd, name, name, idmap)
    finally:
        os.close(pfd)


def _clear(dirfd: int, name: str, keep_dir: bool) -> None:
    """Make room for a new entry: an existing non-directory is replaced (a
    symlink in particular is never written through)."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        raise ArchiveError(errno.EISDIR, f"{name}: cannot overwrite a directory with a file")
    os.unlink(name, dir_fd=dirfd)


def extract_tar(
    rootfd: int, dest: str, src: IO[bytes], *, owners: bool = True, idmap: IdMap | None = None
) -> int:
    """Extract an archive made by write_tar to `dest` inside the root, as
    `cp -a` would: into dest when it is an existing directory, else as dest
    (the archive's top entry renamed). Returns the number of entries.
    idmap: the root shows ids shifted by it; owners are shifted alike (an
    owner outside the range is left to the creator)."""

    def ids(member: tarfile.TarInfo) -> tuple[int, int] | None:
        if idmap is None:
            return member.uid, member.gid
        if member.uid >= idmap.size or member.gid >= idmap.size:
            return None
        return idmap.host_uid(member.uid), idmap.host_gid(member.gid)

    must_be_dir = dest.endswith("/")  # "dir/": an existing directory, as cp wants
    dest = normalize(dest)
    try:
        fd = open_dir(rootfd, dest)
        os.close(fd)
        base, rename = dest, None
    except OSError as exc:
        if exc.errno != errno.ENOENT or must_be_dir:
            raise ArchiveError(exc.errno or errno.EIO, f"{dest}: {exc.strerror}") from None
        base, rename = posixpath.split(dest)
        if not rename:
            raise ArchiveError(errno.ENOENT, f"{dest}: no such directory") from None
    count = 0
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    with tarfile.open(fileobj=src, mode="r|") as tar:
        for member in tar:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if ".." in parts:
                continue  # never made by write_tar
            if rename is not None:
                parts = [rename, *parts[1:]] if parts else [rename]
            if not parts:
                continue  # the archived root itself: dest is that directory
            target = posixpath.join(base, *parts)
            parent, name = posixpath.split(normalize(target))
            if not name:
                continue
            try:
                pfd = open_dir(rootfd, parent)
            except OSError as exc:
                raise ArchiveError(exc.errno or errno.EIO, f"{parent}: {exc.strerror}") from None
            try:
                if member.isdir():
                    _clear(pfd, name, keep_dir=True)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=pfd)
                    dirs.append((normalize(target), member))  # modes after the contents
                elif member.isreg():
                    _clear(pfd, name, keep_dir=False)
                    fd = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=pfd,
                    )
                    with os.fdopen(fd, "wb") as f:
                        data = tar.extractfile(member)
                        if data is not None:
                            shutil.copyfileobj(data, f, 1 << 20)
                        if owners and (owner := ids(member)) is not None:
                            with contextlib.suppress(PermissionError):
                                os.fchown(f.fileno(), *owner)
                        os.fchmod(f.fileno(), member.mode & 0o7777)
                        os.utime(f.fileno(), (member.mtime, member.mtime))
                elif member.issym():
                    _clear(pfd, name, keep_dir=False)
                    os.symlink(member.linkname, name, dir_fd=pfd)
                    if owners and (owner := ids(member)) is not None:
                        with contextlib.suppress(PermissionError):
                            os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
                else:
                    continue
            except OSError as exc:
                raise ArchiveError(exc.errno or errno.EIO, f"{target}: {exc.strerror}") from None
            finally:
                os.close(pfd)
            count += 1
    for path, member in reversed(dirs):
        fd = openat2(rootfd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if owners and (owner := ids(member)) is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, *owner)
            os.fchmod(fd, member.mode & 0o7777)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
    return count
