"""The CLI: argv -> raw spec mapping (pure) and every command against a tiny
fake daemon on a Unix socket (stdlib http.server in a thread): requests sent,
output, problems rendered with option names, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from supervisor import __version__
from supervisor.cli import build_parser, human_duration, main, option_for, run_raw, status_text

Reply = tuple[int, Any] | Iterable[Any]


class FakeDaemon:
    """Records every request; answers with respond(method, path, body):
    (status, json) for a plain answer, an iterable of records for ndjson."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.requests: list[tuple[str, str, Any]] = []
        self.respond: Callable[[str, str, Any], Reply] = lambda m, p, b: (200, {})
        self.kill_seen = threading.Event()
        self.closing = threading.Event()  # set at teardown: stops slow streams


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        daemon = self.server.daemon
        daemon.requests.append((self.command, self.path, body))
        if "/kill" in self.path:
            daemon.kill_seen.set()
        reply = daemon.respond(self.command, self.path, body)
        self.close_connection = True
        if isinstance(reply, tuple):
            status, obj = reply
            data = json.dumps(obj).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        # ndjson, chunked like hypercorn sends it
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for record in reply:
            chunk = json.dumps(record).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_DELETE = _handle


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    daemon: FakeDaemon

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-stream (the detach test) is expected


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    # A short directory: sun_path holds 107 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="nsv", dir="/tmp")
    daemon = FakeDaemon(os.path.join(d, "d.sock"))
    server = _Server(daemon.socket_path, _Handler)
    server.daemon = daemon
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.closing.set()
        server.shutdown()
        server.server_close()
        shutil.rmtree(d, ignore_errors=True)


def cli(fake: FakeDaemon, *argv: str) -> int:
    return main(["--socket", fake.socket_path, *argv])


# ---------------------------------------------------------------------------
# Pure: run options -> raw dict


