"""The `nsvisor` command: a Docker-like CLI over the daemon's control API.

Start time matters (every `nsvisor ps` pays it), so the module imports only
the stdlib pieces every command needs. The client (http.client), the config
validator, the daemon and the runtime are imported inside the commands that
use them; `python -X importtime -m supervisor version` keeps us honest.

The pure parts are separate functions so tests need no daemon:
`run_raw` (run options -> the raw container dict the API takes),
`option_for` (a spec field -> the option the user typed),
`human_duration` and `status_text` (the STATUS column of `ps`).

Exit codes: 0 ok; 2 usage errors and invalid requests (400/409, bad config);
1 no such container, daemon unreachable, other failures; `run` without -d
exits with the container's exit code (125 when the daemon could not start it,
as Docker does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

# typing and urllib.parse cost ~3 ms of every start (`python -X importtime`):
# typing only for the type checker, urllib.parse where a path is quoted.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from supervisor.client import ApiError, Client

DEFAULT_SOCKET = "/run/nsvisor/nsvisor.sock"  # = supervisor.client.DEFAULT_SOCKET

# Spec fields whose option is not simply "--" + field.replace("_", "-").
_FIELD_OPTIONS: dict[str, str] = {
    "rootfs": "ROOTFS",
    "command": "COMMAND",
    "volumes": "--volume",
    "auto_remove": "--rm",
    "io_weight": "--blkio-weight",
    "ulimits": "--ulimit",
}

# run options -> raw keys; the value is taken as given (strings), numbers are
# converted when they look like numbers so the JSON body is natural, and the
# daemon's validation (supervisor.config) reports anything wrong by field.
_RUN_SCALARS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("workdir", "workdir"),
    ("user", "user"),
    ("hostname", "hostname"),
    ("memory", "memory"),
    ("memory_swap", "memory_swap"),
    ("cpus", "cpus"),
    ("cpu_shares", "cpu_shares"),
    ("cpu_weight", "cpu_weight"),
    ("pids_limit", "pids_limit"),
    ("io_weight", "io_weight"),
    ("cpu_period", "cpu_period"),
    ("cpu_quota", "cpu_quota"),
    ("cpuset_cpus", "cpuset_cpus"),
    ("cpuset_mems", "cpuset_mems"),
    ("memory_reservation", "memory_reservation"),
    ("memory_high", "memory_high"),
    ("oom_score_adj", "oom_score_adj"),
    ("network_rate", "network_rate"),
    ("restart", "restart"),
    ("stop_signal", "stop_signal"),
    ("stop_timeout", "stop_timeout"),
    ("network", "network"),
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("cgroupns", "cgroupns"),
    ("backoff_initial", "backoff_initial"),
    ("backoff_max", "backoff_max"),
    ("backoff_factor", "backoff_factor"),
    ("backoff_reset", "backoff_reset"),
    ("health_cmd", "health_cmd"),
    ("health_interval", "health_interval"),
    ("health_timeout", "health_timeout"),
    ("health_retries", "health_retries"),
    ("health_start_period", "health_start_period"),
    ("on_unhealthy", "on_unhealthy"),
)

# Docker's --log-opt names for the json-file driver -> raw keys.
_LOG_OPTS = {"max-size": "log_max_size", "max-file": "log_max_files"}
_NUMERIC = {
    "cpus",
    "cpu_shares",
    "cpu_weight",
    "pids_limit",
    "io_weight",
    "cpu_period",
    "cpu_quota",
    "oom_score_adj",
    "backoff_factor",
    "stop_timeout",
    "health_retries",
    "log_max_files",
}


class CliError(Exception):
    """A failure already phrased for the user; carries the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        self.code = code
        super().__init__(message)


# ---------------------------------------------------------------------------
# Pure helpers


def option_for(field: str) -> str:
    """'memory' -> '--memory', 'pids_limit' -> '--pids-limit', 'volumes' -> '--volume'."""
    if field in _FIELD_OPTIONS:
        return _FIELD_OPTIONS[field]
    if not field or not field.replace("_", "").isalnum():
        return field
    return "--" + field.replace("_", "-")


