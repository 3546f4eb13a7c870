"""The pure parts of interactive use, stats, cp and completion."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from exporters.view import ContainerView
from supervisor.archive import extract_tar, normalize, write_tar
from supervisor.attachclient import DetachScanner, parse_detach_keys
from supervisor.cgroups.stats import IoDevice, Stats
from supervisor.cli import build_parser
from supervisor.completion import bash, commands, zsh
from supervisor.cpclient import parse_ref
from supervisor.daemon.stats import (
    container_row,
    cpu_percent,
    parse_proc_stat_total_ns,
)
from supervisor.runtime.monitor import frame, parse_frames
from supervisor.statsview import binary_size, decimal_size, plain_table


def test_detach_keys_parse_like_docker() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    assert parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    assert parse_detach_keys("") == b""
    with pytest.raises(ValueError):
        parse_detach_keys("ctrl-pq")


def test_detach_scanner_holds_a_partial_sequence_and_releases_it() -> None:
    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)  # ^P held back
    assert s.feed(b"x") == (b"\x10x", False)  # not the sequence: sent as typed
    assert s.feed(b"\x10\x10") == (b"\x10", False)  # the second ^P may start it
    assert s.feed(b"\x11rest") == (b"", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)


def test_frames_round_trip_and_partial_frames_wait() -> None:
    data = frame(b"i", b"hello") + frame(b"e", b"") + frame(b"r", b"\x00\x18\x00\x50")
    buf = bytearray(data[:-2])
    assert parse_frames(buf) == [(b"i", b"hello"), (b"e", b"")]
    buf += data[-2:]
    assert parse_frames(buf) == [(b"r", b"\x00\x18\x00\x50")] and not buf


def test_cpu_percent_is_dockers_formula() -> None:
    # 0.5 s of cpu over 1 s of wall time on 4 CPUs (system delta 4 s): 50 %.
    assert cpu_percent(1_500_000_000, 1_000_000_000, 14_000_000_000, 10_000_000_000, 4) == 50.0
    assert cpu_percent(1, None, 2, 1, 4) is None
    assert cpu_percent(5, 10, 20, 10, 4) == 0.0


def test_proc_stat_total() -> None:
    text = "cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 1 2 3\n"
    assert parse_proc_stat_total_ns(text, clk_tck=100) == 1150 * 10_000_000


def test_container_row() -> None:
    view = ContainerView(
        name="web", cgroup_name="web", cgroup_path="/n/web", image="/r", state="running",
        restart_count=2, exit_code=None, started_at=None, backoff_s=None, workload_pid=None,
        health="healthy",
    )  # fmt: skip
    s = Stats(
        memory_usage=300, memory_inactive_file=100, memory_limit=1000, pids_current=3,
        io=[IoDevice(8, 0, read_bytes=5, write_bytes=7), IoDevice(8, 16, read_bytes=1)],
    )  # fmt: skip
    row = container_row(view, s, (10, 20), cpu=12.345, host_memory=4000)
    assert row["memory_usage"] == 200 and row["memory_limit"] == 1000
    assert row["memory_percent"] == 20.0 and row["cpu_percent"] == 12.35
    assert (row["block_read_bytes"], row["block_write_bytes"]) == (6, 7)
    assert (row["net_rx_bytes"], row["pids"], row["restarts"]) == (10, 3, 2)
    # No limit (or v1's "unlimited" huge number): the host's memory.
    assert (
        container_row(view, Stats(memory_usage=1), None, cpu=None, host_memory=4000)["memory_limit"]
        == 4000
    )


def test_sizes_and_plain_table() -> None:
    assert binary_size(64 * 1024 * 1024) == "64MiB" and binary_size(None) == "--"
    assert decimal_size(1500) == "1.5kB" and decimal_size(0) == "0B"
    assert plain_table(("A", "BB"), [("xyz", "1")]) == "A     BB\nxyz   1\n"


def test_cp_refs() -> None:
    assert parse_ref("box:/etc") == ("box", "/etc")
    assert parse_ref("box:") == ("box", "/")
    assert parse_ref("./a:b") == (None, "./a:b")
    assert parse_ref("/abs") == (None, "/abs")
    assert normalize("") == "/" and normalize("a/../../b") == "/b"


def test_archive_round_trip_stays_inside_the_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x")
    os.chmod(src / "d" / "f", 0o604)
    os.symlink("/etc/passwd", src / "d" / "link")
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        buf = io.BytesIO()
        write_tar(root, "/src", buf)
        buf.seek(0)
        (tmp_path / "dst").mkdir()
        assert extract_tar(root, "/dst", buf) == 4
        assert (tmp_path / "dst" / "src" / "d" / "f").read_text() == "x"
        assert (tmp_path / "dst" / "src" / "d" / "f").stat().st_mode & 0o777 == 0o604
        assert os.readlink(tmp_path / "dst" / "src" / "d" / "link") == "/etc/passwd"
        # An escaping symlink in the destination is resolved inside the root.
        os.symlink("../../../../../..", tmp_path / "up")
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as t:
            info = tarfile.TarInfo("new")
            info.size = 1
            t.addfile(info, io.BytesIO(b"y"))
        tar.seek(0)
        extract_tar(root, "/up/landed", tar)
        assert (tmp_path / "landed").read_text() == "y"
    finally:
        os.close(root)


def test_completion_lists_every_visible_command_and_its_options() -> None:
    parser = build_parser()
    cmds = commands(parser)
    assert "__complete" not in cmds
    assert {"run", "attach", "stats", "top", "cp", "completion"} <= set(cmds)
    assert "--detach-keys" in cmds["run"] and "--no-stream" in cmds["stats"]
    assert "complete -F _nsvisor nsvisor" in bash(parser)
    assert "compdef _nsvisor nsvisor" in zsh(parser)
