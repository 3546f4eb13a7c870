"""The exporter over the fixture cgroup trees of both layouts.

Golden files: tests/unit/fixtures/exposition/{v2,hybrid}.prom are the exact
exposition of a fixed scene (one running container on the fixture cgroup, one
exited, one removed with its final memory-event counts, three start
durations). After an intended change, regenerate them and review the diff:

    NSVISOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_exporter.py
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from exporters.collector import ContainerCollector
from exporters.netdev import NetReader, parse_net_dev
from exporters.server import MetricsApp
from exporters.startdur import StartDurations
from exporters.view import ContainerView
from supervisor.cgroups import Stats, V1Manager, V2Manager
from supervisor.daemon.events import EventBus
from supervisor.daemon.memwatch import MemoryEventStore, MemoryWatch

FIXTURES = Path(__file__).parent / "fixtures"
CGROUP = FIXTURES / "cgroup"
GOLDEN = FIXTURES / "exposition"
PROC = GOLDEN / "proc"
UPDATE = os.environ.get("NSVISOR_UPDATE_GOLDEN") == "1"
NOW = 1_700_000_123.0

# Every metric issue 4 asks for (sample names).
ISSUE_METRICS = """
container_cpu_usage_seconds_total container_cpu_user_seconds_total
container_cpu_system_seconds_total container_cpu_cfs_periods_total
container_cpu_cfs_throttled_periods_total container_cpu_cfs_throttled_seconds_total
container_memory_usage_bytes container_memory_working_set_bytes container_memory_rss
container_memory_cache container_memory_mapped_file container_memory_swap
container_memory_max_usage_bytes container_memory_failcnt container_memory_failures_total
container_oom_events_total container_spec_memory_limit_bytes
container_spec_memory_swap_limit_bytes container_spec_cpu_quota container_spec_cpu_period
container_spec_cpu_shares container_fs_reads_bytes_total container_fs_writes_bytes_total
container_fs_reads_total container_fs_writes_total container_blkio_device_usage_total
container_network_receive_bytes_total container_network_transmit_bytes_total
container_network_receive_packets_total container_network_transmit_packets_total
container_network_receive_errors_total container_network_transmit_errors_total
container_network_receive_packets_dropped_total container_network_transmit_packets_dropped_total
container_processes container_threads container_threads_max
container_pressure_cpu_waiting_seconds_total container_pressure_cpu_stalled_seconds_total
container_pressure_memory_waiting_seconds_total container_pressure_memory_stalled_seconds_total
container_pressure_io_waiting_seconds_total container_pressure_io_stalled_seconds_total
container_start_time_seconds container_last_seen
nsvisor_container_state nsvisor_container_restarts_total nsvisor_container_last_exit_code
nsvisor_container_backoff_seconds nsvisor_memory_events_total nsvisor_container_health_status
nsvisor_container_start_duration_seconds_bucket nsvisor_scrape_errors_total nsvisor_build_info
""".split()  # noqa: SIM905
# What a layout cannot provide is absent, never a fake zero.
NOT_ON = {"v2": {"container_memory_failcnt"}, "hybrid": set[str]()}


def views(running: str = "web") -> tuple[ContainerView, ...]:
    return (
        ContainerView(
            name=running,
            cgroup_name="web",
            cgroup_path="/nsvisor/web",
            image="/srv/rootfs/web",
            state="running",
            restart_count=2,
            exit_code=0,
            started_at=1_700_000_000.5,
            backoff_s=None,
            workload_pid=4242,
            health="healthy",
        ),
        # Running, but its workload pid has no /proc entry in the fixture: the
        # scrape still succeeds and counts nsvisor_scrape_errors_total{file="net/dev"}.
        ContainerView(
            name="side",
            cgroup_name="web",
            cgroup_path="/nsvisor/web",
            image="/srv/rootfs/side",
            state="running",
            restart_count=0,
            exit_code=None,
            started_at=1_700_000_050.0,
            backoff_s=None,
            workload_pid=4243,
        ),
        ContainerView(
            name="old",
            cgroup_name="old",
            cgroup_path="/nsvisor/old",
            image="/srv/rootfs/old",
            state="exited",
            restart_count=3,
            exit_code=137,
            started_at=1_699_990_000.0,
            backoff_s=0.4,
            health="unhealthy",
        ),
    )


def scene_store() -> MemoryEventStore:
    store = MemoryEventStore(clock=lambda: NOW - 60)
    store.update("old", "/nsvisor/old", "/srv/rootfs/old", {"max": 5, "oom_kill": 1})
    store.update("gone", "/nsvisor/gone", "/srv/rootfs/gone", {"max": 9, "oom_kill": 2})
    store.retire("gone")
    return store


def collector(
    source: V1Manager | V2Manager,
    proc: Path = PROC,
    vs: Callable[[], tuple[ContainerView, ...]] = views,
) -> ContainerCollector:
    return ContainerCollector(
        source,
        vs,
        memory_events=scene_store().snapshot,
        net=NetReader(str(proc)),
        clock=lambda: NOW,
        version="0.0.0-golden",
    )


def exposition(c: ContainerCollector, durations: StartDurations | None = None) -> str:
    registry = CollectorRegistry()
    registry.register(c)
    if durations is not None:
        registry.register(durations)
    return generate_latest(registry).decode()


def manager(layout: str, root: Path = CGROUP) -> V1Manager | V2Manager:
    return V2Manager(str(root / "v2")) if layout == "v2" else V1Manager(str(root / "hybrid"))


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def sample_names(text: str) -> set[str]:
    return {key.partition("{")[0] for key in samples(text)}


def find(s: dict[str, float], name: str, *labels: str) -> float | None:
    for key, value in s.items():
        if key.partition("{")[0] == name and all(label in key for label in labels):
            return value
    return None


# --- golden files --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_exposition_matches_the_golden_file(layout: str) -> None:
    durations = StartDurations()
    for seconds in (0.02, 0.3, 1.5):
        durations.observe(seconds)
    text = exposition(collector(manager(layout)), durations)
    golden = GOLDEN / f"{layout}.prom"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run with NSVISOR_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"exposition differs from {golden}; if intended: NSVISOR_UPDATE_GOLDEN=1 pytest {__file__}"
    )


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_every_metric_of_the_issue_is_in_the_golden_file(layout: str) -> None:
    names = sample_names((GOLDEN / f"{layout}.prom").read_text())
    expected = set(ISSUE_METRICS) - NOT_ON[layout]
    assert expected - names == set()
    assert names & NOT_ON[layout] == set()


def test_both_layouts_give_the_same_metric_families() -> None:
    def families(text: str) -> set[str]:
        return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}

    v2, hybrid = ((GOLDEN / f"{lay}.prom").read_text() for lay in ("v2", "hybrid"))
    assert families(v2) == families(hybrid)


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (apt: prometheus)")
@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_promtool_check_metrics_reports_nothing(layout: str) -> None:
    r = subprocess.run(
        ["promtool", "check", "metrics"],
        input=(GOLDEN / f"{layout}.prom").read_text(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


# --- values and rules ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_values_follow_the_stats_model(layout: str) -> None:
    m = manager(layout)
    st = m.stats("web")
    s = samples(exposition(collector(m)))
    assert st.memory_usage is not None and st.memory_inactive_file is not None
    working_set = max(0, st.memory_usage - st.memory_inactive_file)
    assert find(s, "container_memory_working_set_bytes", 'name="web"') == working_set
    assert find(s, "container_threads", 'name="web"') == st.pids_current
    assert find(s, "container_processes", 'name="web"') == 1
    assert find(s, "container_spec_cpu_shares", 'name="web"') == st.cpu_shares
    pgfault = 'failure_type="pgfault"'
    assert find(s, "container_memory_failures_total", pgfault, 'scope="container"') == (
        st.memory_pgfault
    )
    assert find(s, "container_memory_failures_total", pgfault, 'scope="hierarchy"') == (
        st.memory_pgfault_hierarchy
    )
    # network counters come from the workload's /proc/PID/net/dev, lo included
    assert find(s, "container_network_receive_bytes_total", 'interface="eth0"') == 8034211
    assert find(s, "container_network_transmit_packets_dropped_total", 'interface="eth0"') == 3
    assert find(s, "container_network_receive_packets_total", 'interface="lo"') == 14
    # the one-hot state, the health value, the build info
    assert find(s, "nsvisor_container_state", 'name="web"', 'state="running"') == 1
    assert find(s, "nsvisor_container_state", 'name="web"', 'state="exited"') == 0
    assert find(s, "nsvisor_container_health_status", 'name="web"') == 1
    assert find(s, "nsvisor_container_health_status", 'name="old"') == 0
    # an exited container has no cgroup series, but its memory events stay
    assert find(s, "container_memory_usage_bytes", 'name="old"') is None
    assert find(s, "nsvisor_memory_events_total", 'name="old"', 'event="oom_kill"') == 1
    assert find(s, "container_oom_events_total", 'name="gone"') == 2


def test_health_is_absent_without_a_verdict() -> None:
    def vs() -> tuple[ContainerView, ...]:
        web, side, old = views()
        return (
            ContainerView(**{**web.__dict__, "health": None}),
            side,
            ContainerView(**{**old.__dict__, "health": "starting"}),
        )

    s = samples(exposition(collector(manager("v2"), vs=vs)))
    assert find(s, "nsvisor_container_health_status") is None


def test_working_set_is_usage_minus_inactive_file_floored_at_zero(tmp_path: Path) -> None:
    shutil.copytree(CGROUP / "v2", tmp_path / "v2")
    web = tmp_path / "v2/nsvisor/web"
    (web / "memory.current").write_text("1000\n")
    stat = (web / "memory.stat").read_text().splitlines()
    patched = [("inactive_file 4000" if x.startswith("inactive_file ") else x) for x in stat]
    (web / "memory.stat").write_text("\n".join(patched) + "\n")
    s = samples(exposition(collector(manager("v2", tmp_path))))
    assert find(s, "container_memory_working_set_bytes", 'name="web"') == 0
    (web / "memory.stat").write_text("\n".join(stat).replace("inactive_file ", "x ") + "\n")
    s = samples(exposition(collector(manager("v2", tmp_path))))
    assert find(s, "container_memory_working_set_bytes", 'name="web"') == 1000  # no inactive_file


def test_live_memory_events_win_over_older_daemon_counts() -> None:
    """The scrape's own read of a running container is merged with the
    daemon's counts by taking the larger (both are the same kernel counter)."""
    s = samples(exposition(collector(manager("v2"))))
    assert find(s, "nsvisor_memory_events_total", 'name="web"', 'event="max"') == 37


