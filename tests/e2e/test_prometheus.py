"""The monitoring stack against a real Prometheus (Debian's /usr/bin/prometheus):
it scrapes a real daemon whose container keeps allocating past its memory
limit, the alert rules of deploy/prometheus/rules fire, and every query of the
committed Grafana dashboards returns data.

Prometheus runs on a free loopback port with a temporary storage directory,
scrapes and evaluates every second, and loads a copy of the alert rules whose
`for:` durations are cut to 1 s. It is killed by pid and its directory removed
at the end, also when the test fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, free_port

yaml = pytest.importorskip("yaml", reason="pip install -e '.[test]' (pyyaml)")

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "nsvisor-alerts.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROMETHEUS = "/usr/bin/prometheus"

# Allocates 64 MiB in a 32 MiB cgroup (tail keeps a line without a newline),
# is OOM-killed, tries again; after 6 rounds the shell exits 3 and
# --restart always starts it again, so restarts, the last exit code and the
# backoff are exported too. Each round also writes and reads 256 KiB with
# O_DIRECT: page-cache hits and (on v1) buffered writeback are not charged to
# the container's blkio counters, direct I/O is.
HOG = (
    "i=0; while [ $i -lt 6 ]; do"
    " head -c 64m /dev/zero | tail;"
    " dd if=/dev/zero of=/io.dat bs=64k count=4 oflag=direct 2>/dev/null;"
    " dd if=/io.dat of=/dev/null bs=64k iflag=direct 2>/dev/null;"
    " sleep 1; i=$((i+1)); done; exit 3"
)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def firing(self) -> set[tuple[str, str]]:
        """(alertname, container name) of every firing alert."""
        return {
            (a["labels"]["alertname"], a["labels"].get("name", ""))
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["state"] == "firing"
        }


def short_for_rules(dest: Path) -> None:
    """The committed rules with every `for:` cut to 1 s."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    dest.write_text(yaml.safe_dump(rules, sort_keys=False))


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path) -> Iterator[Prometheus]:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} not found: apt-get install prometheus (deploy/setup.sh does)")
    home = tmp_path / "prometheus"
    (home / "data").mkdir(parents=True)
    short_for_rules(home / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(home / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "nsvisor",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [daemon.metrics_addr]}],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = home / "prometheus.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready in 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield prom
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def wait(what: str, pred: Any, timeout: float, prom: Prometheus) -> float:
    """Poll pred() every second; the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; firing: {sorted(prom.firing())}"
                f"\n{prom.log.read_text()[-3000:]}"
            )
        time.sleep(1)
    return time.monotonic() - t0


def v1_blkio_counters_dead() -> bool:
    """True when cgroup v1's blkio.throttle.io_service_bytes counts no I/O at
    all, even in the root cgroup ("Total 0"). Since Linux 6.9 blk-throttle is
    set up on a device only when a throttle rule is first written for it, and
    the v1 per-cgroup byte and operation counters are updated only on that
    path: without any blkio.throttle.*_device rule on the host they stay empty
    (measured on 6.18: root "Total 0" after hours of uptime). The test does
    not write such a rule: that would change the host's block queue."""
    try:
        text = Path("/sys/fs/cgroup/blkio/blkio.throttle.io_service_bytes").read_text()
    except OSError:
        return False
    # Every counter zero, in every device line and the total (a device that
    # once had a throttle rule, e.g. another test's loop device, is listed
    # with zeros).
    return all(line.split()[-1] == "0" for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Query:
    where: str  # dashboard / panel / refId, for messages
    expr: str
    instant: bool


def dashboard_queries() -> list[Query]:
    """Every PromQL expression in the committed dashboards: panel targets,
    annotations, and the label_values() of the template variables (asked as
    `group by (label) (selector)`, which is what Grafana's call returns)."""
    out: list[Query] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        stack = list(dash["panels"])
        while stack:
            panel = stack.pop(0)
            stack.extend(panel.get("panels", []))
            for t in panel.get("targets", []):
                where = f"{path.stem} / {panel['title']} / {t['refId']}"
                out.append(Query(where, t["expr"], bool(t.get("instant"))))
        for a in dash["annotations"]["list"]:
            out.append(Query(f"{path.stem} / annotation {a['name']}", a["expr"], False))
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.*), *(\w+)\)", v["query"])
                assert m, v["query"]
                expr = f"group by ({m[2]}) ({m[1]})"
                out.append(Query(f"{path.stem} / variable {v['name']}", expr, True))
    return out


