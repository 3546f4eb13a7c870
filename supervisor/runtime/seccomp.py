"""seccomp: the default allow-list, Docker's JSON profile format, and loading a
filter with libseccomp (through the `pyseccomp` binding, ctypes over
libseccomp.so.2).

Three layers, the first two pure:

- `default_profile()` is nsvisor's default profile *in Docker's JSON format*
  (defaultAction SCMP_ACT_ERRNO/EPERM, the syscalls Docker's default profile
  allows, its argument filters for clone/clone3/personality/socket and the
  capability-dependent groups). It is built from the grouped tables below; the
  same JSON is in supervisor/runtime/profiles/default.json for users who want
  to start from it (a unit test keeps the two equal).
- `parse_profile(json)` validates a Docker profile (ProfileError names the
  field and the fix); `compile_profile(profile, caps, arch, kernel)` resolves
  includes/excludes (capabilities, architecture, minKernel) into a flat
  `Filter`: one default action and a list of (syscall, action, args) rules.
- `build_bpf(filter)` has libseccomp generate the classic BPF program of a
  filter (seccomp_export_bpf: the very program seccomp_load would install);
  `load_bpf(program)` installs such a program with seccomp(2)
  SECCOMP_SET_MODE_FILTER. `install(setting, caps)` runs in the workload just
  before execve, after no_new_privs: the program for (setting, caps) from
  `_PROGRAMS` when `prepare()` built it before the zygote was forked (every
  fork inherits the bytes), else built there and then.

Why libseccomp and not hand-assembled BPF: the syscall tables of every
architecture, the sub-architecture (x86/x32 on x86_64) handling and the
argument comparisons on 64-bit values are exactly what libseccomp maintains;
runc, crun and Docker all use it.

Why the program is built before the fork: building the default filter with
libseccomp (some 400 rules over three architectures, 983 BPF instructions)
took ~4 ms of every start on the build machines, loading it ~2 ms more; a
prepared program is a memcpy and one seccomp(2) call. The LaunchSpec stays a
plain "which profile" string: the program is keyed by (setting, capability
set), the capability-dependent rules included, and anything not prepared
(another capability set, a profile given to `run`) is built in the workload
exactly as before.
"""

from __future__ import annotations

import errno
import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Imported here, not in load(): load() runs after pivot_root, when the venv's
# files (and libseccomp.so.2) are no longer reachable.
import pyseccomp

from supervisor.errors import NsvisorError
from supervisor.runtime import linux

DEFAULT = "default"
UNCONFINED = "unconfined"

EPERM = 1
ENOSYS = 38

# The mask of every namespace flag of clone(2) (CLONE_NEWNS | NEWCGROUP | NEWUTS
# | NEWIPC | NEWUSER | NEWPID | NEWNET = 0x7E020000): clone is allowed only
# when (flags & mask) == 0, i.e. it creates no namespace.
CLONE_NAMESPACE_FLAGS = 0x7E020000

# personality(2) values a normal program uses: PER_LINUX, PER_LINUX32,
# UNAME26, PER_LINUX32|UNAME26, and 0xffffffff (query). Everything else
# (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) weakens the address space.
PERSONALITY_VALUES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

AF_VSOCK = 40

# --- the default profile, grouped by what the calls are for -------------------

_FILES = """
access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2
dup3 faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir fchmod fchmodat
fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futimesat getcwd getdents getdents64 getxattr lchown lchown32
lgetxattr link linkat listxattr llistxattr _llseek lremovexattr lseek lsetxattr
lstat lstat64 mkdir mkdirat mknod mknodat name_to_handle_at newfstatat open
openat openat2 pread64 preadv preadv2 pwrite64 pwritev pwritev2 read readahead
readlink readlinkat readv removexattr rename renameat renameat2 rmdir sendfile
sendfile64 setxattr splice stat stat64 statfs statfs64 statx symlink symlinkat
sync sync_file_range syncfs tee truncate truncate64 umask unlink unlinkat utime
utimensat utimensat_time64 utimes vmsplice write writev
"""
_EVENTS = """
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 fanotify_mark inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents
io_pgetevents io_pgetevents_time64 io_setup io_submit io_uring_enter
io_uring_register io_uring_setup ioctl _newselect pause pipe pipe2 poll ppoll
ppoll_time64 pselect6 pselect6_time64 select signalfd signalfd4 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
"""
_MEMORY = """
brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall
mmap mmap2 mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free
pkey_mprotect remap_file_pages
"""
_PROCESSES = """
capget capset execve execveat exit exit_group fork get_robust_list
get_thread_area getcpu getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid
gettid getuid getuid32 ioprio_get ioprio_set kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self pidfd_open pidfd_send_signal prctl
prlimit64 process_mrelease restart_syscall rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
seccomp set_robust_list set_thread_area set_tid_address setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32
setreuid setreuid32 setrlimit setsid setuid setuid32 sigaltstack sigprocmask
sigreturn tgkill times tkill ugetrlimit uname vfork wait4 waitid waitpid
"""
_TIME = """
alarm clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 futex
futex_time64 futex_waitv gettimeofday nanosleep time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
adjtimex sysinfo
"""
_IPC_AND_NET = """
accept accept4 bind connect getpeername getsockname getsockopt ipc listen
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd recv
recvfrom recvmmsg recvmmsg_time64 recvmsg semctl semget semop semtimedop
semtimedop_time64 send sendmmsg sendmsg sendto setsockopt shmat shmctl shmdt
shmget shutdown socketcall socketpair
"""

