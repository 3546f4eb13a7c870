"""The supervision task under trio's autojump clock (jumping only after 50 ms
of real idleness, so that a cgroup write in a worker thread is not mistaken
for sleeping): restart decisions play
out in virtual time, with a fake zygote and fake cgroups (pure logic only;
the same paths run for real in tests/e2e)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from supervisor.cgroups import Limits
from supervisor.daemon.containers import ContainerManager
from supervisor.daemon.events import EventBus
from supervisor.daemon.reaper import Reaper
from supervisor.runtime.spec import LaunchSpec
from supervisor.runtime.zygote import Launched


class FakeCgroups:
    layout = "v2"

    def __init__(self) -> None:
        self.created: list[str] = []
        self.removed: list[str] = []

    def create(self, name: str, limits: Limits) -> None:
        self.created.append(name)

    def set_devices(self, name: str, rules: object) -> None:
        pass

    def remove(self, name: str) -> None:
        self.removed.append(name)

    def kill(self, name: str, timeout_s: float = 10.0) -> None:
        pass

    def path(self, name: str) -> str:
        return f"/fake/{name}"

    def procs_files(self, name: str) -> list[str]:
        return []

    def oom_kill_file(self, name: str) -> str | None:
        return None


class FakeZygote:
    """Each launch is a 'process' that exits with `code` after `run_s`
    virtual seconds: the pidfd is the read end of a pipe that becomes
    readable when the write end is closed."""

    def __init__(self, nursery: trio.Nursery, code: int, run_s: float) -> None:
        self.nursery = nursery
        self.code = code
        self.run_s = run_s
        self.launch_times: list[float] = []

    async def launch(self, spec: LaunchSpec) -> Launched:
        now = trio.current_time()
        self.launch_times.append(now)
        r, w = os.pipe()

        async def live() -> None:
            await trio.sleep(self.run_s)
            Path(spec.exit_path).write_text(
                json.dumps({"exit_code": self.code, "finished_at": now + self.run_s})
            )
            os.close(w)

        self.nursery.start_soon(live)
        return Launched(pid=10**7 + len(self.launch_times), pidfd=r, workload_pid=1, started_at=now)


def make_manager(tmp_path: Path, zygote: FakeZygote, cgroups: FakeCgroups) -> ContainerManager:
    return ContainerManager(
        state_dir=str(tmp_path),
        zygote=zygote,  # type: ignore[arg-type]
        cgroups=cgroups,  # type: ignore[arg-type]
        reaper=Reaper(),
        events=EventBus(),
        host_cpus=2,
    )


def spec(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    true = rootfs / "bin" / "true"
    true.write_text("#!/bin/sh\n")
    true.chmod(0o755)
    return {"name": "c", "rootfs": str(rootfs), "command": ["/bin/true"], **extra}


def test_on_failure_3_restarts_three_times_with_doubling_delays(tmp_path: Path) -> None:
    async def main() -> list[float]:
        async with trio.open_nursery() as nursery:
            zygote = FakeZygote(nursery, code=1, run_s=1.0)
            m = make_manager(tmp_path / "state", zygote, FakeCgroups())
            m.attach_nursery(nursery)
            m.create(spec(tmp_path, restart="on-failure:3"))
            await m.start("c")
            c = m.get("c")
            while not (c.state == "exited" and not c.supervised):
                await c.changed.wait()
            assert c.restart_count == 3 and c.exit_code == 1
            return zygote.launch_times

    times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # each run lasts 1 s, then the backoff: 0.1, 0.2, 0.4 s
    assert gaps == pytest.approx([1.1, 1.2, 1.4])


def test_a_long_run_resets_the_backoff(tmp_path: Path) -> None:
    async def main() -> list[float]:
        async with trio.open_nursery() as nursery:
            zygote = FakeZygote(nursery, code=0, run_s=15.0)  # longer than reset_after (10 s)
            m = make_manager(tmp_path / "state", zygote, FakeCgroups())
            m.attach_nursery(nursery)
            m.create(spec(tmp_path, restart="always"))
            await m.start("c")
            while len(zygote.launch_times) < 4:
                await trio.sleep(1)
            nursery.cancel_scope.cancel()  # the fake's pipes cannot take a stop signal
        return zygote.launch_times

    times = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:3] == pytest.approx([15.1, 15.1, 15.1])


def test_stop_during_backoff_cancels_the_restart(tmp_path: Path) -> None:
    async def main() -> tuple[int, str]:
        async with trio.open_nursery() as nursery:
            zygote = FakeZygote(nursery, code=1, run_s=0.5)
            m = make_manager(tmp_path / "state", zygote, FakeCgroups())
            m.attach_nursery(nursery)
            m.create(spec(tmp_path, restart="always", backoff_initial="30s"))
            await m.start("c")
            c = m.get("c")
            while c.state != "restarting":
                await c.changed.wait()
            await m.stop("c")
            await trio.sleep(120)  # long past the 30 s backoff
            return len(zygote.launch_times), c.state

    launches, state = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))
    assert launches == 1
    assert state == "exited"
