"""A minimal inotify seam (ctypes), so tasks wait on file changes instead of
polling: log files for `logs -f`, cgroup.events for emptiness, memory.events
for limit hits. The fd is non-blocking; trio waits on it with wait_readable.

Closing an inotify fd that has (or had) a watch waits in the kernel for an
SRCU grace period (fsnotify_destroy_group): 6-18 ms measured on the build
machines, on the daemon's trio thread, in the middle of every attached `run`
(its log follower) and every container exit on v2 (memwatch). close() hands
such an fd to one background thread that closes it; the fd number stays
allocated (and unusable by anyone else) until then.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import struct
import threading

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_EVENT = struct.Struct("iIII")


class Inotify:
    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self._watched = False

    def add_watch(self, path: str, mask: int) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", path)
        self._watched = True
        return int(wd)

    def drain(self) -> list[tuple[int, int, str]]:
        """Read every pending event: (watch descriptor, mask, name)."""
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                raw = buf[off + _EVENT.size : off + _EVENT.size + length]
                out.append((wd, mask, raw.rstrip(b"\0").decode(errors="replace")))
                off += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            if self._watched:
                _close_in_background(self.fd)
            else:
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_closing: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None
_closer_lock = threading.Lock()


def _close_loop() -> None:
    while True:
        fd = _closing.get()
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_in_background(fd: int) -> None:
    global _closer
    with _closer_lock:
        if _closer is None or not _closer.is_alive():  # none yet, or this is a fork
            _closer = threading.Thread(target=_close_loop, name="inotify-close", daemon=True)
            _closer.start()
    _closing.put(fd)
