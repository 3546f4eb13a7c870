"""`python -m bench [--quick]`: nsvisor side by side with runc, crun,
unshare and fork+exec, in one table (issue 7).

1. start latency of /bin/true to exit observed, on one busybox rootfs:
   nsvisor CLI `run --rm`, the control API alone, runc, crun, unshare with
   the same namespaces, plain fork+exec; contenders interleaved run by run
   (the order rotates every round) and ratios taken pair by pair.
2. restart latency, policy always with a zero-like backoff: the monitor's
   exit file finished_at to the next workload's exec (started_at), both from
   the daemon's event stream; also the whole exec-to-exec cycle.
3. mass start: N containers created concurrently through the API until all
   are running.
4. memory: PSS of every monitor plus the daemon's RSS growth per container.
5. scrape cost at several sizes: /metrics latency, daemon CPU per scrape,
   exposition size; and item 2 again while scrapes run back to back.

Everything the benchmark creates (temp dir, rootfs, bundles, daemon,
containers, cgroups under nsvisor-bench-PID) is removed at the end, also on
failure or Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import lagprobe
from bench.nsd import Daemon, monitor_pids
from bench.oci import HiddenUnified, run_argv, write_bundle
from bench.proc import (
    BENCH_PREFIX,
    BenchError,
    cpu_seconds,
    pss_kib,
    remove_cgroup_tree,
    rss_kib,
    time_fork_exec,
    time_spawn,
    which,
)
from bench.stats import Row, Target, pairwise_ratios, row, table

MS = 1000.0
MIB = 1024.0  # KiB per MiB
IDLE_GAP_S = 0.1


@dataclass(frozen=True)
class Plan:
    start_runs: int
    warmup: int
    restarts: int
    mass_n: int
    mass_reps: int
    memory_sizes: tuple[int, ...]
    scrape_sizes: tuple[int, ...]
    scrapes: int

    @property
    def largest(self) -> int:
        return max((self.mass_n, *self.memory_sizes, *self.scrape_sizes))


FULL = Plan(
    start_runs=30,
    warmup=3,
    restarts=100,
    mass_n=200,
    mass_reps=3,
    memory_sizes=(1, 50, 200),
    scrape_sizes=(10, 100, 500),
    scrapes=20,
)
QUICK = Plan(
    start_runs=3,
    warmup=1,
    restarts=15,
    mass_n=20,
    mass_reps=1,
    memory_sizes=(1, 5, 20),
    scrape_sizes=(5, 10, 20),
    scrapes=5,
)


@dataclass
class Bench:
    plan: Plan
    tmp: Path
    tag: str
    rootfs: str = ""
    daemon: Daemon | None = None
    crun: HiddenUnified | None = None
    oci_state: dict[str, Path] = field(default_factory=dict)
    rows: list[Row | str] = field(default_factory=list)
    log: Callable[[str], None] = print

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    # ---- set-up -----------------------------------------------------------------

    def setup(self) -> None:
        # The CLI's start is measured as installed: with its modules'
        # bytecode. An editable install run with PYTHONDONTWRITEBYTECODE=1
        # (as on the build machines) has none and compiles cli.py and
        # client.py on every command (~10 ms); a regular install has it.
        self.log(f"bytecode: {_compile_bytecode()}")
        self.rootfs = str(self.tmp / "rootfs")
        subprocess.run(
            [sys.executable, "-m", "supervisor", "rootfs", "busybox", self.rootfs],
            check=True,
            capture_output=True,
        )
        self.daemon = Daemon(self.tmp, self.tag)
        self.d.start()
        self.log(f"daemon pid {self.d.pid}, cgroup parent {self.tag}, tmp {self.tmp}")

    def sleeper(self, name: str) -> dict[str, Any]:
        return {"name": name, "rootfs": self.rootfs, "command": ["/bin/sleep", "100000"]}

    # ---- 1. start latency ---------------------------------------------------------

    def start_latency(self) -> None:
        nsvisor = Path(sys.executable).with_name("nsvisor")
        cli = [str(nsvisor)] if nsvisor.exists() else [sys.executable, "-m", "supervisor"]
        cli_argv = [*cli, "--socket", self.d.socket, "run", "--rm", self.rootfs, "--", "/bin/true"]
        api_spec = {"rootfs": self.rootfs, "command": ["/bin/true"], "auto_remove": True}
        true_path = os.path.join(self.rootfs, "bin", "true")
        if os.path.islink(true_path):
            true_path = os.path.join(self.rootfs, "bin", os.readlink(true_path))

        def api() -> float:
            t0 = time.perf_counter()
            code = self.d.run_attached(api_spec)
            elapsed = time.perf_counter() - t0
            if code != 0:
                raise BenchError(f"API run exited {code}")
            return elapsed

        contenders: dict[str, Callable[[int], float]] = {
            "nsvisor CLI run --rm": lambda i: time_spawn(cli_argv),
            "nsvisor API (attach)": lambda i: api(),
        }
        oci_parent = f"{self.tag}-oci"
        for runtime in ("runc", "crun"):
            if which(runtime) is None:
                self.log(f"{runtime} not installed: skipped")
                continue
            state = self.tmp / f"{runtime}-state"
            state.mkdir()
            self.oci_state[runtime] = state
            bundle = write_bundle(
                self.tmp / f"{runtime}-bundle", self.rootfs, f"/{oci_parent}/{runtime}"
            )
            timer: Callable[[Sequence[str]], float] = time_spawn
            if runtime == "crun":
                self.crun = HiddenUnified()
                timer = self.crun.time
            contenders[f"{runtime} run"] = functools.partial(
                _time_oci, timer, runtime, state, bundle
            )
        unshare = which("unshare")
        if unshare:
            argv = [unshare, "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
                    "--mount-proc", f"--root={self.rootfs}", "/bin/true"]  # fmt: skip
            contenders["unshare (same namespaces)"] = lambda i: time_spawn(argv)
        contenders["fork+exec"] = lambda i: time_fork_exec(true_path, ["true"])
        contenders["python -c pass"] = lambda i: time_spawn([sys.executable, "-c", "pass"])
        contenders["python -c 'import supervisor.cli'"] = lambda i: time_spawn(
            [sys.executable, "-c", "import supervisor.cli"]
        )

        names = list(contenders)
        samples: dict[str, list[float]] = {n: [] for n in names}
        total = self.plan.warmup + self.plan.start_runs
        for i in range(total):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                # Let the host go idle first. On this kernel the first write
                # to a cgroup.procs after a quiet spell waits for an RCU grace
                # period (cgroup_threadgroup_rwsem's rcu_sync, ~14 ms here);
                # one right after another writer's is ~0.2 ms. Back to back,
                # whoever follows runc or nsvisor would get the cheap path.
                time.sleep(IDLE_GAP_S)
                s = contenders[name](i)
                if i >= self.plan.warmup:
                    samples[name].append(s * MS)
        self.rows.append("1. start latency, /bin/true to exit observed (busybox rootfs)")
        for name in names:
            self.rows.append(row(name, "ms", samples[name]))
        pairs = [
            ("nsvisor API (attach)", "crun run", Target("<=", 1.0)),
            ("nsvisor API (attach)", "runc run", None),
            ("nsvisor CLI run --rm", "runc run", Target("<=", 1.0)),
            ("nsvisor CLI run --rm", "crun run", None),
        ]
        for ours, theirs, target in pairs:
            if ours in samples and theirs in samples:
                ratios = pairwise_ratios(samples[ours], samples[theirs])
                label = f"ratio {ours.split(' (')[0]} / {theirs}"
                self.rows.append(row(label, "x", ratios, target))

    # ---- 2. restart latency ---------------------------------------------------------

    def restart_latency(self, count: int, label: str, scrape: bool = False) -> None:
        name = f"restart-{label.split()[0]}"
        spec: dict[str, Any] = {
            "name": name,
            "rootfs": self.rootfs,
            "command": ["/bin/true"],
            "restart": "always",
            # 0 is refused by the config ("must be more than 0"): 1 us is the
            # closest it accepts; trio.sleep(1e-6) is one trip round the loop.
            "backoff_initial": "0.000001",
            "backoff_max": "0.000001",
            "backoff_factor": 1,
        }
        stop = threading.Event()
        scrapes: list[float] = []

        def scraper() -> None:
            while not stop.is_set():
                scrapes.append(self.d.scrape()[0] * MS)

        thread = threading.Thread(target=scraper, daemon=True) if scrape else None
        events = self.d.events()
        try:
            if thread:
                thread.start()
            self.d.create_started(spec)
            exit_to_exec, cycle = _restart_gaps(events, name, count)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                events.close()  # type: ignore[attr-defined]
            if thread:
                thread.join(timeout=120)
            self.d.remove(name)
        self.rows.append(
            row(f"restart: exit file -> next exec{label[len(label.split()[0]) :]}", "ms",
                exit_to_exec, Target("<", 20.0 if scrape else 10.0))
        )  # fmt: skip
        self.rows.append(row(f"restart: exec -> next exec, /bin/true{label[len(label.split()[0]):]}", "ms", cycle))  # fmt: skip
        if scrape:
            self.rows.append(row("  scrapes meanwhile (latency)", "ms", scrapes))

    # ---- 3-5. growing the number of containers ------------------------------------

    def scale(self) -> None:
        p = self.plan
        levels = sorted({*p.memory_sizes, *p.scrape_sizes, p.mass_n})
        time.sleep(0.5)
        base_rss = rss_kib(self.d.pid) or 0
        zyg = self.d.zygote_pid()
        self.rows.append("3. mass start (API, all concurrently, until all running)")
        mass_at = len(self.rows)
        mass: list[float] = []
        mem_rows: list[Row | str] = ["4. memory per container (monitor PSS + daemon RSS growth)"]
        mem_rows.append(row("daemon RSS, idle, before containers", "MiB", [base_rss / MIB]))
        if zyg:
            mem_rows.append(row("zygote PSS (fixed cost)", "MiB", [(pss_kib(zyg) or 0) / MIB]))
        mem_rows += _cli_server_rows(self.d)
        scrape_rows: list[Row | str] = ["5. scrape cost (GET /metrics, N running sleepers)"]
        current = 0
        for level in levels:
            if level == p.mass_n:
                if current:
                    self.d.remove_all()
                    base_rss = rss_kib(self.d.pid) or base_rss
                    current = 0
                mass.append(self._mass_start(level))
            else:
                self.d.start_many(
                    [self.sleeper(f"s{i}") for i in range(current, level)], workers=32
                )
            current = level
            self.log(f"{current} containers running")
            if level in p.memory_sizes:
                mem_rows += self._memory(level, base_rss)
            if level in p.scrape_sizes:
                scrape_rows += self._scrape(level)
        self.restart_latency(p.restarts, f"scraping while {current} containers run", scrape=True)
        restart_rows = self.rows[-3:]
        del self.rows[-3:]
        for _ in range(p.mass_reps - 1):
            self.d.remove_all()
            mass.append(self._mass_start(p.mass_n))
        self.rows.insert(
            mass_at,
            row(f"{p.mass_n} containers started concurrently", "s", mass, Target("<", 10.0)),
        )
        self.rows += mem_rows
        self.rows += scrape_rows
        self.rows += restart_rows

    def memory(self) -> None:
        """Item 4 alone: the memory sizes, nothing else started."""
        p = self.plan
        time.sleep(0.5)
        base_rss = rss_kib(self.d.pid) or 0
        zyg = self.d.zygote_pid()
        self.rows.append("4. memory per container (monitor PSS + daemon RSS growth)")
        self.rows.append(row("daemon RSS, idle, before containers", "MiB", [base_rss / MIB]))
        if zyg:
            self.rows.append(row("zygote PSS (fixed cost)", "MiB", [(pss_kib(zyg) or 0) / MIB]))
        self.rows += _cli_server_rows(self.d)
        current = 0
        for level in sorted(p.memory_sizes):
            self.d.start_many([self.sleeper(f"s{i}") for i in range(current, level)], workers=32)
            current = level
            self.log(f"{current} containers running")
            self.rows += self._memory(level, base_rss)
        self.d.remove_all()

    def scrape_variants(self, variants: list[Variant]) -> None:
        """Item 5 alone, once per daemon variant, one daemon after the other
        (each starts its own sleepers; same cgroup parent, emptied between).
        Each daemon runs bench/lagprobe.py: the trio loop's wake-up lag is
        reported idle, during back-to-back scrapes and during the restarts."""
        p = self.plan
        first = True
        for i, variant in enumerate(variants):
            if self.daemon is not None:
                self.d.remove_all()
                self.d.stop()
            tmp = self.tmp / f"variant{i}"
            tmp.mkdir()
            lag_file = str(tmp / "lag.bin")
            self.daemon = Daemon(tmp, self.tag, prelude=variant.prelude_with_probe(lag_file))
            self.d.start()
            self.log(f"variant {variant.label}: daemon pid {self.d.pid}")
            self.rows.append(f"5. scrape cost [{variant.label}]")
            windows: list[tuple[str, float, float]] = []
            current = 0
            for level in sorted(p.scrape_sizes):
                self.d.start_many(
                    [self.sleeper(f"s{i}") for i in range(current, level)], workers=32
                )
                current = level
                self.log(f"{current} containers running")
                time.sleep(1.0)  # let the starts settle before the idle window
                t0 = time.monotonic()
                time.sleep(2.0)
                windows.append((f"idle, N={level}", t0, time.monotonic()))
                t0 = time.monotonic()
                self.rows += self._scrape(level)
                windows.append((f"scrapes back to back, N={level}", t0, time.monotonic()))
            if first and variant.src is None:
                self.rows += _render_ab(self.tag, self.d, p.scrapes)
                first = False
            # The same restarts without scrapes first: the scrapes' own cost is the ratio.
            t0 = time.monotonic()
            self.restart_latency(p.restarts, f"quiet while {current} containers run, no scrapes")
            windows.append((f"restarts, N={current}, no scrapes", t0, time.monotonic()))
            t0 = time.monotonic()
            self.restart_latency(
                p.restarts, f"scraping while {current} containers run", scrape=True
            )
            windows.append((f"restarts + scrapes b2b, N={current}", t0, time.monotonic()))
            time.sleep(1.5)  # the probe writes its samples about once a second
            self.rows.append("  trio loop lag (overshoot of a 1 ms sleep, bench/lagprobe.py)")
            for label, start, end in windows:
                lag = [v * MS for v in lagprobe.read(lag_file, start, end)]
                if lag:
                    self.rows.append(row(f"  loop lag, {label}", "ms", lag))
                    self.rows.append(row(f"  loop lag p99, {label}", "ms", [_p99(lag)]))

    def _mass_start(self, n: int) -> float:
        specs = [self.sleeper(f"m{i}") for i in range(n)]
        seconds = self.d.start_many(specs)
        running = [c for c in self.d.containers(all_=False) if c["state"] == "running"]
        if len(running) < n:
            raise BenchError(f"mass start: only {len(running)} of {n} running")
        self.log(f"mass start of {n}: {seconds:.2f} s")
        return seconds

    def _memory(self, n: int, base_rss_kib: int) -> list[Row | str]:
        time.sleep(0.5)
        pss = [v / MIB for v in (pss_kib(pid) for pid in monitor_pids(self.d)) if v is not None]
        rss = rss_kib(self.d.pid) or 0
        growth = (rss - base_rss_kib) / MIB / n
        all_in = statistics.median(pss) + growth if pss else float("nan")
        out: list[Row | str] = [
            row(f"monitor PSS, N={n}", "MiB", pss),
            row(f"daemon RSS growth per container, N={n}", "MiB", [growth]),
            row(f"all-in per container, N={n}", "MiB", [all_in], Target("<=", 1.0)),
        ]
        if n == max(self.plan.memory_sizes):
            target = Target("<", 60.0) if n >= 200 else None
            out.append(row(f"daemon RSS with N={n}", "MiB", [rss / MIB], target))
        return out

    def _scrape(self, n: int) -> list[Row | str]:
        self.d.scrape()  # first scrape warms caches (and imports, and starts the collector)
        collectors = collector_pids(self.d.pid)
        cpu0 = cpu_seconds(self.d.pid)
        ccpu0 = sum(cpu_seconds(p) for p in collectors)
        lat: list[float] = []
        size = 0
        for _ in range(self.plan.scrapes):
            s, size = self.d.scrape()
            lat.append(s * MS)
        cpu = (cpu_seconds(self.d.pid) - cpu0) / self.plan.scrapes * MS
        ccpu = (sum(cpu_seconds(p) for p in collectors) - ccpu0) / self.plan.scrapes * MS
        target = Target("<", 100.0) if n >= 500 else None
        rows = [
            row(f"scrape latency, N={n}", "ms", lat, target),
            row(f"daemon CPU per scrape, N={n}", "ms", [cpu]),
        ]
        if collectors:
            rows.append(row(f"collector process CPU per scrape, N={n}", "ms", [ccpu]))
            rows.append(row(f"daemon + collector CPU per scrape, N={n}", "ms", [cpu + ccpu]))
        rows.append(row(f"exposition size, N={n}", "KiB", [size / 1024]))
        return rows

    # ---- clean-up -------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Every step runs even if one before failed; returns what went wrong."""
        problems: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except BaseException as e:  # keep cleaning up
                problems.append(f"{what}: {e!r}")

        d = self.daemon
        if d is not None and d.proc is not None and d.proc.poll() is None:
            step("removing containers", d.remove_all)
        if d is not None:
            step("stopping the daemon", d.stop)
        if self.crun is not None:
            step("stopping the crun helper", self.crun.close)
        for parent in (self.tag, f"{self.tag}-oci"):
            left = remove_cgroup_tree(parent)
            if left:
                problems.append(f"cgroups left: {left}")
        step("removing the temp dir", lambda: shutil.rmtree(self.tmp))
        return problems


