"""`nsvisor exec`: run one more process inside a running container.

Process tree (who reaps whom, and why):

    zygote --fork--> A --fork--> shim (B) --setns(pid), fork--> exec'd process (C)
                     A _exits at once (the zygote waits for it and must not
                     block); B is re-parented to the daemon (a subreaper).

- B stays in the host's pid and mount namespaces. It opens the target's
  namespaces through a /proc/<workload pid> directory fd (checking the
  process start time, so a recycled pid is never joined), joins the pid
  namespace for its children only (setns(CLONE_NEWPID) affects children),
  forks C, sends C's pidfd to the daemon, waits for C with waitpid and sends
  C's exit code: the exit code reaches the caller through B, not through the
  daemon's Reaper (which only reaps B, whose own status is meaningless).
- C joins the container's cgroups (writes "0" into every cgroup.procs file,
  while it still sees the host's /sys/fs/cgroup), then the ipc, uts, net,
  cgroup and mount namespaces (setns into the mount namespace puts its root
  and cwd at the container's root: the rootfs view, masks and read-only
  mounts included), drops to the container's capability set, uid/gids and
  no_new_privs, and execs.
- Anything C leaves behind (a daemonised grandchild) is orphaned *inside the
  container's pid namespace*: the kernel re-parents it to that namespace's
  PID 1, the container's monitor, which reaps every child (tini's loop).
  B is never a candidate reaper because it lives in another pid namespace.
  So no exec'd process is ever left a zombie; and when the container stops,
  its monitor's kill(-1) takes exec'd processes down with the workload.

Rejected: forking C from the daemon (trio runs threads; fork there is unsafe
and a second waitpid caller would race the Reaper), and making C a child of
the monitor (the monitor would need a control channel and would have to
report exit codes of processes it did not start).

Protocol: the daemon sends EXEC_MAGIC + the ExecSpec JSON to the zygote with
four fds (SCM_RIGHTS): the events socket (SOCK_SEQPACKET) and C's stdin,
stdout, stderr (the same pty slave three times with a tty). B answers on the
events socket, one JSON object per message:
  {"event": "started", "pid": N}  + C's pidfd
  {"event": "error", "message": str, "exit_code": 125|126|127}
  {"event": "exit", "exit_code": N}   (128+signal when killed)
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import termios
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from supervisor.runtime import linux, seccomp
from supervisor.runtime.spec import DEFAULT_PATH
from supervisor.runtime.workload import (
    EXIT_CANNOT_INVOKE,
    EXIT_NOT_FOUND,
    EXIT_SETUP_FAILED,
    drop_privileges,
    execvpe,
    fork_into_cgroup,
    reset_signals,
)

EXEC_MAGIC = b"EXEC\n"

# The order C joins them in: mount last (after it, host paths are gone), the
# cgroup namespace after the cgroup itself (its root is then the container's).
# pid is joined by B (for its children). The user namespace of --userns=auto
# comes after all of them, as in the workload (supervisor.runtime.userns): the
# others are owned by the host's, joined with host root's privileges.
JOIN_ORDER: tuple[tuple[str, int], ...] = (
    ("ipc", linux.CLONE_NEWIPC),
    ("uts", linux.CLONE_NEWUTS),
    ("net", linux.CLONE_NEWNET),
    ("cgroup", linux.CLONE_NEWCGROUP),
    ("mnt", linux.CLONE_NEWNS),
    ("user", linux.CLONE_NEWUSER),
)


@dataclass(frozen=True, kw_only=True)
class ExecSpec:
    name: str  # the container's, for messages
    argv: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    capabilities: tuple[str, ...]
    cgroup_procs: tuple[str, ...]
    target_pid: int  # the workload's host pid: its namespaces are joined
    target_starttime: int | None  # /proc/PID/stat field 22 at launch
    tty: bool = False
    seccomp: str = "default"  # the container's setting (LaunchSpec.seccomp)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ExecSpec:
        raw: dict[str, Any] = json.loads(data)
        for key in ("argv", "env", "additional_gids", "capabilities", "cgroup_procs"):
            raw[key] = tuple(raw[key])
        return cls(**raw)

    def path_env(self) -> str:
        for entry in self.env:
            if entry.startswith("PATH="):
                return entry[5:]
        return DEFAULT_PATH


def starttime_from_stat(data: bytes) -> int:
    """Field 22 of /proc/PID/stat (comm may hold spaces and parentheses)."""
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])


def exit_code_of(status: int) -> int:
    """A waitpid status as a shell would report it: 128+signal when killed."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _send(sock: socket.socket, event: dict[str, object], fds: list[int] | None = None) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with contextlib.suppress(OSError):
        sock.sendmsg([json.dumps(event).encode()], anc, socket.MSG_NOSIGNAL)


