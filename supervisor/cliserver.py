"""The command server behind the C client (`nsvisor`, cli/nsvisor.c): the
CLI without a Python start per command, Mercurial's chg pattern.

A CPython start is ~20 ms on the build machines before the CLI runs a line
of its own: two thirds of what `runc run` takes in all. So the daemon starts
this server once (`python -m supervisor.cliserver SOCKET DAEMON_PID`, its
own lean process: the CLI's modules imported, nothing of the daemon's), on
`<control socket>.cli`, mode 0600. For each connection it forks a worker
that runs `supervisor.cli.main` exactly as the Python entry point would,
with the client's stdin/stdout/stderr (passed over the socket, SCM_RIGHTS),
argv, working directory, environment and umask.

Protocol, one connection per command:

    client -> server  one message, with fds 0, 1, 2 attached:
                      b"NSVCLI1\\0" cwd \\0 umask \\0 argc \\0 argv... \\0 envc \\0 env... \\0
    server -> client  b"pid N\\n"  (the worker: the client forwards the
                      signals a terminal or a supervisor sends it there)
                      b"exit N\\n" (the command's exit code)

Anything the client cannot reach this way (no server: no daemon, an older
daemon, `nsvisor daemon` itself) it runs through Python instead: same
behaviour, only slower. The server ends with the daemon (PDEATHSIG) and
accepts root's connections only (SO_PEERCRED), like the control socket.
"""

from __future__ import annotations

import array
import contextlib
import io
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import NoReturn

MAGIC = b"NSVCLI1\0"
_MAX_REQUEST = 1 << 20
_PR_SET_PDEATHSIG = 1


def socket_path(control_socket: str) -> str:
    return control_socket + ".cli"


def parse_request(data: bytes) -> tuple[str, int, list[str], dict[str, str]]:
    """(cwd, umask, argv, env) of a request; ValueError when malformed."""
    if not data.startswith(MAGIC) or not data.endswith(b"\0"):
        raise ValueError("not an nsvisor command request")
    fields = [f.decode("utf-8", "surrogateescape") for f in data[len(MAGIC) : -1].split(b"\0")]
    cwd, umask, argc = fields[0], int(fields[1], 8), int(fields[2])
    argv = fields[3 : 3 + argc]
    envc = int(fields[3 + argc])
    env_items = fields[4 + argc : 4 + argc + envc]
    if len(argv) != argc or len(env_items) != envc or 4 + argc + envc != len(fields):
        raise ValueError("request fields do not add up")
    env = dict(item.split("=", 1) for item in env_items if "=" in item)
    return cwd, umask, argv, env


def _std_streams() -> None:
    """sys.stdin/stdout/stderr anew on fds 0-2, as the interpreter makes
    them at start (stdout line-buffered on a terminal, stderr always)."""
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    out_tty = os.isatty(1)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
        encoding="utf-8",
        line_buffering=out_tty,
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )


def _hang_up_with(conn: socket.socket) -> None:
    """The client never writes after its request: EOF means it is gone
    (killed, say). Then the command gets SIGHUP, as from a terminal that
    hung up: an attached `run` or a `logs -f` does not go on for nobody."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            conn.recv(1)
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="client-watch", daemon=True).start()


def _worker(conn: socket.socket) -> NoReturn:
    code = 255
    try:
        fds = array.array("i")
        msg, anc, _, _ = conn.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if len(fds) != 3:
            raise ValueError("a request without its three stdio fds")
        cwd, umask, argv, env = parse_request(msg)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.sendall(f"pid {os.getpid()}\n".encode())
        _hang_up_with(conn)
        os.chdir(cwd)
        os.umask(umask)
        os.environ.clear()
        os.environ.update(env)
        _std_streams()
        sys.argv = ["nsvisor", *argv]
        from supervisor import cli

        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
    except BaseException as e:  # the command server's own failure
        with contextlib.suppress(OSError):
            os.write(2, f"nsvisor: command server: {e}\n".encode())
        code = 255
    finally:
        with contextlib.suppress(OSError):
            conn.sendall(f"exit {code}\n".encode())
        os._exit(code)


def _peer_is_root(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.geteuid())


# What the CLI's commands import on first use: imported once, here, for
# every worker (an import in each worker cost milliseconds of each command).
_PRELOAD = (
    "supervisor.client",
    "supervisor.attachclient",
    "supervisor.execclient",
    "supervisor.cpclient",
    "supervisor.statsview",
    "supervisor.units",
    "supervisor.config",
    "supervisor.errors",
    "supervisor.completion",
    "contextlib",
    "shlex",
    "shutil",
)


def _preload() -> None:
    import importlib

    from supervisor import cli

    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    cli.build_parser(None)
    for name in cli.command_names():
        cli.build_parser(name)
    import gc

    gc.freeze()  # workers do not copy what a collection would touch


def _prctl(option: int, arg: int) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def serve(path: str, daemon_pid: int) -> NoReturn:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != daemon_pid:
        os._exit(0)  # the daemon is gone already
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in the daemon's terminal is its own
    _preload()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(64)

    def stop(signum: int, frame: object) -> NoReturn:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    # Prefork: a worker is forked before its connection arrives and accepts
    # it itself (the fork and the child's first page faults, ~5 ms of a
    # command, happen while nobody waits); the next one is forked as soon as
    # it has.
    while True:
        ready_r, ready_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(ready_r)
            os.close(ready_w)
            time.sleep(0.1)  # out of processes (pids limit): try again
            continue
        if pid == 0:
            os.close(ready_r)
            _waiting_worker(server, ready_w)
        os.close(ready_w)
        with contextlib.suppress(OSError):
            os.read(ready_r, 1)  # it has a connection (or died: EOF)
        os.close(ready_r)


def _waiting_worker(server: socket.socket, ready_w: int) -> NoReturn:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # idle: it goes with the server
        while True:
            conn, _ = server.accept()
            if _peer_is_root(conn):
                break
            conn.close()
        _prctl(_PR_SET_PDEATHSIG, 0)  # a running command outlives a server restart
        os.write(ready_w, b"a")
        os.close(ready_w)
        server.close()
    except BaseException:
        os._exit(1)
    _worker(conn)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m supervisor.cliserver SOCKET DAEMON_PID", file=sys.stderr)
        return 2
    serve(sys.argv[1], int(sys.argv[2]))


if __name__ == "__main__":
    raise SystemExit(main())
