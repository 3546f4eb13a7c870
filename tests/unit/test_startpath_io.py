"""The start path's I/O helpers: state files written by a background
thread, and inotify fds closed off the caller's thread."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from supervisor.daemon import statefile
from supervisor.inotify import IN_MODIFY, Inotify


def test_later_writes_land_newest_last(tmp_path: Path) -> None:
    """later=True: written by the background thread; after flush() the file
    holds the newest content, and no temporary file is left."""
    path = tmp_path / "state.json"
    for i in range(50):
        statefile.write_json(str(path), {"state": "running", "n": i}, later=True)
    assert statefile.flush(timeout_s=30)
    assert json.loads(path.read_text()) == {"state": "running", "n": 49}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_write_in_place_is_never_overwritten_by_an_older_pending_one(tmp_path: Path) -> None:
    """A stop (sync) or a "started" (sync=False: in place at once) right
    after transitions still pending: its content is there before write_json
    returns and stays, whatever the background thread had not written."""
    for i in range(20):
        path = tmp_path / f"s{i}.json"
        statefile.write_json(str(path), {"state": "starting"}, later=True)
        statefile.write_json(str(path), {"state": "running"}, later=True)
        statefile.write_json(str(path), {"state": "stopped"}, sync=i % 2 == 0)
        assert statefile.read_json(str(path)) == {"state": "stopped"}
    assert statefile.flush(timeout_s=30)
    for i in range(20):
        assert statefile.read_json(str(tmp_path / f"s{i}.json")) == {"state": "stopped"}


def test_forget_drops_pending_writes_before_a_directory_is_removed(tmp_path: Path) -> None:
    """rm right after a transition: nothing is written into the directory
    after forget(), so it can be removed; later writes elsewhere go on."""
    for i in range(20):
        d = tmp_path / f"c{i}"
        d.mkdir()
        statefile.write_json(str(d / "state.json"), {"n": 1}, sync=False)
        statefile.write_json(str(d / "state.json"), {"n": 2}, later=True)
        statefile.forget(str(d / "state.json"))
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
    statefile.write_json(str(tmp_path / "after.json"), {"ok": 1}, later=True)
    assert statefile.flush(timeout_s=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.json"]
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
