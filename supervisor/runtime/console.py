"""The container's terminal (`run -t`), made the way runc's console socket
makes it.

The pty must come from the container's own devpts instance (mounted with
"newinstance" by the workload): a pty of the host's /dev/ptmx would show up
inside as a path that does not exist there, and `tty` would print "not a
tty". So the workload, after its mounts and before it drops privileges,
opens /dev/pts/ptmx of its own mount namespace, makes the slave its
stdin/stdout/stderr and controlling terminal, bind-mounts it on /dev/console
(as runc does), and hands the master to the monitor over a socketpair with
SCM_RIGHTS (received by nsvisor-monitor, monitor.c). The monitor keeps the
master for the container's whole life: the terminal outlives the CLI and
the daemon.

Rejected: opening the pty in the monitor (host mount namespace: the wrong
devpts) or in the daemon (the pty would die with the daemon).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from supervisor.runtime import linux
from supervisor.runtime.spec import LaunchSpec

# The workload's end of the console socketpair, next to the error pipe (3).
CONSOLE_FD = 4
# asm-generic/ioctls.h (not in the termios module)
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def setup_console(spec: LaunchSpec) -> None:
    """In the workload, after pivot_root (a WORKLOAD_STEPS step). Nothing to
    do without spec.tty."""
    if not spec.tty:
        return
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    (number,) = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))
    path = f"/dev/pts/{number}"
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    # The user the command runs as owns its terminal (group tty from devpts).
    os.fchown(slave, spec.host_uid(spec.uid), -1)
    console = "/dev/console"
    if not os.path.exists(console):
        os.close(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
    linux.mount(path, console, None, linux.MS_BIND)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    # setsid() ran first: we lead a session without a terminal; take this one.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    sock = socket.socket(fileno=CONSOLE_FD)
    try:
        socket.send_fds(sock, [b"M"], [master])
    finally:
        sock.close()
        os.close(master)