def parse_run(*argv: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    return run_raw(build_parser().parse_args(["run", *argv]), environ=environ or {}, cwd="/work")


def test_run_raw_only_keys_the_user_gave() -> None:
    assert parse_run("rootfs") == {"rootfs": "/work/rootfs"}
    assert parse_run("/srv/r", "sh", "-c", "echo hi") == {
        "rootfs": "/srv/r",
        "command": ["sh", "-c", "echo hi"],
    }


def test_run_raw_maps_every_option() -> None:
    raw = parse_run(
        *(
            "--name",
            "web",
            "-e",
            "A=1",
            "--env",
            "HOME",
            "-e",
            "UNSET",
            "-w",
            "/app",
            "-u",
            "1000:1000",
        ),
        *("--hostname", "h", "-m", "64m", "--memory-swap", "-1", "--cpus", "1.5", "-c", "512"),
        *(
            "--cpu-weight",
            "200",
            "--pids-limit",
            "100",
            "--blkio-weight",
            "300",
            "--restart",
            "on-failure:3",
        ),
        *(
            "-v",
            "/srv:/data:ro",
            "--volume",
            "./rel:/rel",
            "--tmpfs",
            "/run:size=64m",
            "--read-only",
        ),
        *("--stop-signal", "SIGQUIT", "--stop-timeout", "5", "--network", "host", "--pid", "host"),
        *("--ipc", "host", "--uts", "host", "--cgroupns", "host", "--cap-add", "NET_ADMIN"),
        *("--cap-drop", "ALL", "--backoff-initial", "200ms", "--backoff-max", "1m"),
        *("--backoff-factor", "3", "--backoff-reset", "30s", "--rm", "-d"),
        *("rootfs", "--", "/bin/httpd", "-f", "--rm"),
        environ={"HOME": "/root"},
    )
    assert raw == {
        "rootfs": "/work/rootfs",
        "command": ["/bin/httpd", "-f", "--rm"],
        "name": "web",
        "env": ["A=1", "HOME=/root"],  # -e NAME takes the CLI's value; unset ones are dropped
        "workdir": "/app",
        "user": "1000:1000",
        "hostname": "h",
        "memory": "64m",
        "memory_swap": "-1",
        "cpus": 1.5,
        "cpu_shares": 512,
        "cpu_weight": 200,
        "pids_limit": 100,
        "io_weight": 300,
        "restart": "on-failure:3",
        "volumes": ["/srv:/data:ro", "/work/rel:/rel"],
        "tmpfs": ["/run:size=64m"],
        "read_only": True,
        "stop_signal": "SIGQUIT",
        "stop_timeout": 5,
        "network": "host",
        "pid": "host",
        "ipc": "host",
        "uts": "host",
        "cgroupns": "host",
        "cap_add": ["NET_ADMIN"],
        "cap_drop": ["ALL"],
        "backoff_initial": "200ms",
        "backoff_max": "1m",
        "backoff_factor": 3,
        "backoff_reset": "30s",
        "auto_remove": True,
    }


def test_run_raw_round_trips_through_validation(tmp_path: Path) -> None:
    """What the CLI builds is what supervisor.config accepts."""
    from supervisor.config import validate_container

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").write_text("")
    (tmp_path / "bin" / "sh").chmod(0o755)
    raw = parse_run(
        "--name",
        "x",
        "-m",
        "64m",
        "--cpus",
        "1",
        "--pids-limit",
        "-1",
        "--io-weight",
        "100",
        str(tmp_path),
        "sh",
    )
    spec = validate_container(raw, host_cpus=2)
    assert (spec.memory_bytes, spec.cpu_quota_us, spec.pids_limit, spec.io_weight) == (
        64 << 20,
        100_000,
        None,
        100,
    )


@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("memory", "--memory"),
        ("pids_limit", "--pids-limit"),
        ("memory_swap", "--memory-swap"),
        ("volumes", "--volume"),
        ("auto_remove", "--rm"),
        ("io_weight", "--blkio-weight"),
        ("rootfs", "ROOTFS"),
        ("command", "COMMAND"),
        ("cap_add", "--cap-add"),
        ("body", "--body"),
        ("[containers.web] x", "[containers.web] x"),
    ],
)
def test_option_for(field: str, option: str) -> None:
    assert option_for(field) == option


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (5, "5 seconds"),
        (70, "About a minute"),
        (180, "3 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_like_docker(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_text() -> None:
    now = 1_000_000.0
    assert status_text({"state": "running", "started_at": now - 180}, now) == "Up 3 minutes"
    assert (
        status_text({"state": "exited", "exit_code": 137, "finished_at": now - 5}, now)
        == "Exited (137) 5 seconds ago"
    )
    assert (
        status_text({"state": "restarting", "exit_code": 1, "finished_at": now - 2}, now)
        == "Restarting (1) 2 seconds ago"
    )
    assert status_text({"state": "created"}, now) == "Created"
    assert status_text(
        {"state": "exited", "exit_code": 0, "finished_at": "1970-01-12T13:46:35Z"}, now
    ) == ("Exited (0) 5 seconds ago")


# ---------------------------------------------------------------------------
# Against the fake daemon


def test_run_detached_posts_spec_and_prints_name(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: (200, {"name": "c-1234"})
    assert cli(fake, "run", "-d", "-m", "64m", "/srv/rootfs", "sleep", "10") == 0
    assert capsys.readouterr().out == "c-1234\n"
    assert fake.requests == [
        (
            "POST",
            "/v1/containers",
            {
                "spec": {"rootfs": "/srv/rootfs", "command": ["sleep", "10"], "memory": "64m"},
                "start": True,
            },
        )
    ]


def test_invalid_request_renders_problems_with_option_names(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: (
        400,
        {
            "error": "invalid request",
            "problems": [
                {"field": "memory", "message": '"-5M" is negative; use a size like 64M or 1g'},
                {"field": "pids_limit", "message": "-2 is not a valid pids limit"},
                {"field": "volumes", "message": '"x" is not "SRC:DST[:ro|rw]"'},
                {"field": "rootfs", "message": "rootfs /r does not exist"},
            ],
        },
    )
    assert cli(fake, "run", "-d", "--memory=-5M", "/r", "sh") == 2
    err = capsys.readouterr().err
    assert err == (
        "nsvisor: invalid request\n"
        '  --memory: "-5M" is negative; use a size like 64M or 1g\n'
        "  --pids-limit: -2 is not a valid pids limit\n"
        '  --volume: "x" is not "SRC:DST[:ro|rw]"\n'
        "  ROOTFS: rootfs /r does not exist\n"
    )


def test_conflict_exits_2(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (409, {"error": "container name 'web' is already in use"})
    assert cli(fake, "run", "-d", "--name", "web", "/r", "sh") == 2
    assert capsys.readouterr().err == "nsvisor: container name 'web' is already in use\n"


def test_run_attached_streams_output_and_exits_with_the_code(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: [
        {"name": "web"},
        {"stream": "stdout", "log": "hello\n", "time": "2024-01-01T00:00:00.000000001Z"},
        {"stream": "stderr", "log": "oops\n", "time": "2024-01-01T00:00:00.1Z"},
        {"stream": "stdout", "log": "partial"},
        {"exit_code": 3, "oom_killed": False},
    ]
    assert cli(fake, "run", "/r", "sh") == 3
    out = capsys.readouterr()
    assert (out.out, out.err) == ("hello\npartial", "oops\n")
    assert fake.requests[0][:2] == ("POST", "/v1/containers?attach=1")
    assert fake.requests[0][2] == {"spec": {"rootfs": "/r", "command": ["sh"]}, "start": True}


def test_run_attached_start_error_exits_125(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: [{"name": "web"}, {"error": "exec failed: permission denied"}]
    assert cli(fake, "run", "/r", "sh") == 125
    assert capsys.readouterr().err == "nsvisor: exec failed: permission denied\n"


def test_run_attached_stream_cut_short_exits_1(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: [{"name": "web"}]
    assert cli(fake, "run", "/r", "sh") == 1
    assert "closed the stream before the container exited" in capsys.readouterr().err


def test_run_attached_forwards_sigint_to_the_container(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """sig-proxy: Ctrl-C on the CLI becomes POST .../kill?signal=INT; the CLI
    keeps streaming and exits with the container's code."""

    def respond(method: str, path: str, body: Any) -> Reply:
        if "/kill" in path:
            return (200, {"name": "web"})

        def records() -> Iterator[Any]:
            yield {"name": "web"}
            time.sleep(0.1)  # the CLI has read the name
            os.kill(os.getpid(), signal.SIGINT)
            assert fake.kill_seen.wait(5)
            yield {"stream": "stdout", "log": "bye\n"}
            yield {"exit_code": 130, "oom_killed": False}

        return records()

    fake.respond = respond
    before = signal.getsignal(signal.SIGINT)
    assert cli(fake, "run", "/r", "sh") == 130
    assert capsys.readouterr().out == "bye\n"
    assert ("POST", "/v1/containers/web/kill?signal=INT", None) in fake.requests
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_ps_table(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    fake.respond = lambda m, p, b: (
        200,
        [
            {
                "name": "web",
                "state": "running",
                "pid": 4242,
                "rootfs": "/srv/web",
                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                "started_at": now - 185,
                "restart_count": 2,
            },
            {
                "name": "job",
                "state": "exited",
                "pid": None,
                "rootfs": "/srv/job",
                "command": ["true"],
                "finished_at": now - 5.5,
                "exit_code": 137,
                "restart_count": 0,
            },
        ],
    )
    assert cli(fake, "ps", "-a") == 0
    lines = capsys.readouterr().out.splitlines()
    assert fake.requests[0][:2] == ("GET", "/v1/containers?all=1")
    assert lines[0].split() == ["NAME", "STATUS", "PID", "RESTARTS", "COMMAND", "ROOTFS"]
    assert re.split(r"\s{2,}", lines[1])[0:2] == ["web", "Up 3 minutes"]
    assert (
        '"httpd -f -p 8080 -h…"' in lines[1]
        and "4242" in lines[1]
        and lines[1].endswith("/srv/web")
    )
    assert "Exited (137) 5 seconds ago" in lines[2] and " - " in lines[2]
    # columns line up
    assert lines[0].index("STATUS") == lines[1].index("Up") == lines[2].index("Exited")


def test_ps_json_is_the_list(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    summaries = [{"name": "web", "state": "running"}]
    fake.respond = lambda m, p, b: (200, summaries)
    assert cli(fake, "ps", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == summaries
    assert fake.requests[0][1] == "/v1/containers?all=0"


def test_logs(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: [
        {"stream": "stdout", "log": "a\n", "time": "T1"},
        {"stream": "stderr", "log": "b\n", "time": "T2"},
    ]
    assert cli(fake, "logs", "-f", "--tail", "10", "-t", "web") == 0
    out = capsys.readouterr()
    assert (out.out, out.err) == ("T1 a\n", "T2 b\n")
    assert fake.requests[0][:2] == ("GET", "/v1/containers/web/logs?follow=1&tail=10")
    assert cli(fake, "logs", "web") == 0
    assert fake.requests[1][1] == "/v1/containers/web/logs?follow=0"


def test_logs_no_such_container(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (404, {"error": "no such container: nope"})
    assert cli(fake, "logs", "nope") == 1
    assert capsys.readouterr().err == "nsvisor: no such container: nope\n"


def test_inspect_prints_a_json_array(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (200, {"name": p.rsplit("/", 1)[1], "state": "running"})
    assert cli(fake, "inspect", "a", "b") == 0
    out = capsys.readouterr().out
    assert json.loads(out) == [{"name": "a", "state": "running"}, {"name": "b", "state": "running"}]
    assert out.startswith("[\n  {")


@pytest.mark.parametrize(
    ("argv", "method", "path"),
    [
        (["stop", "-t", "5", "web"], "POST", "/v1/containers/web/stop?timeout=5"),
        (["stop", "web"], "POST", "/v1/containers/web/stop"),
        (["start", "web"], "POST", "/v1/containers/web/start"),
        (["restart", "-t", "0", "web"], "POST", "/v1/containers/web/restart?timeout=0"),
        (["rm", "-f", "web"], "DELETE", "/v1/containers/web?force=1"),
        (["rm", "web"], "DELETE", "/v1/containers/web"),
        (["kill", "-s", "HUP", "web"], "POST", "/v1/containers/web/kill?signal=HUP"),
        (["kill", "web"], "POST", "/v1/containers/web/kill?signal=KILL"),
    ],
)
def test_simple_commands(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], argv: list[str], method: str, path: str
) -> None:
    assert cli(fake, *argv) == 0
    assert capsys.readouterr().out == "web\n"
    assert fake.requests == [(method, path, None)]


def test_no_such_container_exits_1_and_continues(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.respond = lambda m, p, b: (
        (404, {"error": "no such container"}) if "nope" in p else (200, {})
    )
    assert cli(fake, "stop", "nope", "web") == 1
    out = capsys.readouterr()
    assert out.out == "web\n"
    assert out.err == "nsvisor: no such container: nope\n"


def test_state_conflict_exits_2(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (
        409,
        {"error": "container web is running; stop it first or use rm -f"},
    )
    assert cli(fake, "rm", "web") == 2
    assert (
        capsys.readouterr().err == "nsvisor: container web is running; stop it first or use rm -f\n"
    )


def test_server_error_exits_1(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (500, {"error": "cgroup mkdir failed"})
    assert cli(fake, "start", "web") == 1
    assert capsys.readouterr().err == "nsvisor: cgroup mkdir failed\n"


def test_events(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    events = [{"action": "start", "name": "web"}, {"action": "die", "name": "web", "exit_code": 1}]
    fake.respond = lambda m, p, b: events
    assert cli(fake, "events") == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == events
    assert fake.requests[0][:2] == ("GET", "/v1/events")


def test_version(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.respond = lambda m, p, b: (200, {"version": "9.9", "cgroup_layout": "v2"})
    assert cli(fake, "version") == 0
    assert (
        capsys.readouterr().out
        == f"nsvisor {__version__}\ndaemon: nsvisor 9.9 (cgroup_layout v2)\n"
    )


def test_unreachable_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(tmp_path / "none.sock")
    assert main(["--socket", sock, "ps"]) == 1
    assert capsys.readouterr().err == (
        f"nsvisor: cannot connect to the nsvisor daemon at {sock}: is it running? "
        "start it with `nsvisor daemon --config FILE`\n"
    )
    assert main(["--socket", sock, "version"]) == 0  # the CLI's own version still prints
    assert capsys.readouterr().out == f"nsvisor {__version__}\n"


def test_socket_from_environment(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NSVISOR_SOCKET", fake.socket_path)
    assert main(["start", "web"]) == 0
    assert fake.requests == [("POST", "/v1/containers/web/start", None)]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["frobnicate"], ["stop"], ["ps", "--format", "xml"], [], ["run"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[daemon]\nlog_level = "info"\n')
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: OK (0 containers)\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlog_levl = "info"\n[containers.web]\nmemory = "-5M"\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}:2: [daemon] log_levl: unknown key; did you mean log_level?"
    assert any(
        line.startswith(f'{bad}:4: [containers.web] memory: "-5M" is negative') for line in err
    )
    assert any(f"{bad}:3: [containers.web] rootfs: missing" in line for line in err)


def test_daemon_passes_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    app = types.ModuleType("supervisor.daemon.app")

    def run(path: Any, overrides: Any) -> int:
        calls.append((path, overrides))
        return 0

    app.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervisor.daemon.app", app)
    argv = [
        "daemon",
        "--config",
        "/etc/nsvisor.toml",
        "--state-dir",
        "/s",
        "--socket",
        "/x.sock",
        "--metrics-addr",
        "127.0.0.1:1",
        "--cgroup-parent",
        "p",
    ]
    assert main(argv) == 0
    assert main(["daemon"]) == 0
    assert calls == [
        (
            "/etc/nsvisor.toml",
            {
                "socket": "/x.sock",
                "state_dir": "/s",
                "metrics_addr": "127.0.0.1:1",
                "cgroup_parent": "p",
            },
        ),
        (None, {}),
    ]


def test_rootfs_busybox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[str] = []
    mod = types.ModuleType("supervisor.runtime.rootfs")
    mod.build_busybox_rootfs = built.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "supervisor.runtime.rootfs", mod)
    assert main(["rootfs", "busybox", "/tmp/rf"]) == 0
    assert built == ["/tmp/rf"]


def test_cli_imports_stay_lean() -> None:
    """The CLI must not pay for trio, structlog, the daemon or the runtime."""
    code = (
        "import sys; from supervisor.cli import main; main(['--socket', '/nonexistent/x.sock', 'version']);"
        "heavy = [m for m in ('trio', 'structlog', 'supervisor.daemon', 'supervisor.runtime', 'supervisor.config', 'hypercorn')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]"


def test_third_sigint_detaches(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """A workload that ignores SIGINT cannot trap the user: the third Ctrl-C
    detaches the CLI (exit 130); each one was forwarded before that."""

    def respond(method: str, path: str, body: Any) -> Reply:
        if "/kill" in path:
            return (200, {"name": "web"})

        def records() -> Iterator[Any]:
            yield {"name": "web"}
            for _ in range(3):
                time.sleep(0.1)
                os.kill(os.getpid(), signal.SIGINT)
            fake.closing.wait(5)  # the CLI must not wait for this

        return records()

    fake.respond = respond
    started = time.monotonic()
    assert cli(fake, "run", "/r", "sh") == 130
    assert time.monotonic() - started < 4
    assert "detached; web keeps running (nsvisor stop web)" in capsys.readouterr().err
    assert sum("/kill?signal=INT" in p for _, p, _ in fake.requests) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--rm", "-m", "64m", "--cap-add", "NET_ADMIN", "/r", "--", "sh", "-c", "x"],
        ["--socket", "/s", "ps", "-a"],
        ["--socket=/s", "logs", "-f", "--tail", "5", "web"],
        ["network", "create", "n1", "--subnet", "10.9.0.0/24"],
        ["rootfs", "busybox", "/d"],
        ["exec", "-it", "web", "sh"],
        ["update", "--memory", "32m", "a", "b"],
    ],
)
def test_a_parser_of_one_subcommand_parses_as_the_whole_one(argv: list[str]) -> None:
    """main() builds only the subcommand argv names (cli._command_in): the
    namespace is the same as the whole parser's."""
    from supervisor.cli import _command_in

    only = _command_in(argv)
    assert only is not None and only in argv
    assert vars(build_parser(only=only).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["-h", "run"], ["--socket", "/s"], ["--bogus", "run"]]
)
def test_no_subcommand_named_means_the_whole_parser(argv: list[str]) -> None:
    from supervisor.cli import _command_in

    assert _command_in(argv) is None


def test_an_unknown_subcommand_is_reported_by_the_whole_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """build_parser(only="nosuch") falls back to every subcommand, so argparse
    lists the valid ones, as before."""
    with pytest.raises(SystemExit) as exc:
        build_parser(only="nosuch").parse_args(["nosuch"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "'run'" in err and "'ps'" in err