def _number_or_text(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def run_raw(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> dict[str, Any]:
    """The raw container dict for `run`: only the keys the user gave.

    rootfs and ./relative volume sources are made absolute from cwd (Docker
    does the same for "./" bind sources); `-e NAME` without "=" takes NAME's
    value from the CLI's environment and is dropped when unset, as in Docker.
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    raw: dict[str, Any] = {"rootfs": os.path.normpath(os.path.join(cwd, args.rootfs))}
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if command:
        raw["command"] = command
    for attr, key in _RUN_SCALARS:
        value = getattr(args, attr, None)
        if value is not None:
            raw[key] = _number_or_text(value) if key in _NUMERIC else value
    if args.env is not None:
        env: list[str] = []
        for item in args.env:
            if "=" in item:
                env.append(item)
            elif item in environ:
                env.append(f"{item}={environ[item]}")
        raw["env"] = env
    if args.volume is not None:
        volumes = []
        for v in args.volume:
            if v.startswith("."):
                src, sep, rest = v.partition(":")
                v = os.path.normpath(os.path.join(cwd, src)) + sep + rest
            volumes.append(v)
        raw["volumes"] = volumes
    if getattr(args, "publish", None) is not None:
        raw["publish"] = list(args.publish)
    raw.update(limit_lists(args))
    for attr in ("tmpfs", "cap_add", "cap_drop", "security_opt", "device"):
        value = getattr(args, attr, None)
        if value is not None:
            raw["devices" if attr == "device" else attr] = list(value)
    if raw.get("security_opt"):  # a relative profile path is the caller's, as with -v
        raw["security_opt"] = [
            "seccomp=" + os.path.abspath(o[8:])
            if o.startswith("seccomp=") and o[8:] not in ("unconfined", "default")
            else o
            for o in raw["security_opt"]
        ]
    if getattr(args, "userns", None):
        raw["userns"] = args.userns
    for attr in ("read_only", "auto_remove"):
        if getattr(args, attr):
            raw[attr] = True
    for attr in ("tty", "interactive"):
        if getattr(args, attr, False):
            raw[attr] = True
    for opt in getattr(args, "log_opt", None) or []:
        key, sep, value = opt.partition("=")
        if not sep or key not in _LOG_OPTS:
            raise CliError(
                f"nsvisor: --log-opt {opt!r}: use max-size=SIZE or max-file=N (json-file options)",
                2,
            )
        raw[_LOG_OPTS[key]] = _number_or_text(value) if key == "max-file" else value
    return raw


# Repeatable DEVICE:VALUE / NAME=SOFT:HARD options and on/off flags of the
# resource limits (issue 9): argparse dest -> raw key.
_LIMIT_LISTS = (
    ("blkio_weight_device", "blkio_weight_device"),
    ("device_read_bps", "device_read_bps"),
    ("device_write_bps", "device_write_bps"),
    ("device_read_iops", "device_read_iops"),
    ("device_write_iops", "device_write_iops"),
    ("ulimit", "ulimits"),
)
_LIMIT_FLAGS = ("oom_kill_disable", "oom_group")


def limit_lists(args: argparse.Namespace) -> dict[str, Any]:
    """The repeatable limit options and flags the user gave, as raw keys."""
    raw: dict[str, Any] = {}
    for attr, key in _LIMIT_LISTS:
        value = getattr(args, attr, None)
        if value is not None:
            raw[key] = list(value)
    for attr in _LIMIT_FLAGS:
        if getattr(args, attr, False):
            raw[attr] = True
    return raw


def update_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The raw keys `update` sends: only the options given."""
    raw: dict[str, Any] = {}
    for attr, key in _RUN_SCALARS:
        value = getattr(args, attr, None)
        if value is not None and key in _UPDATE_SCALARS:
            raw[key] = _number_or_text(value) if key in _NUMERIC else value
    raw.update(limit_lists(args))
    return raw


_UPDATE_SCALARS = frozenset(
    {
        "memory",
        "memory_swap",
        "memory_reservation",
        "memory_high",
        "cpus",
        "cpu_quota",
        "cpu_period",
        "cpu_shares",
        "cpu_weight",
        "cpuset_cpus",
        "cpuset_mems",
        "pids_limit",
        "io_weight",
        "restart",
    }
)


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration: "Less than a second", "About a minute", "3 hours"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = round(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _epoch(value: Any) -> float | None:
    """A time from the API: epoch seconds, or an RFC 3339 string."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        from datetime import datetime

        text = value.strip().replace("Z", "+00:00")
        head, dot, frac = text.partition(".")
        if dot:  # Python < 3.12 takes at most 6 fractional digits
            digits = "".join(ch for ch in frac if ch.isdigit())
            frac = digits[:6] + frac[len(digits) :]
            text = f"{head}.{frac}"
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


def status_text(summary: Mapping[str, Any], now: float) -> str:
    """The STATUS column, like docker ps: "Up 3 minutes", "Exited (137) 5 seconds ago"."""
    state = str(summary.get("state") or "")
    exit_code = summary.get("exit_code")
    started = _epoch(summary.get("started_at"))
    finished = _epoch(summary.get("finished_at"))
    code = "" if exit_code is None else f" ({exit_code})"
    if state in ("running", "stopping"):
        up = "Up" if started is None else f"Up {human_duration(max(0.0, now - started))}"
        health = summary.get("health")
        if state == "running" and health:
            up += " (health: starting)" if health == "starting" else f" ({health})"
        return up + (" (stopping)" if state == "stopping" else "")
    if state == "restarting":
        ago = "" if finished is None else f" {human_duration(max(0.0, now - finished))} ago"
        return f"Restarting{code}{ago}"
    if state in ("exited", "stopped", "dead"):
        ago = "" if finished is None else f" {human_duration(max(0.0, now - finished))} ago"
        return f"Exited{code}{ago}"
    if state == "created":
        return "Created"
    return state.capitalize() or str(summary.get("status") or "")


def _command_text(command: Any, width: int = 20) -> str:
    if isinstance(command, list):
        import shlex

        text = shlex.join(str(c) for c in command)
    else:
        text = str(command or "")
    if len(text) > width:
        text = text[: width - 1] + "…"
    return f'"{text}"'


def ps_table(summaries: Sequence[Mapping[str, Any]], now: float) -> str:
    header = ("NAME", "STATUS", "PID", "RESTARTS", "COMMAND", "ROOTFS")
    rows = [header]
    for s in summaries:
        pid = s.get("pid")
        rows.append(
            (
                str(s.get("name", "")),
                status_text(s, now),
                "-" if pid is None else str(pid),
                str(s.get("restart_count", 0)),
                _command_text(s.get("command")),
                str(s.get("rootfs", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = []
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(len(widths))] + [r[-1]]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Output and errors


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _api_error_text(exc: ApiError, name: str | None = None) -> tuple[str, int]:
    """(message for stderr, exit code) for an error status from the daemon."""
    if exc.status == 404:
        if name is not None and not exc.message.startswith("no such endpoint"):
            return f"nsvisor: no such container: {name}\n", 1
        return f"nsvisor: {exc.message}\n", 1
    lines = [f"nsvisor: {exc.message}"]
    for p in exc.problems:
        lines.append(f"  {option_for(str(p.get('field', '')))}: {p.get('message', '')}")
    return "\n".join(lines) + "\n", 2 if exc.status in (400, 409) else 1


def _client(args: argparse.Namespace) -> Client:
    from supervisor.client import Client

    return Client(args.socket)


def _container_path(name: str, action: str = "", **query: Any) -> str:
    from urllib.parse import quote, urlencode

    path = f"/v1/containers/{quote(name, safe='')}"
    if action:
        path += f"/{action}"
    params = {k: v for k, v in query.items() if v is not None}
    if params:
        path += "?" + urlencode(params)
    return path


def _each(args: argparse.Namespace, method: str, path_for: Callable[[str], str]) -> int:
    """One request per NAME; print each name that succeeded; keep going on errors."""
    from supervisor.client import ApiError

    client = _client(args)
    code = 0
    for name in args.names:
        try:
            client.request(method, path_for(name))
        except ApiError as exc:
            text, rc = _api_error_text(exc, name)
            _err(text)
            code = max(code, rc)
        else:
            _out(name + "\n")
    return code


# ---------------------------------------------------------------------------
# Commands


def cmd_run(args: argparse.Namespace) -> int:
    raw = run_raw(args)
    body = {"spec": raw, "start": True}
    client = _client(args)
    if (args.tty or args.interactive) and not args.detach:
        # Docker's order: create, attach, start (the attach starts it), so
        # the first output and the first input are not missed.
        _, reply = client.request("POST", "/v1/containers", {"spec": raw, "start": False})
        created = str(reply.get("name") if isinstance(reply, dict) else raw.get("name", ""))
        return _attach(args, created, start=True)
    if args.detach:
        _, reply = client.request("POST", "/v1/containers", body)
        name = reply.get("name") if isinstance(reply, dict) else None
        _out(f"{name or raw.get('name', '')}\n")
        return 0
    return _run_attached(client, body)


def _run_attached(client: Client, body: Mapping[str, Any]) -> int:
    """Stream the container's output until it exits; forward SIGINT/SIGTERM
    to it meanwhile (Docker's sig-proxy). The signal handler posts a kill on
    a second connection; the read of the stream is restarted after it (PEP 475).
    A third Ctrl-C detaches (the container keeps running), exit 130."""
    import contextlib
    import signal

    from supervisor.client import ClientError

    name: str | None = None
    pending: list[str] = []

    def forward(sig: str) -> None:
        # Already gone? Then the stream's end tells the rest.
        with contextlib.suppress(ClientError):
            client.request("POST", _container_path(name or "", "kill", signal=sig))

    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupts
        sig = "INT" if signum == signal.SIGINT else "TERM"
        if sig == "INT":
            interrupts += 1
            if interrupts >= 3:  # an escape hatch when the workload ignores SIGINT
                raise KeyboardInterrupt
        if name is None:
            pending.append(sig)
        else:
            forward(sig)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for record in client.stream("POST", "/v1/containers?attach=1", body):
            if not isinstance(record, dict):
                continue
            if "log" in record:
                out = sys.stderr if record.get("stream") == "stderr" else sys.stdout
                out.write(str(record["log"]))
                out.flush()
            elif "exit_code" in record:
                code = record["exit_code"]
                return int(code) if isinstance(code, int) else 1
            elif "error" in record:
                _err(f"nsvisor: {record['error']}\n")
                return 125
            elif "name" in record and name is None:
                name = str(record["name"])
                for sig in pending:
                    forward(sig)
                pending.clear()
    except KeyboardInterrupt:
        _err(
            f"nsvisor: detached; {name or 'the container'} keeps running (nsvisor stop {name or 'NAME'})\n"
        )
        return 130
    except OSError as exc:
        raise CliError(f"nsvisor: lost the connection to the daemon: {exc}") from exc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    raise CliError("nsvisor: the daemon closed the stream before the container exited")


def _attach(args: argparse.Namespace, name: str, *, start: bool) -> int:
    from supervisor.attachclient import DETACHED, AttachFailed, run_attach

    try:
        code = run_attach(
            args.socket,
            name,
            stdin=not getattr(args, "no_stdin", False),
            start=start,
            detach_keys=args.detach_keys,
        )
    except ValueError as exc:  # --detach-keys
        raise CliError(f"nsvisor: --detach-keys: {exc}", 2) from None
    except AttachFailed as exc:
        raise CliError(f"nsvisor: {exc}", 125 if start and exc.code == 1 else exc.code) from None
    except KeyboardInterrupt:
        code = DETACHED
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        from supervisor.client import DaemonUnreachable

        raise DaemonUnreachable(args.socket) from exc
    if code == DETACHED:
        _err(f"\r\nnsvisor: detached from {name}; it keeps running (nsvisor attach {name})\r\n")
        return 0
    return code


def cmd_attach(args: argparse.Namespace) -> int:
    return _attach(args, args.name, start=False)


def cmd_stats(args: argparse.Namespace) -> int:
    from supervisor.statsview import show_stats

    query: dict[str, str] = {"stream": "0" if args.no_stream else "1"}
    if args.names:
        query["names"] = ",".join(args.names)
    client = _client(args)
    from urllib.parse import urlencode

    path = "/v1/stats?" + urlencode(query)
    if args.no_stream:
        snapshots: Iterable[Any] = [client.request("GET", path)[1]]
    else:
        snapshots = client.stream("GET", path)
    try:
        return show_stats(snapshots, fmt=args.format, stream=not args.no_stream)
    except KeyboardInterrupt:
        return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from supervisor.cpclient import CpError, copy_from, copy_to, parse_ref

    src_name, src = parse_ref(args.src)
    dst_name, dst = parse_ref(args.dst)
    if (src_name is None) == (dst_name is None):
        raise CliError(
            "nsvisor: cp copies between a container and the host: "
            "nsvisor cp NAME:/path ./local  or  nsvisor cp ./local NAME:/path",
            2,
        )
    try:
        if src_name is not None:
            copy_from(args.socket, src_name, src, dst)
        else:
            assert dst_name is not None
            copy_to(args.socket, src, dst_name, dst)
    except CpError as exc:
        raise CliError(str(exc), exc.code) from None
    except OSError as exc:
        raise CliError(f"nsvisor: {exc}") from None
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from supervisor.completion import script

    _out(script(args.shell, build_parser()))
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """Hidden: what the completion scripts ask the daemon for. Quiet and
    quick when there is no daemon: completion must never hang a shell."""
    from supervisor.client import Client, ClientError

    if args.what == "names":
        try:
            _, found = Client(args.socket, timeout=2.0).request("GET", "/v1/containers?all=1")
        except (ClientError, OSError):
            return 0
        for c in found if isinstance(found, list) else []:
            _out(f"{c.get('name', '')}\n")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from supervisor.statsview import show_top

    _, reply = _client(args).request("GET", _container_path(args.name, "top"))
    return show_top(reply.get("processes", []) if isinstance(reply, dict) else [], fmt=args.format)


def cmd_ps(args: argparse.Namespace) -> int:
    _, summaries = _client(args).request("GET", "/v1/containers?all=" + ("1" if args.all else "0"))
    summaries = summaries if isinstance(summaries, list) else []
    if args.format == "json":
        _out(json.dumps(summaries) + "\n")
    else:
        _out(ps_table(summaries, time.time()) + "\n")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from supervisor.client import ApiError

    query: dict[str, Any] = {"follow": "1" if args.follow else "0"}
    if args.tail is not None and args.tail != "all":
        query["tail"] = args.tail
    if args.since:
        since = since_epoch(args.since, time.time())
        if since is None:
            raise CliError(
                f"nsvisor: --since {args.since!r}: use a time (2026-01-02T15:04:05Z, a Unix "
                "timestamp) or a duration before now (10m, 1h30m)",
                2,
            )
        query["since"] = f"{since:.9f}"
    try:
        for record in _client(args).stream("GET", _container_path(args.name, "logs", **query)):
            if not isinstance(record, dict) or "log" not in record:
                continue
            text = str(record["log"])
            if args.timestamps:
                text = f"{record.get('time', '')} {text}"
            out = sys.stderr if record.get("stream") == "stderr" else sys.stdout
            out.write(text)
            out.flush()
    except ApiError as exc:
        text, code = _api_error_text(exc, args.name)
        _err(text)
        return code
    except KeyboardInterrupt:
        return 130
    return 0


def since_epoch(text: str, now: float) -> float | None:
    """--since: RFC 3339 / ISO time, Unix timestamp, or a duration back from
    now ("10m", "1h30m"), as Docker takes it. Pure."""
    t = _epoch(text)
    if t is not None:
        return t
    try:
        return float(text)
    except ValueError:
        pass
    from supervisor.units import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        return None


def cmd_exec(args: argparse.Namespace) -> int:
    from supervisor.execclient import ExecFailed, run_exec

    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("nsvisor: exec needs a command: nsvisor exec NAME -- CMD [ARG...]", 2)
    env: list[str] = []
    for item in args.env or []:
        if "=" in item:
            env.append(item)
        elif item in os.environ:
            env.append(f"{item}={os.environ[item]}")
    request = {
        "cmd": command,
        "env": env,
        "user": args.user,
        "workdir": args.workdir,
        "tty": bool(args.tty),
        "interactive": bool(args.interactive),
    }
    try:
        return run_exec(
            args.socket, args.name, request, interactive=bool(args.interactive), tty=bool(args.tty)
        )
    except KeyboardInterrupt:
        return 130  # the connection closes: the daemon kills the command
    except ExecFailed as exc:
        if exc.code == 1 and "no such container" in str(exc):
            _err(f"nsvisor: no such container: {args.name}\n")
        else:
            _err(f"nsvisor: {exc}\n")
        for p in exc.problems:
            _err(f"  {option_for(str(p.get('field', '')))}: {p.get('message', '')}\n")
        return exc.code
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        from supervisor.client import DaemonUnreachable

        raise DaemonUnreachable(args.socket) from exc


def cmd_reload(args: argparse.Namespace) -> int:
    from supervisor.client import ApiError

    try:
        _, plan = _client(args).request("POST", "/v1/reload")
    except ApiError as exc:
        if exc.status != 400:
            raise
        _err("nsvisor: reload rejected, nothing changed:\n")
        for p in exc.problems:
            _err(f"{p.get('text') or p.get('field', '') + ': ' + p.get('message', '')}\n")
        return 2
    if isinstance(plan, dict):
        for key in ("added", "removed", "changed", "unchanged"):
            names = plan.get(key) or []
            _out(f"{key}: {', '.join(names) if names else '-'}\n")
    return 0


def cmd_network(args: argparse.Namespace) -> int:
    from supervisor.client import ApiError

    client = _client(args)
    action = args.network_command
    if action == "ls":
        _, nets = client.request("GET", "/v1/networks")
        rows = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "CONTAINERS")]
        for n in nets if isinstance(nets, list) else []:
            rows.append(
                (n["name"], n["subnet"], n["gateway"], n["bridge"], str(len(n["containers"])))
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            _out("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
        return 0
    if action == "create":
        body: dict[str, Any] = {"name": args.name, "subnet": args.subnet}
        if args.mtu is not None:
            body["mtu"] = args.mtu
        client.request("POST", "/v1/networks", body)
        _out(args.name + "\n")
        return 0
    code = 0
    found: list[Any] = []
    for name in args.names:
        from urllib.parse import quote

        path = f"/v1/networks/{quote(name, safe='')}"
        try:
            reply = client.request("DELETE" if action == "rm" else "GET", path)[1]
        except ApiError as exc:
            text, rc = _api_error_text(exc, name)
            _err(text)
            code = max(code, rc)
            continue
        if action == "rm":
            _out(name + "\n")
        else:
            found.append(reply)
    if action == "inspect":
        _out(json.dumps(found, indent=2) + "\n")
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    from supervisor.client import ApiError

    client = _client(args)
    found: list[Any] = []
    code = 0
    for name in args.names:
        try:
            found.append(client.request("GET", _container_path(name))[1])
        except ApiError as exc:
            text, rc = _api_error_text(exc, name)
            _err(text)
            code = max(code, rc)
    _out(json.dumps(found, indent=2) + "\n")
    return code


def cmd_events(args: argparse.Namespace) -> int:
    try:
        for event in _client(args).stream("GET", "/v1/events"):
            _out(json.dumps(event) + "\n")
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from supervisor import __version__
    from supervisor.client import ClientError

    _out(f"nsvisor {__version__}\n")
    try:
        _, info = _client(args).request("GET", "/v1/version")
    except ClientError as exc:
        _err(f"daemon: not reachable ({exc})\n")
        return 0
    if isinstance(info, dict) and "version" in info:
        extra = ", ".join(f"{k} {v}" for k, v in info.items() if k != "version")
        _out(f"daemon: nsvisor {info['version']}" + (f" ({extra})" if extra else "") + "\n")
    else:
        _out(f"daemon: {json.dumps(info)}\n")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    """Change the limits of containers in place (docker update)."""
    from supervisor.client import ApiError

    raw = update_raw(args)
    if not raw:
        raise CliError(
            "nsvisor update: give at least one limit to change, e.g. --memory 64m"
            " (or --restart POLICY)",
            2,
        )
    client = _client(args)
    code = 0
    for name in args.names:
        try:
            client.request("POST", _container_path(name, "update"), {"spec": raw})
        except ApiError as exc:
            text, rc = _api_error_text(exc, name)
            _err(text)
            code = max(code, rc)
        else:
            _out(name + "\n")
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    from supervisor.config import load_config
    from supervisor.errors import ConfigError

    # load_config rather than check_config: the same problems, rendered the same
    # way, and the count of containers for the OK line without a second parse.
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for p in exc.problems:
            _err(p.render(exc.source) + "\n")
        return 2
    _out(f"{args.file}: OK ({len(config.containers)} containers)\n")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = {}
    socket = args.daemon_socket or args.global_socket
    if socket:
        overrides["socket"] = socket
    for key in (
        "state_dir",
        "metrics_addr",
        "cgroup_parent",
        "bridge",
        "bridge_subnet",
        "net_prefix",
        "userns",
    ):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    from supervisor.daemon.app import run

    return int(run(args.config, overrides) or 0)


def cmd_rootfs(args: argparse.Namespace) -> int:
    from supervisor.runtime.rootfs import build_busybox_rootfs

    build_busybox_rootfs(args.dir)
    _out(f"{args.dir}\n")
    return 0


# ---------------------------------------------------------------------------
# Parser


def _add_run_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("-d", "--detach", action="store_true", help="run in the background and print the name")
    a("-i", "--interactive", action="store_true", help="keep stdin open and pass it to the command")
    a(
        "-t",
        "--tty",
        action="store_true",
        help="give the command a terminal (kept by the container)",
    )
    a(
        "--detach-keys",
        default="ctrl-p,ctrl-q",
        metavar="KEYS",
        help="keys that detach from a -it container (default ctrl-p,ctrl-q)",
    )
    a("--rm", dest="auto_remove", action="store_true", help="remove the container when it exits")
    a("--name", help="container name (default: generated)")
    a(
        "-e",
        "--env",
        action="append",
        metavar="K=V",
        help="set an environment variable (repeatable)",
    )
    a("-w", "--workdir", help="working directory inside the container")
    a("-u", "--user", help="UID[:GID] or name[:group] from the rootfs's /etc/passwd")
    a("--hostname", help="host name (default: the container name)")
    a("-m", "--memory", help="memory limit, e.g. 64m, 1g")
    a("--memory-swap", help="memory + swap limit; -1 = unlimited swap")
    a("--cpus", help="number of CPUs, e.g. 0.5")
    a("-c", "--cpu-shares", help="relative CPU weight (2..262144)")
    a("--cpu-weight", help="cgroup v2 CPU weight (1..10000)")
    a("--pids-limit", help="maximum number of processes (-1 = unlimited)")
    a("--blkio-weight", "--io-weight", dest="io_weight", help="block I/O weight (10..1000)")
    _add_limit_options(p)
    a("--oom-score-adj", help="the OOM killer's preference for the workload (-1000..1000)")
    a(
        "--network-rate",
        metavar="IN[:OUT]",
        help="bandwidth to[:from] a bridged container, e.g. 10mbit:2mbit",
    )
    a(
        "--ulimit",
        action="append",
        metavar="NAME=SOFT[:HARD]",
        help="a process limit, e.g. nofile=1024:2048 (repeatable; Docker's names)",
    )
    a("--restart", help="no, on-failure[:N], always, unless-stopped")
    a("-v", "--volume", action="append", metavar="SRC:DST[:ro|rw]", help="bind mount (repeatable)")
    a("--tmpfs", action="append", metavar="DST[:OPTS]", help="tmpfs mount, e.g. /run:size=64m")
    a("--read-only", action="store_true", help="mount the rootfs read-only")
    a("--stop-signal", help="signal for stop (default SIGTERM)")
    a("--stop-timeout", help="seconds to wait after the stop signal (default 10)")
    a(
        "--network",
        help="none (default, loopback only), host, bridge, container:NAME or a network's name",
    )
    a(
        "-p",
        "--publish",
        action="append",
        metavar="[IP:]HOST_PORT:PORT[/tcp|udp]",
        help="publish a container port on the host (bridge networks; repeatable)",
    )
    for ns in ("pid", "ipc", "uts", "cgroupns"):
        a(f"--{ns}", help=f"{ns} namespace: private (default) or host")
    a("--cap-add", action="append", metavar="CAP", help="add a capability (repeatable)")
    a("--cap-drop", action="append", metavar="CAP", help="drop a capability (repeatable)")
    a(
        "--security-opt",
        action="append",
        metavar="OPT",
        help="seccomp=unconfined, seccomp=PROFILE.json (Docker's format) or no-new-privileges",
    )
    a(
        "--device",
        action="append",
        metavar="HOST[:CONTAINER][:rwm]",
        help="give the container a host device (repeatable)",
    )
    a(
        "--userns",
        choices=("auto", "host"),
        help="auto: map root to a host subuid range; host: none",
    )
    a("--backoff-initial", help="first restart delay (default 100ms)")
    a("--backoff-max", help="longest restart delay (default 60s)")
    a("--backoff-factor", help="delay multiplier per restart (default 2)")
    a("--backoff-reset", help="a run this long resets the delay (default 10s)")
    a("--health-cmd", help="command run inside the container to check its health (sh -c)")
    a("--health-interval", help="time between health checks (default 30s)")
    a("--health-timeout", help="a check running longer fails (default 30s)")
    a("--health-retries", help="failures in a row that make it unhealthy (default 3)")
    a("--health-start-period", help="failures in this time after the start do not count (0s)")
    a("--on-unhealthy", help="restart (through the restart policy) or none (default)")
    a(
        "--log-opt",
        action="append",
        metavar="K=V",
        help="json-file log option: max-size=10m, max-file=3 (repeatable)",
    )
    a("rootfs", metavar="ROOTFS", help="the container's root filesystem directory")
    a("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the program and its arguments")


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """The resource limits `run` and `update` share (beyond -m/--cpus/...)."""
    a = p.add_argument
    for kind, what in (("read", "read"), ("write", "write")):
        a(
            f"--device-{kind}-bps",
            action="append",
            metavar="DEVICE:RATE",
            help=f"limit {what} bytes/s from a block device, e.g. /dev/sda:10mb (repeatable)",
        )
        a(
            f"--device-{kind}-iops",
            action="append",
            metavar="DEVICE:IOPS",
            help=f"limit {what} operations/s on a block device, e.g. /dev/sda:100 (repeatable)",
        )
    a(
        "--blkio-weight-device",
        action="append",
        metavar="DEVICE:WEIGHT",
        help="block I/O weight for one device, e.g. /dev/sda:200 (repeatable)",
    )
    a("--cpuset-cpus", help="CPUs the container may run on, e.g. 0-1,3")
    a("--cpuset-mems", help="memory nodes the container may use, e.g. 0")
    a("--cpu-period", help="CFS period in microseconds (with --cpu-quota)")
    a("--cpu-quota", help="CFS quota in microseconds per period (an alternative to --cpus)")
    a("--memory-reservation", help="soft memory limit, e.g. 32m (memory.low on v2)")
    a("--memory-high", help="memory throttling limit, e.g. 48m (cgroup v2 memory.high)")
    a("--oom-kill-disable", action="store_true", help="disable the OOM killer (cgroup v1 only)")
    a("--oom-group", action="store_true", help="on OOM kill the whole container (cgroup v2)")


class _Skipped:
    """Stands in for the parser of a subcommand that build_parser(only=...)
    leaves out: every method call does nothing and returns it again."""

    def __getattr__(self, name: str) -> Callable[..., _Skipped]:
        return lambda *args, **kwargs: self


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, with the terminal width looked up once: argparse
    makes one per add_argument (to check the metavar), and each asked the
    terminal for its size (shutil.get_terminal_size: ~70 times for `run`)."""

    def __init__(self, prog: str) -> None:
        global _TERMINAL_WIDTH
        if _TERMINAL_WIDTH is None:
            import shutil

            _TERMINAL_WIDTH = shutil.get_terminal_size().columns - 2
        super().__init__(prog, width=_TERMINAL_WIDTH)


_TERMINAL_WIDTH: int | None = None


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand argv names (the first word after the global
    options), or None when it asks for help or names none."""
    it = iter(argv)
    for arg in it:
        if arg == "--socket":
            next(it, None)
        elif arg.startswith("--socket="):
            continue
        elif arg.startswith("-"):
            return None  # -h, --help, or an error argparse should report
        else:
            return arg
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, just that subcommand's parser
    under the top-level one (about 40 subcommands with their options took
    10 ms of every CLI start to build on the build machines). An `only` that
    is no subcommand builds them all, so argparse reports it as usual.
    Kept once built: the command server (supervisor.cliserver) builds them
    before it forks its workers."""
    cached = _PARSERS.get(only)
    if cached is not None:
        return cached
    built = _build_parser(only)
    if only is not None and built is None:
        built = _build_parser(None)
    assert built is not None
    _PARSERS[only] = built
    return built


_PARSERS: dict[str | None, argparse.ArgumentParser] = {}


def command_names() -> list[str]:
    """Every subcommand's name (the command server builds their parsers)."""
    sub = next(a for a in build_parser(None)._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def _build_parser(only: str | None) -> argparse.ArgumentParser | None:
    matched = False
    parser = argparse.ArgumentParser(
        prog="nsvisor",
        description="A container supervisor on Linux namespaces and cgroups.",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--socket",
        dest="global_socket",
        metavar="PATH",
        help=f"the daemon's control socket (default: $NSVISOR_SOCKET or {DEFAULT_SOCKET})",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        nonlocal matched
        if only is not None and name != only:
            return _Skipped()  # type: ignore[return-value]
        matched = True
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    _add_run_options(add("run", cmd_run, "create and start a container"))

    p = add(
        "update",
        cmd_update,
        "change the resource limits (and restart policy) of containers in place",
    )
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m")
    p.add_argument("--memory-swap", help="memory + swap limit; -1 = unlimited swap")
    p.add_argument("--cpus", help="number of CPUs, e.g. 0.5")
    p.add_argument("-c", "--cpu-shares", help="relative CPU weight (2..262144)")
    p.add_argument("--cpu-weight", help="cgroup v2 CPU weight (1..10000)")
    p.add_argument("--pids-limit", help="maximum number of processes (-1 = unlimited)")
    p.add_argument("--blkio-weight", dest="io_weight", help="block I/O weight (10..1000)")
    p.add_argument(
        "--restart",
        metavar="POLICY",
        help="restart policy from the next exit on: no, always, unless-stopped, on-failure[:N]",
    )
    _add_limit_options(p)
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add("ps", cmd_ps, "list containers")
    p.add_argument("-a", "--all", action="store_true", help="show stopped containers too")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("logs", cmd_logs, "print a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--tail", metavar="N", help="only the last N lines (default: all)")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
    p.add_argument(
        "--since", metavar="TIME", help="only lines since TIME (2026-01-02T15:04:05Z, 10m, 1h)"
    )
    p.add_argument("name", metavar="NAME")

    p = add("exec", cmd_exec, "run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("-e", "--env", action="append", metavar="K=V", help="set a variable")
    p.add_argument("-u", "--user", help="UID[:GID] or name[:group] (default: the container's)")
    p.add_argument("-w", "--workdir", help="working directory (default: the container's)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")

    p = add("attach", cmd_attach, "attach to a running container's terminal or output")
    p.add_argument(
        "--detach-keys",
        default="ctrl-p,ctrl-q",
        metavar="KEYS",
        help="keys that detach (default ctrl-p,ctrl-q)",
    )
    p.add_argument("--no-stdin", action="store_true", help="do not pass stdin to the container")
    p.add_argument("name", metavar="NAME")

    p = add("stats", cmd_stats, "live CPU, memory, network, block I/O and pids of containers")
    p.add_argument("--no-stream", action="store_true", help="print one sample and exit")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these (default: all running)")

    p = add("completion", cmd_completion, "print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=("bash", "zsh"))
    hidden = sub.add_parser("__complete", formatter_class=_Formatter)  # no help=: not listed
    hidden.set_defaults(func=cmd_complete)
    hidden.add_argument("what", choices=("names",))

    p = add("cp", cmd_cp, "copy files between a container and the host (owners and modes kept)")
    p.add_argument("src", metavar="SRC", help="NAME:/path or a local path")
    p.add_argument("dst", metavar="DST", help="a local path or NAME:/path")

    p = add("top", cmd_top, "list a container's processes (host and container pids)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("name", metavar="NAME")

    add("reload", cmd_reload, "re-read the daemon's config file (as SIGHUP)")

    p = add("inspect", cmd_inspect, "print containers' details as JSON")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add(
        "stop",
        lambda a: _each(a, "POST", lambda n: _container_path(n, "stop", timeout=a.time)),
        "stop containers",
    )
    p.add_argument(
        "-t",
        "--time",
        "--timeout",
        dest="time",
        type=int,
        metavar="S",
        help="seconds before SIGKILL",
    )
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add(
        "start",
        lambda a: _each(a, "POST", lambda n: _container_path(n, "start")),
        "start containers",
    )
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add(
        "restart",
        lambda a: _each(a, "POST", lambda n: _container_path(n, "restart", timeout=a.time)),
        "restart containers",
    )
    p.add_argument(
        "-t",
        "--time",
        "--timeout",
        dest="time",
        type=int,
        metavar="S",
        help="seconds before SIGKILL",
    )
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add(
        "rm",
        lambda a: _each(a, "DELETE", lambda n: _container_path(n, force="1" if a.force else None)),
        "remove containers",
    )
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = add(
        "kill",
        lambda a: _each(a, "POST", lambda n: _container_path(n, "kill", signal=a.signal)),
        "send a signal to containers",
    )
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("names", nargs="+", metavar="NAME")

    add("events", cmd_events, "print lifecycle events as JSON lines")
    add("version", cmd_version, "print the CLI's and the daemon's version")

    p = add("check-config", cmd_check_config, "validate a config file")
    p.add_argument("file", metavar="FILE")

    p = add("daemon", cmd_daemon, "run the daemon (as root)")
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--state-dir", metavar="DIR")
    p.add_argument("--socket", dest="daemon_socket", metavar="PATH")
    p.add_argument("--metrics-addr", metavar="HOST:PORT")
    p.add_argument("--cgroup-parent", metavar="PATH")
    p.add_argument("--bridge", metavar="IFNAME", help="the default network's bridge (nsvisor0)")
    p.add_argument("--bridge-subnet", metavar="CIDR", help="its subnet (10.88.0.0/16)")
    p.add_argument(
        "--net-prefix", metavar="PREFIX", help="prefix of interface names and the nft table (nsv)"
    )
    p.add_argument(
        "--userns",
        choices=("auto", "host"),
        help="user namespace of containers that set none (host)",
    )

    p = add("network", cmd_network, "manage networks: ls, create, rm, inspect")
    nsub = p.add_subparsers(dest="network_command", metavar="ACTION", required=True)
    nsub.add_parser("ls", help="list networks", formatter_class=_Formatter)
    nc = nsub.add_parser("create", help="create a bridge network", formatter_class=_Formatter)
    nc.add_argument("name", metavar="NAME")
    nc.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.89.0.0/24")
    nc.add_argument("--mtu", type=int, help="MTU of the bridge and the veths (1500)")
    nr = nsub.add_parser("rm", help="remove networks no container uses", formatter_class=_Formatter)
    nr.add_argument("names", nargs="+", metavar="NAME")
    ni = nsub.add_parser(
        "inspect", help="print networks' details as JSON", formatter_class=_Formatter
    )
    ni.add_argument("names", nargs="+", metavar="NAME")

    p = add("rootfs", cmd_rootfs, "build a root filesystem")
    rsub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    b = rsub.add_parser(
        "busybox",
        help="a busybox rootfs from the host's busybox binary",
        formatter_class=_Formatter,
    )
    b.add_argument("dir", metavar="DIR")
    return parser if matched else None


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    args.socket = args.global_socket or os.environ.get("NSVISOR_SOCKET") or DEFAULT_SOCKET
    from supervisor.client import ApiError, DaemonUnreachable

    try:
        return int(args.func(args))
    except CliError as exc:
        _err(f"{exc}\n")
        return exc.code
    except DaemonUnreachable as exc:
        _err(f"nsvisor: {exc}\n")
        return 1
    except ApiError as exc:
        text, code = _api_error_text(exc, getattr(args, "name", None))
        _err(text)
        return code
    except BrokenPipeError:
        # `nsvisor logs web | head`: stop quietly, like other Unix tools.
        # Point stdout at /dev/null so the interpreter's final flush does not
        # raise again (the recipe in the signal module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