# --- missing files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "file"),
    [("v2", "nsvisor/web/memory.stat"), ("hybrid", "memory/nsvisor/web/memory.stat")],
)
def test_a_missing_file_costs_only_its_metrics_and_is_counted(
    tmp_path: Path, layout: str, file: str
) -> None:
    shutil.copytree(CGROUP / layout, tmp_path / layout)
    shutil.copytree(PROC, tmp_path / "proc")
    os.remove(tmp_path / layout / file)
    os.remove(tmp_path / "proc/4242/net/dev")
    c = collector(manager(layout, tmp_path), proc=tmp_path / "proc")
    s = samples(exposition(c))
    assert find(s, "container_memory_rss", 'name="web"') is None  # from memory.stat
    assert find(s, "container_memory_failures_total") is None
    assert find(s, "container_network_receive_bytes_total") is None
    assert find(s, "container_memory_usage_bytes", 'name="web"') is not None
    assert find(s, "container_cpu_usage_seconds_total", 'name="web"') is not None
    assert find(s, "nsvisor_scrape_errors_total", 'file="memory.stat"') == 2
    assert find(s, "nsvisor_scrape_errors_total", 'file="net/dev"') == 2  # web and side
    s = samples(exposition(c))  # counted again on the next scrape
    assert find(s, "nsvisor_scrape_errors_total", 'file="memory.stat"') == 4