ALWAYS_ALLOWED: tuple[str, ...] = tuple(
    sorted(
        {
            n
            for group in (_FILES, _EVENTS, _MEMORY, _PROCESSES, _TIME, _IPC_AND_NET)
            for n in group.split()
        }
    )
)

# Allowed only with a capability (Docker's rule: the profile grows with the
# capabilities the container was given, so --cap-add SYS_ADMIN is not undone by
# seccomp). Order as in the JSON output.
CAP_GATED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    (
        "CAP_SYS_ADMIN",
        tuple(
            [
                "bpf",
                "clone",
                "clone3",
                "fanotify_init",
                "fsconfig",
                "fsmount",
                "fsopen",
                "fspick",
                "lookup_dcookie",
                "mount",
                "mount_setattr",
                "move_mount",
                "open_tree",
                "perf_event_open",
                "quotactl",
                "quotactl_fd",
                "setdomainname",
                "sethostname",
                "setns",
                "syslog",
                "umount",
                "umount2",
                "unshare",
            ]
        ),
    ),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    (
        "CAP_SYS_PTRACE",
        (
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ),
    ),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)

# Architecture-specific calls (Docker's "includes.arches" use Go's names).
ARCH_ONLY: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("amd64", "x32"), ("arch_prctl",)),
    (("amd64", "x32", "x86"), ("modify_ldt",)),
    (
        ("arm", "arm64"),
        (
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ),
    ),
)


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op}
    if value_two:
        arg["valueTwo"] = value_two
    return arg