@dataclass(frozen=True)
class Variant:
    """A daemon configuration for the scrape item: `render` is "fast" (as
    shipped: the container families rendered in the collector process,
    exporters/collectord.py), "thread" (the same renderer in the daemon's
    metrics thread, as before 2026-11-27 23:30) or "legacy" (prometheus_client's
    generate_latest over the same collectors, in the thread: the exporter
    before bench/RESULTS.md's 2026-11-27 20:35 change);
    `switch` a sys.setswitchinterval() value in seconds, or None for what the
    daemon does by itself; `src` another source tree to run the daemon's
    supervisor and exporters packages from (e.g. `git archive` of an older
    commit), for before/after runs interleaved in one benchmark."""

    render: str
    switch: float | None
    src: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        render, _, rest = text.partition("@")
        switch, _, src = rest.partition("@")
        if render not in ("fast", "thread", "legacy"):
            raise ValueError(f"scrape variant {text!r}: RENDER is fast, thread or legacy")
        if src and not os.path.isdir(os.path.join(src, "supervisor")):
            raise ValueError(f"scrape variant {text!r}: no supervisor package in {src}")
        return cls(render, float(switch) if switch and switch != "default" else None, src or None)

    @property
    def label(self) -> str:
        ms = "default" if self.switch is None else f"{self.switch * MS:g} ms"
        where = "" if self.src is None else f", code from {self.src}"
        return f"{self.render}, switch {ms}{where}"

    def prelude_with_probe(self, lag_file: str) -> str:
        repo = str(Path(__file__).resolve().parent.parent)
        lines = [f"import sys; sys.path.insert(0, {repo!r}); import bench.lagprobe as _lp"]
        if self.src is not None:
            lines.append(f"sys.path.insert(0, {self.src!r})")
        lines.append(self.prelude)
        lines.append(f"_lp.install({lag_file!r})")
        return "\n".join(line for line in lines if line)

    @property
    def prelude(self) -> str:
        lines = []
        if self.switch is not None:
            lines.append(f"import sys; sys.setswitchinterval({self.switch!r})")
        if self.render in ("thread", "legacy"):
            lines.append("import exporters.server as s; s.COLLECTOR_PROCESS = False")
        if self.render == "legacy":
            lines.append(
                "import exporters.server as s; from prometheus_client import generate_latest as g; "
                "s.MetricsApp.text = lambda self: g(self.full)"
            )
        return "\n".join(lines)