def test_a_stats_exception_never_fails_the_scrape() -> None:
    class Broken:
        layout = "v2"

        def stats(self, name: str) -> Stats:
            raise RuntimeError("boom")

    c = ContainerCollector(Broken(), views, net=NetReader(str(PROC)), clock=lambda: NOW)
    s = samples(exposition(c))
    assert find(s, "nsvisor_scrape_errors_total", 'file="stats"') == 2  # web and side
    assert find(s, "nsvisor_container_state", 'name="web"', 'state="running"') == 1
    assert find(s, "container_network_receive_bytes_total", 'name="web"') is not None


def test_a_container_in_the_hosts_network_namespace_has_no_network_series() -> None:
    pid = os.getpid()  # this process shares the host's (our) network namespace

    def vs() -> tuple[ContainerView, ...]:
        web, _, old = views()
        return (ContainerView(**{**web.__dict__, "workload_pid": pid}), old)

    c = ContainerCollector(V2Manager(str(CGROUP / "v2")), vs, net=NetReader("/proc"))
    s = samples(exposition(c))
    assert find(s, "container_network_receive_bytes_total") is None
    assert find(s, "nsvisor_scrape_errors_total", 'file="net/dev"') is None


def test_parse_net_dev() -> None:
    devs = parse_net_dev((PROC / "4242/net/dev").read_text())
    assert [d.interface for d in devs] == ["lo", "eth0"]
    eth0 = devs[1]
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (
        8034211,
        5872,
        2,
        7,
    )
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (431762, 3911, 1, 3)