def substitute(expr: str, name: str, range_s: int) -> str:
    """Grafana's variables, as Grafana would fill them for a 1 s scrape
    interval ($__rate_interval is at least four scrape intervals)."""
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("$__range", f"{range_s}s")
        .replace("$__interval", "2s")
        .replace("$instance", ".*")
        .replace("$name", name)
    )


def test_oom_alerts_fire_and_every_dashboard_query_has_data(
    daemon: Daemon, prometheus: Prometheus
) -> None:
    d, prom = daemon, prometheus
    d.start()
    run_opts = ["--memory", "32M", "--memory-swap", "32M", "--cpus", "0.5", "--pids-limit", "64"]
    run_opts += ["--restart", "always"]
    run_opts += ["--health-cmd", "true", "--health-interval", "1s"]
    t0 = time.monotonic()
    d.cli("run", "-d", "--name", "hog", *run_opts, d.rootfs, "--", "sh", "-c", HOG)

    # 1. The OOM-kill and memory-limit-hit alerts fire.
    layout = ""

    def limit_alerts_firing() -> bool:
        nonlocal layout
        info = prom.get("/api/v1/query", query="nsvisor_build_info")["result"]
        layout = info[0]["metric"]["cgroup_layout"] if info else ""
        return {("ContainerOOMKilled", "hog"), ("ContainerMemoryLimitHit", "hog")} <= prom.firing()

    wait("ContainerOOMKilled and ContainerMemoryLimitHit", limit_alerts_firing, 180, prom)
    fired_s = time.monotonic() - t0
    print(f"\nOOM-kill and memory-limit-hit alerts firing {fired_s:.1f} s after `run` ({layout})")

    # 2. Let the hog exit and be restarted once, so the restart count, the
    # last exit code and the backoff exist; and let some rate windows fill.
    def restarted() -> bool:
        r = prom.get("/api/v1/query", query='nsvisor_container_restarts_total{name="hog"} > 0')
        return bool(r["result"])

    wait("a restart of hog", restarted, 180, prom)
    print(f"hog restarted by its policy {time.monotonic() - t0:.1f} s after `run`")
    d.wait_for("hog", lambda i: i["state"] == "running", timeout=30)
    time.sleep(12)  # more than one $__rate_interval of the new run

    # 3. Every dashboard query returns a series for the running hog.
    # Allowed to be empty, each with the reason:
    may_be_empty = {}
    if layout != "v2":
        # v1's memory.failcnt / memsw.failcnt (event="max") stay 0 on recent
        # kernels (measured on 6.18) while the limit is hit: the limit-hit
        # annotation has nothing to show; the OOM-kill annotation does.
        may_be_empty["nsvisor-container / annotation Memory limit hits"] = "v1 failcnt is 0"
    if layout != "v2" and v1_blkio_counters_dead():
        for panel in ("Disk throughput", "Disk operations"):
            for ref in "AB":
                may_be_empty[f"nsvisor-container / {panel} / {ref}"] = "v1 blkio counts nothing"
    queries = dashboard_queries()
    assert len(queries) > 40
    empty: dict[str, str] = {}
    for _attempt in range(10):
        # A scrape that falls into the 0.1 s restart gap marks the hog's
        # container_* series stale, and the health series is absent until the
        # first probe of each run; such a query is asked again.
        empty = {}
        end = time.time()
        range_s = int(time.monotonic() - t0)
        for query in queries:
            expr = substitute(query.expr, "hog", range_s)
            if query.instant:
                data = prom.get("/api/v1/query", query=expr, time=f"{end:.3f}")
            else:
                data = prom.get(
                    "/api/v1/query_range",
                    query=expr,
                    start=f"{end - range_s:.3f}",
                    end=f"{end:.3f}",
                    step="1",
                )
            if not data["result"]:
                empty[query.where] = expr
        if set(empty) <= set(may_be_empty):
            break
        time.sleep(2)
    print(f"{len(queries)} dashboard queries; empty (allowed): {sorted(empty)}")
    unexpected = {k: v for k, v in empty.items() if k not in may_be_empty}
    assert not unexpected, "dashboard queries without data:\n" + "\n".join(
        f"  {k}: {v}" for k, v in unexpected.items()
    )
    print(f"alerts firing at the end: {sorted(prom.firing())}")