def _compile_bytecode() -> str:
    import compileall

    import supervisor

    ok = compileall.compile_dir(os.path.dirname(supervisor.__file__), quiet=1)
    return f"compiled {os.path.dirname(supervisor.__file__)}" if ok else "compileall failed"


def collector_pids(daemon_pid: int) -> list[int]:
    """The daemon's collector process (exporters/collectord.py), a child of
    whichever of its threads started it."""
    found = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{daemon_pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{daemon_pid}/task/{tid}/children") as f:
                    kids = [int(p) for p in f.read().split()]
                for pid in kids:
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"exporters.collectord" in f.read():
                            found.append(pid)
    return found


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _time_oci(
    timer: Callable[[Sequence[str]], float], runtime: str, state: Path, bundle: Path, i: int
) -> float:
    return timer(run_argv(runtime, state, bundle, f"nsb-{os.getpid()}-{runtime}{i}"))


def _restart_gaps(events: Iterator[Any], name: str, count: int) -> tuple[list[float], list[float]]:
    """From the event stream: (finished_at -> next started_at, started_at ->
    next started_at) in ms, for `count` restarts."""
    exit_to_exec: list[float] = []
    cycle: list[float] = []
    last_start: float | None = None
    last_exit: float | None = None
    for ev in events:
        if not isinstance(ev, dict) or ev.get("name") != name:
            continue
        attrs: dict[str, Any] = ev.get("attributes") or {}
        if ev.get("action") == "die":
            last_exit = float(attrs.get("finished_at") or ev["time"])
        elif ev.get("action") == "start":
            started = float(attrs.get("started_at") or ev["time"])
            if last_exit is not None:
                exit_to_exec.append((started - last_exit) * MS)
            if last_start is not None:
                cycle.append((started - last_start) * MS)
            last_start, last_exit = started, None
            if len(cycle) >= count:
                break
    return exit_to_exec, cycle


def _render_ab(tag: str, d: Daemon, rounds: int) -> list[Row | str]:
    """In the benchmark process, over the daemon's live cgroups (read only):
    prometheus_client's generate_latest vs render() of the same collector,
    interleaved round by round. No network series (no workload pids here)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from exporters.collector import ContainerCollector
    from exporters.view import ContainerView
    from supervisor.cgroups import open_manager
    from supervisor.cgroups._fs import stat_fd_budget

    mgr = open_manager("/sys/fs/cgroup", tag, stat_fds=stat_fd_budget())
    vs = tuple(
        ContainerView(
            name=c["name"],
            cgroup_name=c["name"],
            cgroup_path=mgr.path(c["name"]),
            image=str(c.get("rootfs") or ""),
            state="running",
            restart_count=0,
            exit_code=None,
            started_at=time.time(),
            backoff_s=None,
        )
        for c in d.containers(all_=False)
    )
    c = ContainerCollector(mgr, lambda: vs)
    registry = CollectorRegistry()
    registry.register(c)

    def shape(text: str) -> list[str]:  # live counters move between two reads
        return [line.rpartition(" ")[0] for line in text.splitlines()]

    if shape(generate_latest(registry).decode()) != shape(c.render()):
        raise BenchError("render() differs from generate_latest on the live tree")
    legacy: list[float] = []
    fast: list[float] = []
    gather: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate_latest(registry)
        t1 = time.perf_counter()
        c.render()
        t2 = time.perf_counter()
        c.gather()
        t3 = time.perf_counter()
        legacy.append((t1 - t0) * MS)
        fast.append((t2 - t1) * MS)
        gather.append((t3 - t2) * MS)
    mgr.close()
    n = len(vs)
    return [
        f"  in-process, live cgroups of N={n}, interleaved (cgroup families, no network)",
        row("  prometheus_client generate_latest", "ms", legacy),
        row("  render()", "ms", fast),
        row("  of which reading the files (gather())", "ms", gather),
        row("  ratio render / generate_latest", "x", pairwise_ratios(fast, legacy)),
    ]


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    layout = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "hybrid"
    return (
        f"{platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
        f"cgroups {layout}, Python {platform.python_version()}"
    )


def _versions() -> str:
    out = []
    for tool in ("runc", "crun"):
        path = which(tool)
        if path:
            first = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            out.append(first.splitlines()[0] if first else tool)
    return "; ".join(out)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cli_server_rows(d: Daemon) -> list[Row | str]:
    """The CLI's command server: a fixed cost like the zygote's."""
    pids = d.cli_server_pids()
    if not pids:
        return []
    pss = sum(pss_kib(p) or 0 for p in pids) / MIB
    return [row("command server PSS, with its waiting worker (fixed cost)", "MiB", [pss])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few iterations, small N")
    ap.add_argument("--runs", type=int, help="start-latency rounds (default 30, quick 3)")
    ap.add_argument(
        "--items",
        default="start,restart,scale",
        help="comma list of start,restart,scale,memory,scrape (memory: item 4 alone; scrape: "
        "item 5 alone, per --variants)",
    )
    ap.add_argument(
        "--variants",
        default="fast@default",
        help="for --items scrape: comma list of RENDER@SWITCH daemons, run one after the "
        "other; RENDER fast|legacy, SWITCH seconds for sys.setswitchinterval or 'default' "
        "(e.g. legacy@default,fast@default,fast@0.0005)",
    )
    ap.add_argument("--restarts", type=int, help="restarts per restart row (default 100, quick 15)")
    ap.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    ap.add_argument("--tmpdir", default=None, help="where the temp dir goes (default $TMPDIR)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = Plan(**{**plan.__dict__, "start_runs": args.runs})
    if args.restarts:
        plan = Plan(**{**plan.__dict__, "restarts": args.restarts})
    items = set(args.items.split(","))
    signal.signal(signal.SIGTERM, _terminate)
    tag = f"{BENCH_PREFIX}{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=args.tmpdir))
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    b = Bench(plan, tmp, tag, log=log)
    code = 0
    try:
        b.setup()
        if "start" in items:
            log("start latency")
            b.start_latency()
        if "restart" in items:
            log("restart latency")
            b.rows.append("2. restart latency (policy always, backoff 1 us; daemon idle)")
            b.restart_latency(plan.restarts, "idle")
        if "scale" in items:
            log("mass start, memory, scrape")
            b.scale()
        if "memory" in items:
            log("memory per container")
            b.memory()
        if "scrape" in items:
            log("scrape cost per daemon variant")
            b.scrape_variants([Variant.parse(v) for v in args.variants.split(",")])
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    except Exception as e:  # report it under the table, after the clean-up
        log(f"failed: {type(e).__name__}: {e}")
        code = 1
    finally:
        problems = b.cleanup()
        for p in problems:
            log(f"clean-up: {p}")
        if problems and code == 0:
            code = 1
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"nsvisor bench{' --quick' if args.quick else ''}, {now}")
    print(machine())
    print(_versions())
    print(table(b.rows))
    print(f"(wall time {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    r.__dict__ | {"target": str(r.target or "")} if isinstance(r, Row) else r
                    for r in b.rows
                ],
                indent=1,
            )
        )
    return code