# --- the zygote's side ---------------------------------------------------------


def spawn_exec(msg: bytes, fds: list[int]) -> int:
    """In the zygote: fork A (which forks the shim and exits). Closes `fds` in
    the zygote; returns A's pid for the zygote to reap (0 if the fork failed)."""
    try:
        pid = os.fork()
    except OSError as e:
        if fds:
            _send(
                socket.socket(fileno=os.dup(fds[0])),
                {"event": "error", "message": f"zygote fork: {e}", "exit_code": 125},
            )
        pid = 0
    if pid == 0:
        _first_child(msg[len(EXEC_MAGIC) :], fds)
    for fd in fds:
        os.close(fd)
    return pid


def _first_child(spec_json: bytes, fds: list[int]) -> NoReturn:
    code = 1
    try:
        if len(fds) != 4:
            raise OSError(errno.EINVAL, f"exec request with {len(fds)} fds, expected 4")
        # fds -> 3 (events socket), 4, 5, 6 (stdio); nothing else survives.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
        for target, fd in enumerate(high, start=3):
            os.dup2(fd, target, inheritable=False)
        linux.close_range(7)
        if os.fork() == 0:
            _shim(spec_json)
        code = 0
    except BaseException as e:
        with contextlib.suppress(Exception):
            _send(
                socket.socket(fileno=3),
                {"event": "error", "message": f"exec: {e}", "exit_code": 125},
            )
    finally:
        os._exit(code)


