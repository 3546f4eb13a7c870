"""The nsvisor daemon under test and the benchmark's API calls to it.

The daemon runs with its own state dir, socket, metrics address and cgroup
parent (nsvisor-bench-PID), in a session of its own; the API is spoken by
supervisor.client (stdlib http.client over the Unix socket) from the
benchmark process, so the "API" numbers include no CLI process start.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.proc import BenchError, children, stop_process
from supervisor.client import ApiError, Client, ClientError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, tmp: Path, cgroup_parent: str, prelude: str = "") -> None:
        """`prelude`: Python run in the daemon process before supervisor's
        main (the scrape item's variants: switch interval, old renderer)."""
        self.tmp = tmp
        self.prelude = prelude
        self.socket = str(tmp / "nsvisor.sock")
        self.state_dir = str(tmp / "state")
        self.port = free_port()
        self.metrics_addr = f"127.0.0.1:{self.port}"
        self.cgroup_parent = cgroup_parent
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket, timeout=120)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def zygote_pid(self) -> int | None:
        """The zygote is the daemon's first child (forked before trio starts)."""
        kids = children(self.pid)
        return min(kids) if kids else None

    def cli_server_pids(self) -> list[int]:
        """The command server (supervisor.cliserver) and its waiting worker."""
        out: list[int] = []
        for kid in children(self.pid):
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"supervisor.cliserver" in cmdline:
                out += [kid, *children(kid)]
        return out

    def start(self) -> None:
        launcher = ["-m", "supervisor"]
        if self.prelude:
            run = (
                "import runpy; runpy.run_module('supervisor', run_name='__main__', alter_sys=True)"
            )
            launcher = ["-c", f"{self.prelude}\n{run}"]
        argv = [
            sys.executable, *launcher, "daemon",
            "--state-dir", self.state_dir,
            "--socket", self.socket,
            "--metrics-addr", self.metrics_addr,
            "--cgroup-parent", self.cgroup_parent,
        ]  # fmt: skip
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                argv, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.client.request("GET", "/v1/version")
                return
            except ClientError:
                time.sleep(0.05)
        raise BenchError(f"daemon did not answer within 60 s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc.pid)
        if self.proc is not None:
            self.proc.wait()

    # ---- API -----------------------------------------------------------------

    def run_attached(self, spec: dict[str, Any]) -> int:
        """POST /v1/containers?attach=1 and read the ndjson stream to the
        final {"exit_code"} line."""
        body = {"spec": spec, "start": True}
        for record in self.client.stream("POST", "/v1/containers?attach=1", body):
            if isinstance(record, dict):
                if "exit_code" in record:
                    return int(record["exit_code"])
                if "error" in record:
                    raise BenchError(f"run failed: {record['error']}")
        raise BenchError("the attach stream ended without an exit code")

    def create_started(self, spec: dict[str, Any]) -> str:
        """Create and start (detached); returns once the workload has exec'd."""
        _, reply = self.client.request("POST", "/v1/containers", {"spec": spec, "start": True})
        return str(reply["name"])

    def start_many(self, specs: list[dict[str, Any]], workers: int | None = None) -> float:
        """All at once from a thread each; seconds until every one is running."""
        if not specs:
            return 0.0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers or len(specs)) as pool:
            list(pool.map(self.create_started, specs))
        return time.perf_counter() - t0

    def containers(self, all_: bool = True) -> list[dict[str, Any]]:
        _, reply = self.client.request("GET", "/v1/containers?all=" + ("1" if all_ else "0"))
        return list(reply or [])

    def remove(self, name: str) -> None:
        try:
            self.client.request("DELETE", f"/v1/containers/{name}?force=1")
        except ApiError as e:
            if e.status != 404:
                raise

    def remove_all(self, workers: int = 16) -> None:
        names = [c["name"] for c in self.containers()]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(self.remove, names))

    def events(self) -> Iterator[Any]:
        """The lifecycle event stream, from the moment it is subscribed
        (the first line, {"action": "subscribed"}, is consumed here)."""
        stream = self.client.stream("GET", "/v1/events")
        first = next(stream)
        if not (isinstance(first, dict) and first.get("action") == "subscribed"):
            raise BenchError(f"unexpected first event {first!r}")
        return stream

    def scrape(self) -> tuple[float, int]:
        """GET /metrics: (seconds, bytes of exposition)."""
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            raise BenchError(f"/metrics answered {response.status}")
        return elapsed, len(data)


def monitor_pids(d: Daemon) -> list[int]:
    return [int(c["pid"]) for c in d.containers(all_=False) if c.get("pid")]


def environ_for_cli(d: Daemon) -> dict[str, str]:
    return dict(os.environ, NSVISOR_SOCKET=d.socket)
