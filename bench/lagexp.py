"""The trio loop's wake-up lag while scrapes run back to back: in a thread
of the same process (sharing the GIL), in another process, or in another
process at nice 10. Over the live cgroups of a parent that already has
running containers (e.g. a benchmark daemon's), read only:

    python -m bench.lagexp PARENT {none,thread,thread-si0.001,process,process10} [SECONDS]

Prints the scrapes done and the overshoot of a 1 ms trio.sleep (median,
p99, max). bench/RESULTS.md has the numbers this measured."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

import trio


def _collector(parent: str) -> object:
    from exporters.collector import ContainerCollector
    from exporters.view import ContainerView
    from supervisor.cgroups import open_manager
    from supervisor.cgroups._fs import stat_fd_budget

    mgr = open_manager("/sys/fs/cgroup", parent, stat_fds=stat_fd_budget())
    base = f"/sys/fs/cgroup/pids/{parent}"
    if not os.path.isdir(base):
        base = f"/sys/fs/cgroup/{parent}"
    names = sorted(n for n in os.listdir(base) if os.path.isdir(os.path.join(base, n)))
    views = tuple(
        ContainerView(
            name=n,
            cgroup_name=n,
            cgroup_path=mgr.path(n),
            image="/rootfs",
            state="running",
            restart_count=0,
            exit_code=None,
            started_at=time.time(),
            backoff_s=None,
        )
        for n in names
    )
    return ContainerCollector(mgr, lambda: views)


def main(argv: list[str]) -> int:
    parent, mode = argv[0], argv[1]
    seconds = float(argv[2]) if len(argv) > 2 else 6.0
    if mode == "child":
        os.nice(int(argv[3]))
        c = _collector(parent)
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            c.render()  # type: ignore[attr-defined]
            n += 1
        print(n)
        return 0
    stop = threading.Event()
    count = [0]

    def scraper() -> None:
        c = _collector(parent)
        while not stop.is_set():
            c.render()  # type: ignore[attr-defined]
            count[0] += 1

    async def probe() -> None:
        lags: list[float] = []
        proc = None
        if mode.startswith("thread-si"):
            sys.setswitchinterval(float(mode.removeprefix("thread-si")))
        if mode.startswith("thread"):
            threading.Thread(target=scraper, daemon=True).start()
        elif mode.startswith("process"):
            nice = mode.removeprefix("process") or "0"
            argv = [sys.executable, "-m", "bench.lagexp", parent, "child", str(seconds), nice]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
        await trio.sleep(0.5)
        end = time.monotonic() + seconds - 1
        while time.monotonic() < end:
            t = time.monotonic()
            await trio.sleep(0.001)
            lags.append((time.monotonic() - t - 0.001) * 1000)
        stop.set()
        if proc is not None:
            count[0] = int(proc.communicate()[0])
        lags.sort()
        print(
            f"{mode:16s} scrapes {count[0]:3d} lag median {statistics.median(lags):.2f} "
            f"p99 {lags[int(len(lags) * 0.99)]:.2f} max {lags[-1]:.1f} ms "
            f"load {os.getloadavg()[0]:.1f}"
        )

    trio.run(probe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
