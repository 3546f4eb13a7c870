"""The monitor as PID 1 and log/exit keeper, the launch protocol, the zygote.
Docstrings are the specification."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import time
from pathlib import Path

import pytest
import trio

from supervisor.runtime.spec import Mount, Namespaces
from supervisor.runtime.zygote import Launched, LaunchError, Zygote

from .conftest import Launcher, wait_readable, wait_until

pytestmark = pytest.mark.kernel

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def _pidns_members(monitor_pid: int) -> dict[int, str]:
    """Host pid -> state letter of every process in the monitor's pid ns."""
    target = os.readlink(f"/proc/{monitor_pid}/ns/pid")
    members: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != target:
                continue
            with open(f"/proc/{entry}/status") as f:
                state = next(line for line in f if line.startswith("State:")).split()[1]
        except (OSError, StopIteration):
            continue  # gone meanwhile
        members[int(entry)] = state
    return members


# --- PID 1 -----------------------------------------------------------------


def test_orphans_are_reaped(launcher: Launcher) -> None:
    """200 orphaned grandchildren that exit leave no zombie: the monitor, as
    PID 1 of the container, reaps every one of them."""
    c = launcher.start(
        ["sh", "-c", "for i in $(seq 200); do (sleep 0.01 &); done; echo spawned; exec sleep 1000"]
    )
    c.wait_output("spawned")

    def settled() -> bool:
        members = _pidns_members(c.pid)
        return "Z" not in members.values() and len(members) == 2  # monitor + sleep

    wait_until(settled, what="the orphans to be reaped")
    assert set(_pidns_members(c.pid)) == {c.pid, c.launched.workload_pid}


def test_signals_are_forwarded_to_the_workload(launcher: Launcher) -> None:
    """SIGUSR1 and SIGTERM sent to the monitor reach the workload's traps; the
    exit code the trap chose is in the exit file."""
    c = launcher.start(
        [
            "sh",
            "-c",
            "trap 'echo got USR1' USR1; trap 'echo got TERM; exit 3' TERM; "
            "echo ready; while :; do sleep 0.05; done",
        ]
    )
    c.wait_output("ready")
    c.signal(signal.SIGUSR1)
    c.wait_output("got USR1")
    c.signal(signal.SIGTERM)
    record = c.wait()
    assert "got TERM" in c.output()
    assert record["exit_code"] == 3 and record["signal"] is None
    assert c.status == 3


@pytest.mark.parametrize(
    ("script", "code", "sig"),
    [("exit 0", 0, None), ("exit 7", 7, None), ("kill -9 $$", 137, 9), ("kill -TERM $$", 143, 15)],
)
def test_exit_codes(launcher: Launcher, script: str, code: int, sig: int | None) -> None:
    """The exit file says exit_code (128+signal when killed) and signal; the
    monitor exits with the same code."""
    r = launcher.run(script)
    assert r.exit["exit_code"] == code
    assert r.exit["signal"] == sig
    assert r.exit["oom_killed"] is False
    assert r.exit["started_at"] <= r.exit["finished_at"]
    assert r.container.status == code


def test_teardown_kills_leftovers_after_the_grace_period(launcher: Launcher) -> None:
    """When the workload exits, what is left gets SIGTERM, and SIGKILL after
    teardown_grace_s; a TERM-ignoring orphan delays the exit by the grace."""
    c = launcher.start(
        [
            "sh",
            "-c",
            "(trap '' TERM; touch /tmp/ignoring; exec sleep 1000) & "
            "while [ ! -e /tmp/ignoring ]; do sleep 0.01; done; exit 5",
        ],
        teardown_grace_s=0.5,
        mounts=(Mount(type="tmpfs", destination="/tmp"),),
    )
    t0 = time.monotonic()
    record = c.wait()
    elapsed = time.monotonic() - t0
    assert record["exit_code"] == 5
    assert 0.4 <= elapsed < 10


