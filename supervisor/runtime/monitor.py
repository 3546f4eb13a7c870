"""The monitor: the container's PID 1 (tini's job) and its log/exit keeper
(conmon's job), in one process per container.

Two stages in the same process (same pid, PID 1 of the container's pid
namespace, in the host mount namespace):

1. Python (this module), cloned by the zygote: forks the workload
   (supervisor.runtime.workload.exec_workload: it sets the container up
   meanwhile and waits at a gate before execve until the monitor is ready),
   then execve()s
2. nsvisor-monitor (monitor.c, built by deploy/setup.sh), which does the
   rest for the container's whole life: reports "started"/"error" on the
   launch socket, forwards signals, reaps every child, kills the rest when
   the workload exits, writes the json-lines log (with rotation), serves
   attach clients, writes the exit file.

Why C for stage 2: its memory counts once per container. A CPython process
forked from the daemon dirties ~1.3 MiB privately before it does anything;
the C monitor's PSS is ~0.1-0.2 MiB (bench/RESULTS.md). The Python stage
does what needs Python (the workload's set-up) and is gone at execve.

Hand-over: fd 3 carries the parameters (NUL-separated key=value, see
monitor.c); the other fds are named in them. Nothing of it shows in
/proc/1/cmdline (readable by the container): argv is just the name.

The attach protocol (monitor.c serves it, supervisor.daemon.attach speaks
it): frames both ways, 1 byte type, 4 bytes big-endian length, payload.
  monitor -> client: b"1" stdout bytes, b"2" stderr bytes (a pty is "1")
  client -> monitor: b"i" input, b"r" resize ("!HH" rows, cols),
                     b"e" end of input (closes the workload's stdin pipe)
Every client gets every output chunk; with a tty a new client first gets the
last 64 KiB of output. A client whose unsent output exceeds 1 MiB is
dropped; beyond 256 KiB of unwritten input clients are not read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from supervisor.errors import NsvisorError
from supervisor.runtime import linux
from supervisor.runtime.spec import LaunchSpec
from supervisor.runtime.workload import exec_workload, fork_into_cgroup

MONITOR_SOURCE = Path(__file__).with_name("monitor.c")
MONITOR_BINARY = Path(__file__).with_name("nsvisor-monitor")
# An attach client this far behind is dropped (monitor.c CLIENT_BUFFER).
CLIENT_BUFFER = 1 << 20

Workload = Callable[..., NoReturn]

# The attach frame header: type, big-endian length (monitor.c frame_hdr).
FRAME = struct.Struct("!cI")


def frame(kind: bytes, payload: bytes) -> bytes:
    """One attach frame (the daemon's side of the protocol)."""
    return FRAME.pack(kind, len(payload)) + payload


def parse_frames(buf: bytearray) -> list[tuple[bytes, bytes]]:
    """Complete frames at the start of buf (consumed); a partial one stays."""
    out: list[tuple[bytes, bytes]] = []
    while len(buf) >= FRAME.size:
        kind, length = FRAME.unpack_from(buf)
        if len(buf) < FRAME.size + length:
            break
        out.append((kind, bytes(buf[FRAME.size : FRAME.size + length])))
        del buf[: FRAME.size + length]
    return out


class MonitorMissing(NsvisorError):
    """The C monitor binary was not built."""


def monitor_binary() -> str:
    """The path of nsvisor-monitor; MonitorMissing names the fix."""
    path = str(MONITOR_BINARY)
    if not os.access(path, os.X_OK):
        raise MonitorMissing(
            f"the container monitor {path} is missing: build it with deploy/setup.sh"
            f" (or: gcc -std=c11 -O2 -o {path} {MONITOR_SOURCE})"
        )
    return path


def _params(spec: LaunchSpec, fds: dict[str, int], workload_pid: int, private: bool) -> bytes:
    values: dict[str, object] = {
        **fds,
        "workload": workload_pid,
        "private_pidns": int(private),
        "tty": int(spec.tty),
        "stdin_open": int(spec.stdin),
        "log": spec.log_path,
        "exit": spec.exit_path,
        "attach": spec.attach_path or "",
        "oom": spec.oom_kill_file or "",
        "log_max_size": spec.log_max_size or 0,
        "log_max_files": spec.log_max_files,
        "grace": repr(float(spec.teardown_grace_s)),
    }
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in values.items())


def run_monitor(
    spec: LaunchSpec, sock: socket.socket, workload: Workload = exec_workload
) -> NoReturn:
    """In the process cloned by the zygote, all signals blocked. Forks
    the workload, then becomes nsvisor-monitor. Never returns. `workload`
    is exec_workload's stand-in for tests."""
    code = 255
    try:
        binary = monitor_binary()
        private = spec.namespaces.pid == "private" and os.getpid() == 1
        os.setsid()
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        devnull = os.open("/dev/null", os.O_RDWR)  # nothing of the daemon's stdio
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        params_r, params_w = os.pipe2(os.O_CLOEXEC)
        stdin_r = stdin_w = console_ours = console_theirs = -1
        if spec.tty:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            console_ours, console_theirs = a.detach(), b.detach()
        elif spec.stdin:
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        pid, join = fork_into_cgroup(spec.cgroup_procs)
        if pid == 0:
            # The workload: sets the container up while the monitor starts,
            # then waits at the gate (workload.GATE_FD) until the monitor has
            # its signals, the attach socket and the OOM baseline; without
            # the go-ahead (the monitor failed) it never execs.
            for fd in (out_r, err_r, exec_r, gate_w, params_r, params_w, stdin_w, console_ours):
                if fd >= 0:
                    os.close(fd)
            sock.close()
            workload(
                dataclasses.replace(spec, cgroup_procs=join),
                exec_w,
                out_w,
                err_w,
                gate_fd=gate_r,
                stdin_fd=stdin_r if stdin_r >= 0 else None,
                console_fd=console_theirs if console_theirs >= 0 else None,
            )
        for fd in (out_w, err_w, exec_w, gate_r, stdin_r, console_theirs):
            if fd >= 0:
                os.close(fd)
        fds = {
            "launch": sock.fileno(),
            "out": out_r,
            "err": err_r,
            "exec": exec_r,
            "sync": gate_w,
            "console": console_ours,
            "stdin": stdin_w,
        }
        # fd 3 is the parameters' pipe: whatever sits there (the launch
        # socket, from the zygote's clone) moves first.
        for key, fd in fds.items():
            if fd == 3:
                fds[key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        blob = _params(spec, fds, pid, private)
        if len(blob) >= 1 << 16:
            raise NsvisorError("monitor parameters over 64 KiB (paths too long?)")
        os.write(params_w, blob)  # fits the pipe buffer: no reader needed yet
        os.close(params_w)
        if fds["launch"] != sock.fileno():
            sock.close()
            sock = socket.socket(fileno=fds["launch"])
        os.dup2(params_r, 3)
        os.close(params_r)
        for fd in fds.values():
            if fd >= 0:
                os.set_inheritable(fd, True)
        os.execve(binary, ["nsvisor-monitor"], {})
    except BaseException as e:
        event = {"event": "error", "message": f"monitor failed: {e!r}"}
        with contextlib.suppress(OSError):
            sock.send(json.dumps(event).encode() + b"\n", socket.MSG_NOSIGNAL)
    finally:
        os._exit(code)