def _open_namespaces(spec: ExecSpec) -> tuple[int | None, list[tuple[str, int, int]]]:
    """(pid ns fd or None, [(name, fd, flag)]) of the target's namespaces that
    differ from ours; checks the target is the process launched (start time)."""
    try:
        proc = os.open(f"/proc/{spec.target_pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeError(f"container {spec.name}: its workload is gone") from None
    try:
        with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as f:
            starttime = starttime_from_stat(f.read())
        if spec.target_starttime is not None and starttime != spec.target_starttime:
            raise RuntimeError(f"container {spec.name}: its workload is gone (pid reused)")
        joined: list[tuple[str, int, int]] = []
        pid_fd: int | None = None
        for name, flag in (("pid", linux.CLONE_NEWPID), *JOIN_ORDER):
            theirs = os.stat(f"ns/{name}", dir_fd=proc)
            ours = os.stat(f"/proc/self/ns/{name}")
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                continue  # shared with the host (network = "host", ...)
            fd = os.open(f"ns/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
            if name == "pid":
                pid_fd = fd
            else:
                joined.append((name, fd, flag))
        # Read again through the same directory fd: ESRCH if it died meanwhile.
        with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as f:
            if starttime_from_stat(f.read()) != starttime:
                raise RuntimeError(f"container {spec.name}: its workload is gone")
        return pid_fd, joined
    except ProcessLookupError:
        raise RuntimeError(f"container {spec.name}: its workload is gone") from None
    finally:
        os.close(proc)


def _shim(spec_json: bytes) -> NoReturn:
    """B: fds 3 = events socket, 4/5/6 = the exec'd process's stdio."""
    sock = socket.socket(fileno=3)
    code = 0
    try:
        linux.prctl(linux.PR_SET_DUMPABLE, 0)  # it holds the container's ns fds
        os.setsid()
        spec = ExecSpec.from_json(spec_json)
        pid_fd, namespaces = _open_namespaces(spec)
        if pid_fd is not None:
            linux.setns(pid_fd, linux.CLONE_NEWPID)  # for the children
            os.close(pid_fd)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        child, join = fork_into_cgroup(spec.cgroup_procs)
        if child == 0:
            _exec_child(spec, join, namespaces, err_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(err_w)
        for _, fd, _ in namespaces:
            os.close(fd)
        pidfd = os.pidfd_open(child)
        for fd in (4, 5, 6):  # only C keeps its stdio: EOF reaches the daemon
            os.close(fd)
        report = b""
        while chunk := os.read(err_r, 65536):
            report += chunk
        os.close(err_r)
        if report:
            text = report.decode(errors="replace")
            exit_code, _, message = text.partition(" ")
            os.waitpid(child, 0)
            _send(sock, {"event": "error", "message": message, "exit_code": int(exit_code)})
        else:
            _send(sock, {"event": "started", "pid": child}, [pidfd])
            _, status = os.waitpid(child, 0)
            _send(sock, {"event": "exit", "exit_code": exit_code_of(status)})
        os.close(pidfd)
    except BaseException as e:
        code = 1
        _send(sock, {"event": "error", "message": str(e), "exit_code": 125})
    finally:
        os._exit(code)


# --- C: from the fork to execve ----------------------------------------------


def _drop_privileges(spec: ExecSpec) -> None:
    drop_privileges(spec.capabilities, spec.uid, spec.gid, spec.additional_gids)


def _execvpe(spec: ExecSpec) -> NoReturn:
    execvpe(spec.argv, spec.env, spec.path_env())


def _host_uid(pid: int, uid: int) -> int:
    """A uid of the target's user namespace as the host sees it (its uid_map)."""
    with open(f"/proc/{pid}/uid_map") as f:
        for line in f:
            inside, outside, count = (int(v) for v in line.split())
            if inside <= uid < inside + count:
                return outside + uid - inside
    raise OSError(errno.EINVAL, f"uid {uid} is not mapped in the container's user namespace")


def _exec_child(
    spec: ExecSpec, join: tuple[str, ...], namespaces: list[tuple[str, int, int]], errfd: int
) -> NoReturn:
    """join: the cgroup files left to write (fork_into_cgroup)."""
    code = EXIT_SETUP_FAILED
    step = "set up"
    try:
        reset_signals()
        os.setsid()
        for target, fd in enumerate((4, 5, 6)):
            os.dup2(fd, target)
        if spec.tty:
            step = "set the controlling terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # The user the command runs as owns its terminal (as in the
            # workload), a host id when the container has a user namespace.
            os.fchown(0, _host_uid(spec.target_pid, spec.uid), -1)
        step = "join the container's cgroup"
        for path in join:
            with open(path, "w") as f:
                f.write("0")
        for name, fd, flag in namespaces:
            step = f"join the {name} namespace"
            linux.setns(fd, flag)
        os.dup2(errfd, 3, inheritable=False)
        errfd = 3
        linux.close_range(4)  # nothing of the host's survives into the container
        step = f"chdir {spec.cwd}"
        os.chdir(spec.cwd)
        step = "drop privileges"
        _drop_privileges(spec)
        step = "load the seccomp profile"  # the container's, so exec is no way around it
        seccomp.install(spec.seccomp, spec.capabilities)  # prepared before the zygote fork
        step = "exec"
        try:
            _execvpe(spec)
        except OSError as e:
            code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_INVOKE
            raise RuntimeError(
                f"exec {spec.argv[0]!r} in container {spec.name}: {os.strerror(e.errno or 0)}"
            ) from None
    except BaseException as e:
        text = str(e) if step == "exec" else f"{step}: {e}"
        with contextlib.suppress(OSError):
            os.write(errfd, f"{code} {text}".encode(errors="replace"))
    finally:
        os._exit(code)