# --- start durations and the memory-event store ---------------------------------


def test_start_duration_histogram_is_cumulative() -> None:
    h = StartDurations(buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    text = exposition_of(h)
    s = samples(text)
    assert s['nsvisor_container_start_duration_seconds_bucket{le="0.1"}'] == 2
    assert s['nsvisor_container_start_duration_seconds_bucket{le="1.0"}'] == 3
    assert s['nsvisor_container_start_duration_seconds_bucket{le="+Inf"}'] == 4
    assert s["nsvisor_container_start_duration_seconds_count"] == 4
    assert s["nsvisor_container_start_duration_seconds_sum"] == pytest.approx(3.65)


def exposition_of(c: StartDurations) -> str:
    registry = CollectorRegistry()
    registry.register(c)
    return generate_latest(registry).decode()


def test_removed_containers_are_kept_for_a_ttl_and_a_bounded_number() -> None:
    now = [1000.0]
    store = MemoryEventStore(retain_s=600, retain_max=2, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        store.update(name, f"/nsvisor/{name}", "img", {"oom_kill": 1})
    store.update("live", "/nsvisor/live", "img", {"oom_kill": 0})
    store.retire("a")
    now[0] += 1
    store.retire("b")
    now[0] += 1
    store.retire("c")  # three removed, two kept: the oldest goes
    assert [m.name for m in store.snapshot()] == ["b", "c", "live"]
    now[0] += 599.5  # b is 600.5 s gone, c 599.5 s
    assert [m.name for m in store.snapshot()] == ["c", "live"]
    store.update("c", "/nsvisor/c", "img", {"oom_kill": 0})  # a new container named c
    now[0] += 3600
    snap = store.snapshot()
    assert [(m.name, m.events, m.removed) for m in snap] == [
        ("c", (("oom_kill", 0),), False),
        ("live", (("oom_kill", 0),), False),
    ]


def test_memwatch_publishes_oom_and_limit_hits_from_memory_events(tmp_path: Path) -> None:
    """v2 path with real inotify on a copied fixture file: a write to
    memory.events is an IN_MODIFY, as the kernel's notification is."""
    shutil.copytree(CGROUP / "v2", tmp_path / "v2")
    events_file = tmp_path / "v2/nsvisor/web/memory.events"
    base = "low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {kill}\noom_group_kill 0\n"
    events_file.write_text(base.format(max=0, oom=0, kill=0))
    bus = EventBus()
    mw = MemoryWatch(V2Manager(str(tmp_path / "v2")), bus, limit_hit_interval_s=5.0)
    seen: list[dict[str, object]] = []

    async def main() -> None:
        async with bus.subscribe() as recv:
            async with mw.watching("web", "/srv/rootfs/web"):
                await trio.sleep(0.1)
                events_file.write_text(base.format(max=3, oom=1, kill=1))
                with trio.fail_after(5):
                    while len(seen) < 2:
                        seen.append(await recv.receive())
                events_file.write_text(base.format(max=10, oom=1, kill=1))  # held back (5 s)
                await trio.sleep(0.3)
            # leaving the block reads a last time and flushes held-back hits
            seen.append(recv.receive_nowait())

    trio.run(main)
    actions = [(e["action"], e["attributes"]) for e in seen]
    assert actions[0][0] == "oom" and actions[0][1]["oom_kills"] == 1  # type: ignore[index]
    assert actions[1][0] == "memory_limit_hit" and actions[1][1]["new_hits"] == 3  # type: ignore[index]
    assert actions[2][0] == "memory_limit_hit" and actions[2][1]["new_hits"] == 7  # type: ignore[index]
    assert mw.counts("web")["max"] == 10
    mw.retire("web")
    assert mw.counts("web")["oom_kill"] == 1  # still known after removal


# --- scrape cost ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_scrape_of_500_containers_in_a_fake_tree(tmp_path: Path, layout: str) -> None:
    """No timing assertion: prints the cost (see bench/ for targets)."""
    root = tmp_path / layout
    shutil.copytree(CGROUP / layout, root)
    parents = [root] if layout == "v2" else [p for p in root.iterdir() if (p / "nsvisor").is_dir()]
    for parent in parents:
        web = parent / "nsvisor" / "web"
        for i in range(500):
            shutil.copytree(web, parent / "nsvisor" / f"c{i}", copy_function=os.link)
    m = V2Manager(str(root)) if layout == "v2" else V1Manager(str(root))
    template = views()[0]
    many = tuple(
        ContainerView(**{**template.__dict__, "name": f"c{i}", "cgroup_name": f"c{i}"})
        for i in range(500)
    )
    c = ContainerCollector(m, lambda: many, net=NetReader(str(PROC)), clock=lambda: NOW)
    exposition(c)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        text = exposition(c)
        best = min(best, time.perf_counter() - t0)
    n = len(samples(text))
    fast_best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fast = c.render()
        fast_best = min(fast_best, time.perf_counter() - t0)
    print(
        f"\nscrape of 500 fake {layout} containers: {best * 1000:.0f} ms, {n} samples; "
        f"render(): {fast_best * 1000:.0f} ms"
    )
    assert fast == text
    assert find(samples(text), "nsvisor_scrape_errors_total") is None
    assert n > 500 * 40


# --- the fast text renderer (exporters/render.py) and the HTTP app --------------


def fast_exposition(c: ContainerCollector, durations: StartDurations | None = None) -> str:
    """What the daemon serves: MetricsApp's text path (no process collectors)."""
    return MetricsApp([], c, [durations] if durations is not None else []).text().decode()


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_fast_renderer_matches_the_golden_file(layout: str) -> None:
    durations = StartDurations()
    for seconds in (0.02, 0.3, 1.5):
        durations.observe(seconds)
    assert (
        fast_exposition(collector(manager(layout)), durations)
        == (GOLDEN / f"{layout}.prom").read_text()
    )


def awkward_views() -> tuple[ContainerView, ...]:
    web, side, old = views()
    return (
        ContainerView(
            **{**web.__dict__, "name": 'we"b\\1', "image": "/srv/ro\not/é", "cgroup_path": '/a"b'}
        ),
        ContainerView(**{**side.__dict__, "backoff_s": 1e-06, "exit_code": -9, "started_at": 0.0}),
        ContainerView(**{**old.__dict__, "restart_count": 12345678901, "backoff_s": 1e22}),
    )


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
@pytest.mark.parametrize("scene", ["golden", "awkward", "missing", "broken"])
def test_fast_renderer_is_byte_identical_to_prometheus_client(
    tmp_path: Path, layout: str, scene: str
) -> None:
    """Two collectors over the same files: one through prometheus_client's
    generate_latest, one through render(); also the scrape-error counts."""
    shutil.copytree(CGROUP / layout, tmp_path / layout)
    shutil.copytree(PROC, tmp_path / "proc")
    (tmp_path / "proc/4242/net/dev").write_text(
        (PROC / "4242/net/dev").read_text().replace("eth0:", 'e"t\\h0:')
    )
    vs = awkward_views if scene == "awkward" else views
    if scene == "missing":
        stat = "nsvisor/web/memory.stat" if layout == "v2" else "memory/nsvisor/web/memory.stat"
        os.remove(tmp_path / layout / stat)
    if scene == "broken":

        class Broken:
            layout = "v2"

            def stats(self, name: str) -> Stats:
                raise RuntimeError("boom")

        def make() -> ContainerCollector:
            return ContainerCollector(
                Broken(), vs, net=NetReader(str(tmp_path / "proc")), clock=lambda: NOW
            )
    else:

        def make() -> ContainerCollector:
            return collector(manager(layout, tmp_path), proc=tmp_path / "proc", vs=vs)

    slow, fast = make(), make()
    for _ in range(2):  # the second scrape also sees last scrape's error counts
        expected = exposition(slow)
        assert fast.render() == expected
    assert fast.scrape_errors == slow.scrape_errors


def test_fast_renderer_formats_values_like_go() -> None:
    from prometheus_client.utils import floatToGoString

    from exporters.render import fmt

    for v in (0, 1, -1, 0.5, 1e-7, 123456.0, 1234567.0, 5.040128e07, 2**63, 1e22, -3e9,
              float("inf"), float("-inf"), float("nan"), 0.272091338, 7, 1e16, 9999999.5):  # fmt: skip
        assert fmt(v) == floatToGoString(v), v


def test_fast_renderer_keeps_label_strings_of_live_views_only() -> None:
    c = collector(manager("v2"))
    c.render()
    c.render()
    assert {k[0] for k in c._label_cache._now} == {"web", "side", "old", "gone"}
    c.views = lambda: ()
    c.memory_events = tuple
    c.render()
    c.render()
    assert c._label_cache._now == {} and c._label_cache._prev == {}


def wsgi_get(
    app: MetricsApp, headers: dict[str, str] | None = None, query: str = ""
) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, object] = {}

    def start_response(status: str, hs: list[tuple[str, str]]) -> None:
        got.update(status=status, headers=dict(hs))

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": query}
    environ |= {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()}
    body = b"".join(app(environ, start_response))
    return str(got["status"]), got["headers"], body  # type: ignore[return-value]


def test_metrics_app_negotiates_text_gzip_and_openmetrics() -> None:
    def vs() -> tuple[ContainerView, ...]:
        return views()[0], views()[2]  # no scrape errors: every scrape is the same

    app = MetricsApp([], collector(manager("v2"), vs=vs), [StartDurations()])
    status, headers, body = wsgi_get(app)
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert body.decode() == generate_latest(app.full).decode()
    # Prometheus prefers OpenMetrics but accepts text: it gets text (as from cAdvisor).
    prometheus = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    _, headers, zipped = wsgi_get(app, {"Accept": prometheus, "Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped) == body
    # Only OpenMetrics acceptable: prometheus_client's encoder, same samples.
    _, headers, om = wsgi_get(app, {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.decode().endswith("# EOF\n")
    om_samples = om.decode().removesuffix("# EOF\n")
    assert sample_names(om_samples) == sample_names(body.decode())
    # ?name[]= goes through prometheus_client's restricted registry, as before.
    _, _, only = wsgi_get(app, query="name[]=nsvisor_build_info")
    assert only == generate_latest(app.full.restricted_registry(["nsvisor_build_info"]))


def test_process_collector_counts_fds_like_prometheus_client(tmp_path: Path) -> None:
    """exporters.process counts /proc/self/fd from st_size (6.2+) instead of
    listing it (10 ms at 11,000 fds): the same text as prometheus_client's
    collector, on the live process and on a fixture /proc (the listing)."""
    from prometheus_client.process_collector import ProcessCollector as Upstream

    from exporters.process import ProcessCollector, count_fds

    proc = tmp_path / "proc"
    (proc / "7" / "fd").mkdir(parents=True)
    for fd in range(5):
        (proc / "7" / "fd" / str(fd)).write_text("")
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    fields = " ".join(str(i) for i in range(3, 50))
    (proc / "7" / "stat").write_text(f"7 (nsvisor) S {fields}\n")
    (proc / "7" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1024                 524288               files\n"
    )

    def text(collector: type[Upstream], **kwargs: object) -> str:
        registry = CollectorRegistry()
        collector(registry=registry, **kwargs)  # type: ignore[arg-type]
        return generate_latest(registry).decode()

    fixture = {"proc": str(proc), "pid": lambda: 7}
    assert text(ProcessCollector, **fixture) == text(Upstream, **fixture)
    assert "process_open_fds 5.0" in text(ProcessCollector, **fixture)
    # the live process: an fd more or less would show; cpu time may tick between the two
    ours, theirs = (
        [line for line in text(c).splitlines() if not line.startswith("process_cpu")]
        for c in (ProcessCollector, Upstream)
    )
    assert [x.rpartition(" ")[0] for x in ours] == [x.rpartition(" ")[0] for x in theirs]
    fds = {x for x in ours + theirs if x.startswith("process_open_fds ")}
    assert len(fds) == 1, fds
    assert count_fds("/proc/self/fd") == len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_the_collector_process_renders_what_the_thread_renders(tmp_path: Path, layout: str) -> None:
    """exporters/collectord.py: the same text as render() in the daemon's
    thread; limits written by the daemon's manager show at the next scrape;
    the error counter stays in the daemon; a collector that dies costs one
    scrape in the thread, and the next scrape starts a new one."""
    import dataclasses
    import signal

    from exporters.collectord import CollectorProcess
    from supervisor.cgroups import Limits

    shutil.copytree(CGROUP / layout, tmp_path / layout)
    mgr = manager(layout, tmp_path)
    os.remove(tmp_path / layout / ("nsvisor/web/io.stat" if layout == "v2" else
              "blkio/nsvisor/web/blkio.throttle.io_serviced_recursive"))  # fmt: skip
    # no workload pids: the collector reads the real /proc, not the fixture's
    vs = tuple(dataclasses.replace(v, workload_pid=None) for v in views())
    local = ContainerCollector(mgr, lambda: vs, memory_events=scene_store().snapshot)
    process = CollectorProcess(str(tmp_path / layout), "nsvisor")
    remote = ContainerCollector(
        mgr, lambda: vs, memory_events=scene_store().snapshot, remote=process.render
    )

    def same(text: str) -> list[str]:  # the two clocks differ
        return [x for x in text.splitlines() if not x.startswith("container_last_seen{")]

    try:
        assert same(remote.render()) == same(local.render())  # in this thread: starting
        assert process.settled.wait(60) and process.pid is not None
        for _ in range(2):
            assert same(remote.render()) == same(local.render())
        assert process.started == 1
        assert remote.scrape_errors == local.scrape_errors != {}
        mgr.update("web", Limits(memory_max=96 << 20))
        limit = 'container_spec_memory_limit_bytes{id="/nsvisor/web",image="/srv/rootfs/web"'
        assert f'{limit},name="web"}} 1.00663296e+08' in remote.render()
        local.render()  # the same number of scrapes: the same error counts
        pid = process.pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProcessLookupError):  # its reaper thread waits for it
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.01)
        assert same(remote.render()) == same(local.render())  # in this thread: it died
        assert process.pid is None
        assert same(remote.render()) == same(local.render())  # in this thread: starting
        assert process.settled.wait(60) and process.pid not in (None, pid)
        assert same(remote.render()) == same(local.render())  # in the new collector
        assert process.started == 2
        assert remote.scrape_errors == local.scrape_errors  # counted on in the daemon
    finally:
        process.close()


def test_a_collector_that_does_not_answer_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector stuck (in a cgroup read, say) must not hold every later
    scrape: past TIMEOUT_S it is killed and the scrape falls back."""
    import sys

    from exporters import collectord

    monkeypatch.setattr(collectord, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(collectord, "START_TIMEOUT_S", 0.5)
    process = collectord.CollectorProcess("/nonexistent", "nsvisor")
    request = collectord.Request((), (), (), ())
    try:
        process.argv = ["sh", "-c", "cat >/dev/null"]  # never even ready
        with pytest.raises(collectord.NotReady):  # a scrape never waits for a start
            process.render(request)
        assert process.settled.wait(30)
        assert process.pid is None and process.started == 1
        ready_then_stuck = (
            "import sys, exporters.collectord as c; c._send(sys.stdout.buffer, 'ready'); "
            "sys.stdin.buffer.read()"
        )
        monkeypatch.setattr(collectord, "START_TIMEOUT_S", 60.0)
        process.argv = [sys.executable, "-c", ready_then_stuck]
        process.start_soon()
        assert process.settled.wait(60) and process.pid is not None
        with pytest.raises(TimeoutError):
            process.render(request)
        assert process.pid is None and process.started == 2  # killed, a new one next time
    finally:
        process.close()