def test_teardown_is_quick_when_leftovers_obey_term(launcher: Launcher) -> None:
    c = launcher.start(["sh", "-c", "sleep 1000 & exit 0"], teardown_grace_s=20)
    t0 = time.monotonic()
    assert c.wait()["exit_code"] == 0
    assert time.monotonic() - t0 < 10


# --- logs ------------------------------------------------------------------


def test_log_is_docker_json_lines(launcher: Launcher) -> None:
    """One JSON object per line with log, stream and an RFC 3339 nano UTC
    time; an unterminated last line is flushed at EOF."""
    r = launcher.run("echo out; echo err >&2; printf partial")
    entries = r.container.logs()
    assert [(e["stream"], e["log"]) for e in entries if e["stream"] == "stdout"] == [
        ("stdout", "out\n"),
        ("stdout", "partial"),
    ]
    assert [e["log"] for e in entries if e["stream"] == "stderr"] == ["err\n"]
    for e in entries:
        assert set(e) == {"log", "stream", "time"}
        assert RFC3339_NANO.match(e["time"]), e["time"]
    with open(r.container.spec.log_path) as f:
        assert f.readline().startswith('{"log":"')


def test_long_lines_are_split_at_16k(launcher: Launcher) -> None:
    r = launcher.run("head -c 40000 /dev/zero | tr '\\0' a; echo")
    sizes = [len(e["log"]) for e in r.container.logs()]
    assert sizes == [16384, 16384, 40001 - 2 * 16384]
    assert r.stdout == "a" * 40000 + "\n"


# --- what the workload inherits --------------------------------------------


def test_no_fds_beyond_stdio(launcher: Launcher) -> None:
    """Inside, ls sees 0, 1, 2 and its own directory fd (3); from the host the
    workload holds exactly 0, 1, 2."""
    r = launcher.run("ls /proc/self/fd")
    assert sorted(r.stdout.split()) == ["0", "1", "2", "3"]
    c = launcher.start(["sleep", "1000"])
    assert sorted(os.listdir(f"/proc/{c.launched.workload_pid}/fd")) == ["0", "1", "2"]


def test_monitor_is_non_dumpable_and_in_the_host_mount_namespace(launcher: Launcher) -> None:
    """Container root cannot read the monitor's environment, root or fds
    (non-dumpable, and it holds capabilities the container lacks); the
    monitor stays in the host's mount namespace, the workload does not."""
    r = launcher.run("cat /proc/1/environ; ls /proc/1/root/; ls /proc/1/cwd/; echo done")
    assert r.stderr.count("Permission denied") == 3, r.stderr
    c = launcher.start(["sleep", "1000"])
    host_mnt = os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{c.pid}/ns/mnt") == host_mnt
    assert os.readlink(f"/proc/{c.launched.workload_pid}/ns/mnt") != host_mnt
    with open(f"/proc/{c.pid}/comm") as f:
        assert f.read() == "nsvisor-monitor\n"


def test_missing_command_is_a_launch_error(launcher: Launcher) -> None:
    """exec of a command that does not exist: the launch raises with the
    command, the rootfs and the errno text; the exit file says 127."""
    with pytest.raises(
        LaunchError, match=r"exec 'no-such-httpd' in rootfs /.*: No such file or directory"
    ) as e:
        launcher.start(["no-such-httpd"])
    _assert_monitor_exit(e.value, launcher, 127)


def test_non_executable_command_exits_126(launcher: Launcher) -> None:
    with pytest.raises(LaunchError, match="Permission denied") as e:
        launcher.start(["/etc/passwd"])
    _assert_monitor_exit(e.value, launcher, 126)


def test_setup_failure_names_the_step(launcher: Launcher, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"set up mounts: .*No such file") as e:
        launcher.start(
            ["true"],
            mounts=(Mount(type="bind", source=str(tmp_path / "missing"), destination="/x"),),
        )
    _assert_monitor_exit(e.value, launcher, 125)


def _assert_monitor_exit(err: LaunchError, launcher: Launcher, code: int) -> None:
    assert err.pid is not None
    pidfd = os.pidfd_open(err.pid)
    try:
        assert wait_readable(pidfd)
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        assert result is not None and result.si_status == code
        launcher.failed_pids.remove(err.pid)
    finally:
        os.close(pidfd)
    exit_file = launcher.tmp / f"t{launcher.count}.exit"
    assert json.loads(exit_file.read_text())["exit_code"] == code


