"""The start path's I/O helpers: state files written without waiting for
the disk, and inotify fds closed off the caller's thread."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from supervisor.daemon import statefile
from supervisor.inotify import IN_MODIFY, Inotify


def test_an_unsynced_state_file_is_in_place_at_once(tmp_path: Path) -> None:
    """sync=False: renamed into place before write_json returns (a restarted
    daemon reads it), no temporary file left; the fsync comes later."""
    path = tmp_path / "state.json"
    statefile.write_json(str(path), {"state": "running"}, sync=False)
    assert json.loads(path.read_text()) == {"state": "running"}
    statefile.write_json(str(path), {"state": "exited"}, sync=False)
    assert statefile.read_json(str(path)) == {"state": "exited"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_unsynced_file_removed_at_once_is_no_error(tmp_path: Path) -> None:
    """rm right after a transition: the background fsync finds nothing."""
    d = tmp_path / "c"
    d.mkdir()
    statefile.write_json(str(d / "state.json"), {}, sync=False)
    (d / "state.json").unlink()
    d.rmdir()
    statefile.write_json(str(tmp_path / "after.json"), {"ok": 1}, sync=False)
    assert statefile.read_json(str(tmp_path / "after.json")) == {"ok": 1}


def _is_inotify(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    except OSError:
        return False


def test_a_watched_inotify_fd_is_closed_in_the_background(tmp_path: Path) -> None:
    ino = Inotify()
    ino.add_watch(str(tmp_path), IN_MODIFY)
    fd = ino.fd
    assert _is_inotify(fd)
    ino.close()
    assert ino.fd == -1
    deadline = time.monotonic() + 10
    while _is_inotify(fd) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _is_inotify(fd)
    ino.close()  # twice is fine


def test_an_unwatched_inotify_fd_is_closed_at_once() -> None:
    ino = Inotify()
    fd = ino.fd
    ino.close()
    assert not _is_inotify(fd)
