"""Logs: json-lines files rotated by the monitor (Docker's max-size /
max-file), `logs` reading the rotated files in order, `logs -f` following
across rotation, `--since` and `--timestamps`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_supervision import until

pytestmark = [pytest.mark.e2e]

# 400 numbered lines of ~100 bytes of JSON each, paced so a follower keeps up
# (a follower slower than max-file rotations loses lines, as with Docker).
WRITER = (
    "echo ready; while [ ! -e /ctl/go ]; do sleep 0.05; done; i=0; "
    'while [ $i -lt 400 ]; do echo "line $i padding-padding-padding"; i=$((i+1)); '
    "if [ $((i % 40)) = 0 ]; then sleep 0.05; fi; done; echo done; exec sleep 1000"
)


def test_rotation_at_a_small_max_size_with_logs_f_across_it(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    d.cli(
        "run", "-d", "--name", "rot", "--log-opt", "max-size=4k", "--log-opt", "max-file=3",
        "-v", f"{ctl}:/ctl", d.rootfs, "--", "sh", "-c", WRITER,
    )  # fmt: skip
    follower = d.popen("logs", "-f", "rot")
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "ready\n"  # following before the burst
        (ctl / "go").touch()
        cdir = Path(d.state_dir) / "containers" / "rot"
        until(lambda: "done" in d.cli("logs", "--tail", "1", "rot").stdout, what="the burst")
        d.cli("stop", "-t", "1", "rot")
        rest, _ = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    lines = rest.splitlines()
    expected = [f"line {i} padding-padding-padding" for i in range(400)] + ["done"]
    assert lines == expected, (len(lines), lines[:3], lines[-3:])

    files = sorted(p.name for p in cdir.iterdir() if p.name.startswith("container.log"))
    assert files == ["container.log", "container.log.1", "container.log.2"], files
    for name in files:
        size = (cdir / name).stat().st_size
        assert size <= 4096, (name, size)
    # `logs` reads the rotated files oldest first: a consecutive tail of the burst.
    kept = d.cli("logs", "rot").stdout.splitlines()
    assert kept[-1] == "done" and 30 < len(kept) < 401
    assert kept == expected[len(expected) - len(kept) :]


def test_since_and_timestamps(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli(
        "run", "-d", "--name", "ts", d.rootfs, "--",
        "sh", "-c", "for i in 1 2 3; do echo l$i; sleep 0.3; done; exec sleep 1000",
    )  # fmt: skip
    until(lambda: "l3" in d.cli("logs", "ts").stdout, what="three lines")
    stamped = d.cli("logs", "-t", "ts").stdout.splitlines()
    assert [s.split(" ", 1)[1] for s in stamped] == ["l1", "l2", "l3"]
    t2 = stamped[1].split(" ", 1)[0]
    assert t2.endswith("Z") and len(t2) == len("2026-01-02T15:04:05.123456789Z")
    assert d.cli("logs", "--since", t2, "ts").stdout.splitlines() == ["l2", "l3"]
    assert d.cli("logs", "--since", "1h", "ts").stdout.splitlines() == ["l1", "l2", "l3"]
    raw = (Path(d.state_dir) / "containers" / "ts" / "container.log").read_text().splitlines()
    assert json.loads(raw[0])["stream"] == "stdout"
    r = d.cli("logs", "--since", "yesterday-ish", "ts", check=False)
    assert r.returncode == 2 and "--since" in r.stderr