def default_profile() -> dict[str, Any]:
    """nsvisor's default profile, in Docker's JSON profile format."""
    syscalls: list[dict[str, Any]] = [{"names": list(ALWAYS_ALLOWED), "action": "SCMP_ACT_ALLOW"}]
    syscalls.append(
        {
            "names": ["process_vm_readv", "process_vm_writev", "ptrace"],
            "action": "SCMP_ACT_ALLOW",
            "comment": "safe since 4.8: ptrace can no longer bypass seccomp",
            "includes": {"minKernel": "4.8"},
        }
    )
    syscalls.append(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "comment": "every address family but AF_VSOCK (host-guest sockets)",
            "args": [_arg(0, AF_VSOCK, "SCMP_CMP_NE")],
        }
    )
    for value in PERSONALITY_VALUES:
        syscalls.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [_arg(0, value, "SCMP_CMP_EQ")],
            }
        )
    for arches, names in ARCH_ONLY:
        syscalls.append(
            {"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"arches": list(arches)}}
        )
    for cap, names in CAP_GATED:
        syscalls.append(
            {"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
        )
    syscalls.append(
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "comment": "fork and threads, but no new namespace without CAP_SYS_ADMIN",
            "args": [_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        }
    )
    syscalls.append(
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "comment": "its flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone",
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        }
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {
                "architecture": "SCMP_ARCH_X86_64",
                "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": syscalls,
    }


# --- parsing and compiling ---------------------------------------------------


class ProfileError(NsvisorError, ValueError):
    """A seccomp profile that cannot be used; the message names the field."""


ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_ALLOW",
)
OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# Docker's arch names -> (libseccomp token, Go's GOARCH used by includes.arches)
ARCHES = {
    "SCMP_ARCH_X86_64": "amd64",
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_AARCH64": "arm64",
    "SCMP_ARCH_ARM": "arm",
}
_MACHINE_TO_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def action_value(action: str, errno_ret: int | None, default_errno: int) -> int:
    """libseccomp's numeric action (seccomp.h SCMP_ACT_*)."""
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return 0x00000000
    if action == "SCMP_ACT_KILL_PROCESS":
        return 0x80000000
    if action == "SCMP_ACT_TRAP":
        return 0x00030000
    if action == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((default_errno if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_TRACE":
        return 0x7FF00000 | ((default_errno if errno_ret is None else errno_ret) & 0xFFFF)
    if action == "SCMP_ACT_LOG":
        return 0x7FFC0000
    if action == "SCMP_ACT_ALLOW":
        return 0x7FFF0000
    raise ProfileError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")


@dataclass(frozen=True)
class Filter:
    """A compiled profile: what `load` installs. Rules are (syscall name,
    action, ((arg index, op, datum_a, datum_b), ...))."""

    default_action: int
    arches: tuple[str, ...]
    rules: tuple[tuple[str, int, tuple[tuple[int, int, int, int], ...]], ...]


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


def native_arch() -> str:
    machine = platform.machine()
    if machine not in _MACHINE_TO_ARCH:
        raise ProfileError(
            f"seccomp: no architecture mapping for {machine} (x86_64 and aarch64 only)"
        )
    return _MACHINE_TO_ARCH[machine]


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where} must be a list of strings")
    return list(value)


def parse_profile(text: str | bytes, source: str = "profile") -> dict[str, Any]:
    """Parse and check a Docker-format profile; returns the JSON object.
    Raises ProfileError naming the source, the field and the fix."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProfileError(
            f"{source}: not valid JSON ({e}); give a Docker seccomp profile"
        ) from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: must be a JSON object with defaultAction and syscalls")
    try:
        compile_profile(data, frozenset(), "SCMP_ARCH_X86_64", (99, 0))
    except ProfileError as e:
        raise ProfileError(f"{source}: {e}") from None
    return data


def _included(
    rule: Mapping[str, Any], caps: frozenset[str], goarch: str, kernel: tuple[int, int], i: int
) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if not isinstance(inc, dict) or not isinstance(exc, dict):
        raise ProfileError(f"syscalls[{i}].includes/excludes must be objects")
    inc_caps = {
        c.upper().removeprefix("CAP_")
        for c in _str_list(inc.get("caps"), f"syscalls[{i}].includes.caps")
    }
    exc_caps = {
        c.upper().removeprefix("CAP_")
        for c in _str_list(exc.get("caps"), f"syscalls[{i}].excludes.caps")
    }
    inc_arches = _str_list(inc.get("arches"), f"syscalls[{i}].includes.arches")
    exc_arches = _str_list(exc.get("arches"), f"syscalls[{i}].excludes.arches")
    if inc_caps and not inc_caps <= caps:
        return False
    if exc_caps & caps:
        return False
    if inc_arches and goarch not in inc_arches:
        return False
    if goarch in exc_arches:
        return False
    min_kernel = inc.get("minKernel")
    if min_kernel:
        if not isinstance(min_kernel, str):
            raise ProfileError(f'syscalls[{i}].includes.minKernel must be a string like "4.8"')
        if kernel < _kernel_version(min_kernel):
            return False
    return True


def compile_profile(
    profile: Mapping[str, Any],
    caps: Iterable[str],
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> Filter:
    """Resolve a Docker-format profile for one container: its capability set
    (names like "NET_ADMIN"), the native architecture ("SCMP_ARCH_X86_64") and
    the running kernel. Pure."""
    arch = arch or native_arch()
    kernel = kernel or _kernel_version(os.uname().release)
    cap_set = frozenset(c.upper().removeprefix("CAP_") for c in caps)
    goarch = ARCHES.get(arch, "")
    default_name = profile.get("defaultAction")
    if not isinstance(default_name, str):
        raise ProfileError('defaultAction is missing; set e.g. "defaultAction": "SCMP_ACT_ERRNO"')
    default_errno = profile.get("defaultErrnoRet", EPERM)
    if not isinstance(default_errno, int) or not 0 <= default_errno < 4096:
        raise ProfileError("defaultErrnoRet must be an errno number (e.g. 1 for EPERM)")
    default_action = action_value(default_name, None, default_errno)

    arches = [arch]
    for entry in profile.get("archMap") or []:
        if isinstance(entry, dict) and entry.get("architecture") == arch:
            arches += _str_list(entry.get("subArchitectures"), "archMap[].subArchitectures")
    for a in _str_list(profile.get("architectures"), "architectures"):
        if a not in arches:
            arches.append(a)
    arches = [a for a in arches if a in ARCHES]  # others cannot run on this host

    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError("syscalls must be a list of {names, action} objects")
    rules: list[tuple[str, int, tuple[tuple[int, int, int, int], ...]]] = []
    for i, rule in enumerate(syscalls):
        if not isinstance(rule, dict):
            raise ProfileError(f"syscalls[{i}] must be an object with names and action")
        names = _str_list(rule.get("names"), f"syscalls[{i}].names")
        if isinstance(rule.get("name"), str):
            names.append(rule["name"])
        if not names:
            raise ProfileError(f'syscalls[{i}] names no syscall; add "names": [...]')
        action_name = rule.get("action")
        if not isinstance(action_name, str):
            raise ProfileError(f'syscalls[{i}].action is missing; e.g. "SCMP_ACT_ALLOW"')
        errno_ret = rule.get("errnoRet")
        if errno_ret is not None and not isinstance(errno_ret, int):
            raise ProfileError(f"syscalls[{i}].errnoRet must be a number")
        action = action_value(action_name, errno_ret, default_errno)
        args: list[tuple[int, int, int, int]] = []
        for j, arg in enumerate(rule.get("args") or []):
            where = f"syscalls[{i}].args[{j}]"
            if not isinstance(arg, dict):
                raise ProfileError(f"{where} must be an object with index, value, op")
            index, value, value_two, op = (
                arg.get("index"),
                arg.get("value", 0),
                arg.get("valueTwo", 0),
                arg.get("op"),
            )
            if not isinstance(index, int) or not 0 <= index <= 5:
                raise ProfileError(f"{where}.index must be 0..5")
            if not isinstance(value, int) or not isinstance(value_two, int):
                raise ProfileError(f"{where}.value and valueTwo must be numbers")
            if op not in OPS:
                raise ProfileError(f"{where}.op {op!r} is not one of {', '.join(OPS)}")
            args.append((index, OPS[op], value, value_two))
        if not _included(rule, cap_set, goarch, kernel, i):
            continue
        if action == default_action:
            continue  # libseccomp refuses a rule that repeats the default (runc skips it too)
        rules += [(name, action, tuple(args)) for name in names]
    return Filter(default_action, tuple(arches), tuple(rules))


def profile_for(setting: str) -> dict[str, Any] | None:
    """The profile of a LaunchSpec's seccomp setting: "default", "unconfined"
    (None) or the JSON text of a Docker profile."""
    if setting == DEFAULT:
        return default_profile()
    if setting == UNCONFINED:
        return None
    return parse_profile(setting, "seccomp profile")


# --- building and loading (in the workload, just before execve) ----------------

_SCMP_FLTATR_CTL_NNP = 3


# seccomp(2) and the struct sock_fprog it takes.
def _libseccomp_filter(flt: Filter) -> pyseccomp.SyscallFilter:
    """The libseccomp filter of a compiled profile.

    Syscall names this libseccomp does not know, or that do not exist on this
    architecture, are skipped (as runc does): a profile written for newer
    kernels stays usable."""
    f = pyseccomp.SyscallFilter(flt.default_action)
    native = pyseccomp.system_arch()
    for name in flt.arches:
        value = getattr(pyseccomp.Arch, name.removeprefix("SCMP_ARCH_"))
        if value != native and not f.exist_arch(value):
            f.add_arch(value)
    for name, action, args in flt.rules:
        try:
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        except OSError:
            continue
        if nr == -1:  # __NR_SCMP_ERROR: unknown name
            continue
        f.add_rule(action, nr, *(pyseccomp.Arg(i, op, a, b) for i, op, a, b in args))
    return f


def build_bpf(flt: Filter) -> bytes:
    """The classic BPF program (struct sock_filter array) libseccomp generates
    for `flt`: seccomp_export_bpf, the same generator seccomp_load uses."""
    f = _libseccomp_filter(flt)
    fd = os.memfd_create("nsvisor-seccomp", os.MFD_CLOEXEC)
    try:
        f.export_bpf(_Fileno(fd))
        size = os.fstat(fd).st_size
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"libseccomp exported a {len(program)}-byte BPF program")
    return program


class _Fileno:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def load_bpf(program: bytes) -> None:
    """Install a BPF program in this thread with seccomp(SECCOMP_SET_MODE_FILTER),
    flags 0, as seccomp_load does; no_new_privs is set first, as libseccomp
    does by default (the workload has set it already: a no-op then)."""
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.seccomp_set_mode_filter(program)


def load(flt: Filter) -> None:
    """Build the filter with libseccomp and install it in this thread.
    no_new_privs must already be set (the workload sets it with its
    capabilities; libseccomp would set it too)."""
    load_bpf(build_bpf(flt))


# (setting, capability set) -> BPF program, filled by prepare() before the
# zygote is forked and inherited by every workload.
_PROGRAMS: dict[tuple[str, frozenset[str]], bytes] = {}


def _key(setting: str, caps: Iterable[str]) -> tuple[str, frozenset[str]]:
    return setting, frozenset(c.upper().removeprefix("CAP_") for c in caps)


def program_for(setting: str, caps: Iterable[str]) -> bytes | None:
    """The BPF program of a LaunchSpec's seccomp setting for a capability set:
    prepared, or built now; None for "unconfined"."""
    key = _key(setting, caps)
    cached = _PROGRAMS.get(key)
    if cached is not None:
        return cached
    profile = profile_for(setting)
    if profile is None:
        return None
    return build_bpf(compile_profile(profile, key[1]))


def prepare(settings: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
    """Build the programs of (setting, capabilities) pairs now, in the daemon
    before the zygote is forked, so that every workload inherits them.
    Returns a message per pair that could not be built (the workload then
    builds it itself and reports the error as it always did)."""
    problems: list[str] = []
    for setting, caps in settings:
        key = _key(setting, caps)
        if key in _PROGRAMS or setting == UNCONFINED:
            continue
        try:
            program = program_for(*key)
        except (OSError, ProfileError) as e:
            problems.append(str(e))
            continue
        if program is not None:
            _PROGRAMS[key] = program
    return problems


def install(setting: str, caps: Iterable[str]) -> None:
    """In the workload, the last step before execve: install the program of
    the setting for this capability set (nothing for "unconfined")."""
    program = program_for(setting, caps)
    if program is not None:
        load_bpf(program)


def describe(setting: str, source: str | None = None) -> str:
    """What `inspect` shows: "default", "unconfined" or the profile's file."""
    if setting in (DEFAULT, UNCONFINED):
        return setting
    return source or "custom"


def syscall_names(flt: Filter) -> Sequence[str]:
    return sorted({name for name, _, _ in flt.rules})


# --- --security-opt ------------------------------------------------------------


@dataclass(frozen=True)
class SecurityOpts:
    """The parsed `--security-opt` list: the seccomp setting for the
    LaunchSpec ("default", "unconfined" or the profile's JSON text) and where
    it came from ("default", "unconfined" or the profile file)."""

    seccomp: str = DEFAULT
    seccomp_source: str = DEFAULT


def parse_security_opts(opts: Sequence[str], inline_profile: str | None = None) -> SecurityOpts:
    """Docker's --security-opt values nsvisor supports:
    seccomp=unconfined, seccomp=default, seccomp=/path/profile.json (read now),
    no-new-privileges[=true] (always on). `inline_profile` is a profile's JSON
    text given directly (the API/persisted form, key seccomp_profile); it wins
    over reading the file again. ValueError names the option and the fix."""
    setting, source = DEFAULT, DEFAULT
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key == "seccomp" and sep:
            if value in (DEFAULT, UNCONFINED):
                setting, source = value, value
                continue
            if not value.startswith("/"):
                raise ValueError(
                    f"{opt!r}: give seccomp=unconfined, seccomp=default or the absolute path of a Docker JSON profile"
                )
            source = value
            if inline_profile is not None:
                setting = json.dumps(parse_profile(inline_profile, value), separators=(",", ":"))
                continue
            try:
                with open(value, "rb") as f:
                    text = f.read()
            except OSError as e:
                raise ValueError(f"{opt!r}: cannot read the profile: {e.strerror}") from None
            try:
                setting = json.dumps(parse_profile(text, value), separators=(",", ":"))
            except ProfileError as e:
                raise ValueError(str(e)) from None
        elif key == "no-new-privileges" and value in ("", "true"):
            continue  # nsvisor always sets no_new_privs
        elif key == "no-new-privileges":
            raise ValueError(
                f"{opt!r}: no_new_privs is always set by nsvisor and cannot be turned off"
            )
        elif key in ("apparmor", "label", "systempaths", "mask", "unmask"):
            raise ValueError(
                f"{opt!r}: {key} is not supported by nsvisor (seccomp and no-new-privileges are)"
            )
        else:
            raise ValueError(
                f"{opt!r}: unknown security option; use seccomp=unconfined, seccomp=/path/profile.json or no-new-privileges"
            )
    return SecurityOpts(setting, source)