# --- OOM -------------------------------------------------------------------


def test_oom_kill_is_recorded(launcher: Launcher) -> None:
    """A workload killed by the OOM killer in its memory cgroup: exit 137 and
    oom_killed true (from the oom_kill counter in memory.oom_control)."""
    memory = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(memory, "memory.oom_control")):
        pytest.skip("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory on this host")
    path = os.path.join(memory, f"nsvisor-rt-oom-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(32 * 1024 * 1024))
        with (
            contextlib.suppress(OSError),
            open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w") as f,
        ):
            f.write(str(32 * 1024 * 1024))
        r = launcher.run(
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            cgroup_procs=(os.path.join(path, "cgroup.procs"),),
            oom_kill_file=os.path.join(path, "memory.oom_control"),
        )
        assert r.exit["oom_killed"] is True
        assert r.exit["exit_code"] == 137
    finally:
        wait_until(lambda: not Path(path, "cgroup.procs").read_text().strip())
        os.rmdir(path)


# --- the zygote --------------------------------------------------------------


def test_zygote_launches_concurrently_and_reports_errors(launcher: Launcher) -> None:
    """Through the zygote: five containers launched at once all start and exit
    0; a missing command raises LaunchError; the zygote closes cleanly. Prints
    the median launch latency of /bin/true."""
    zygote = Zygote.spawn()
    latencies: list[float] = []
    launched: list[Launched] = []
    failed: list[int] = []

    async def main() -> None:
        async def one(i: int) -> None:
            spec = launcher.spec(["/bin/true"], name=f"z{i}")
            t0 = time.perf_counter()
            result = await zygote.launch(spec)
            latencies.append(time.perf_counter() - t0)
            launched.append(result)
            await trio.lowlevel.wait_readable(result.pidfd)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
            for i in range(5, 12):  # sequential, for the latency
                await one(i)
            with pytest.raises(LaunchError, match="No such file") as err:
                await zygote.launch(launcher.spec(["nope"], name="zmissing"))
            assert err.value.pid is not None
            failed.append(err.value.pid)

    try:
        trio.run(main)
    finally:
        for lch in launched:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, lch.pidfd, os.WEXITED)
            os.close(lch.pidfd)
        zygote.close()
        launcher.failed_pids += failed  # its monitor exits by itself; reaped by pid
    assert len(launched) == 12
    for i in range(12):
        assert (launcher.tmp / f"z{i}.exit").read_text().startswith('{"exit_code": 0')
    print(
        f"zygote launch latency /bin/true: median {statistics.median(latencies[5:]) * 1000:.1f} ms"
    )


def test_host_pid_namespace_terminates_only_the_workloads_session(launcher: Launcher) -> None:
    """With pid "host" the monitor is not PID 1 (kill(-1) would hit the host):
    it is a subreaper, and teardown signals only the workload's session."""
    c = launcher.start(
        ["sh", "-c", "sleep 1000 & echo $!; exit 4"], namespaces=Namespaces(pid="host")
    )
    record = c.wait()
    assert record["exit_code"] == 4
    leftover = int(c.output().split()[0])
    assert leftover != 1
    assert not os.path.exists(f"/proc/{leftover}") or _state(leftover) == "Z"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line for line in f if line.startswith("State:")).split()[1]


def test_launch_fails_cleanly_when_the_zygote_is_gone(launcher: Launcher) -> None:
    """A dead zygote is a LaunchError at the next launch, not a hang."""
    zygote = Zygote.spawn()
    os.kill(zygote.pid, signal.SIGKILL)
    os.waitpid(zygote.pid, 0)

    async def main() -> None:
        with trio.fail_after(30), pytest.raises(LaunchError, match="zygote"):
            await zygote.launch(launcher.spec(["true"]))

    try:
        trio.run(main)
    finally:
        zygote.close()
