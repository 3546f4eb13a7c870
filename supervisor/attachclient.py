"""The CLI's side of `nsvisor attach` and `run -i/-t`: one websocket to the
daemon (WS /v1/containers/NAME/attach; protocol in supervisor.daemon.attach),
the same wsproto connection as exec (supervisor.execclient).

Detach keys (Docker's --detach-keys, default ctrl-p,ctrl-q) are recognised
here, in the input typed at a terminal: the sequence is held back while it
is being typed and, once complete, closes the connection; the container
runs on. A partial sequence followed by anything else is sent as typed.

Imported only by the commands that attach.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
from typing import Any
from urllib.parse import quote

from supervisor.execclient import ExecFailed, _Connection, terminal_size

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
DETACHED = -1


class AttachFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


def parse_detach_keys(text: str) -> bytes:
    """Docker's format: comma-separated "ctrl-X" (X a letter or one of
    @[\\]^_) or single characters. "" disables detaching. Pure."""
    out = bytearray()
    for part in (p.strip() for p in text.split(",")) if text else ():
        low = part.lower()
        if low.startswith("ctrl-") and len(part) == 6:
            ch = part[5].upper()
            if not ("@" <= ch <= "_"):
                raise ValueError(
                    f"invalid detach key {part!r}: use ctrl-a..ctrl-z, ctrl-@, ctrl-[ ..."
                )
            out.append(ord(ch) - 0x40)
        elif len(part) == 1:
            out.append(ord(part))
        else:
            raise ValueError(
                f"invalid detach key {part!r}: use a comma-separated list like ctrl-p,ctrl-q"
            )
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in the typed input. Pure."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send now, detach?)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[len(self.held)]:
                self.held.append(byte)
                if len(self.held) == len(self.keys):
                    self.held.clear()
                    return bytes(out), True
                continue
            out += self.held
            self.held.clear()
            if byte == self.keys[0]:
                self.held.append(byte)
                if len(self.keys) == 1:
                    return bytes(out), True
            else:
                out.append(byte)
        return bytes(out), False


def _proxy(socket_path: str, name: str, sig: str) -> None:
    """Send the container the signal the CLI got (gone already: its exit
    comes on the attach stream anyway)."""
    from supervisor.client import Client, ClientError

    with contextlib.suppress(ClientError):
        Client(socket_path).request(
            "POST", f"/v1/containers/{quote(name, safe='')}/kill?signal={sig}"
        )


def run_attach(
    socket_path: str,
    name: str,
    *,
    stdin: bool,
    start: bool = False,
    detach_keys: str = DEFAULT_DETACH_KEYS,
) -> int:
    """Relay the terminal (or stdin/stdout/stderr) until the container's run
    ends (its exit code) or the user detaches (DETACHED)."""
    keys = parse_detach_keys(detach_keys)
    stdin_fd = sys.stdin.fileno()
    stdin_is_tty = os.isatty(stdin_fd)
    size = terminal_size(stdin_fd if stdin_is_tty else 1)
    try:
        conn = _Connection(socket_path, f"/v1/containers/{quote(name, safe='')}/attach")
    except ExecFailed as exc:
        raise AttachFailed(str(exc), exc.code) from None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # SIGWINCH, SIGINT and SIGTERM are read from the wakeup pipe in the loop.
    old_handlers = {
        s: signal.signal(s, lambda *_: None)
        for s in (signal.SIGWINCH, signal.SIGINT, signal.SIGTERM)
    }
    saved_tty: list[Any] | None = None
    scanner = DetachScanner(keys)
    tty = False
    interrupts = 0
    try:
        conn.send_text({"stdin": stdin, "start": start, "size": list(size) if size else None})
        reading_stdin = False
        while True:
            fds = [conn.sock.fileno(), wake_r] + ([stdin_fd] if reading_stdin else [])
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                signals = os.read(wake_r, 256)
                if signal.SIGWINCH in signals and tty:
                    size = terminal_size(stdin_fd if stdin_is_tty else 1)
                    if size:
                        conn.send_text({"resize": list(size)})
                for sig in (signal.SIGINT, signal.SIGTERM):
                    if sig not in signals:
                        continue
                    if tty:
                        return DETACHED  # a terminal's ^C is a byte; a signal here ends the CLI
                    # Docker's sig-proxy (without a terminal): the signal goes
                    # to the container; a third SIGINT detaches the CLI.
                    interrupts += sig == signal.SIGINT
                    if interrupts >= 3:
                        return DETACHED
                    _proxy(socket_path, name, "INT" if sig == signal.SIGINT else "TERM")
            if reading_stdin and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if not data:
                    reading_stdin = False
                    conn.send_text({"eof": True})
                else:
                    detach = False
                    if tty and stdin_is_tty:
                        data, detach = scanner.feed(data)
                    if data:
                        conn.send_bytes(data)
                    if detach:
                        return DETACHED
            if conn.sock.fileno() in ready:
                for kind, value in conn.read():
                    if kind == "bytes":
                        out = sys.stderr.buffer if value[:1] == b"\x02" else sys.stdout.buffer
                        out.write(value[1:])
                        out.flush()
                    elif kind == "json" and value.get("attached"):
                        tty = bool(value.get("tty"))
                        reading_stdin = stdin and bool(value.get("stdin"))
                        if tty and stdin_is_tty and reading_stdin:
                            import tty as ttymod

                            saved_tty = termios.tcgetattr(stdin_fd)
                            ttymod.setraw(stdin_fd)
                    elif kind == "json" and "error" in value:
                        status = int(value.get("status", 500))
                        code = 1 if status in (404, 500) else 2 if status in (400, 409) else 125
                        raise AttachFailed(str(value["error"]), code)
                    elif kind == "json" and "exit_code" in value:
                        code = value["exit_code"]
                        return int(code) if isinstance(code, int) else 255
                    elif kind == "closed":
                        raise AttachFailed("the daemon closed the attach connection", 1)
    finally:
        if saved_tty is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_tty)
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        conn.close()
