"""Applying a device policy (supervisor.runtime.devices) to a cgroup.

- v1: the devices controller. Deny everything ("a" to devices.deny), then
  allow each rule (devices.allow). Written before any process joins.
- v2 (and the empty cgroup2 hierarchy of hybrid hosts): a
  BPF_PROG_TYPE_CGROUP_DEVICE program loaded with bpf(BPF_PROG_LOAD) and
  attached to the cgroup directory with bpf(BPF_PROG_ATTACH), as runc does.
  Attached without flags: only one program per cgroup, a second attach
  replaces it (so re-applying on daemon restart is idempotent), and the
  container cannot attach an override below it (it has no CAP_BPF/SYS_ADMIN
  anyway). The attachment holds the program; our fd is closed at once.

On a hybrid host both apply when the cgroup2 hierarchy is mounted: the
kernel checks the BPF program of the task's cgroup2 cgroup and then the v1
controller (devcgroup_check_permission), so each is a complete policy and
the other is defence in depth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Sequence

from supervisor.errors import KernelError
from supervisor.runtime.devices import DeviceRule, bpf_program

from . import _fs

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
_ATTR_SIZE = 128  # larger than the fields used; the kernel wants the rest zero

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def apply_v1(directory: str, rules: Sequence[DeviceRule]) -> None:
    """Write the policy into a v1 devices cgroup directory (no tasks yet)."""
    for file, line in [("devices.deny", "a"), *(("devices.allow", r.v1_line()) for r in rules)]:
        path = os.path.join(directory, file)
        try:
            _fs.write_text(path, line)
        except OSError as e:
            raise _fs.io_error(
                path, e, f"write {line!r} to", "run as root with the devices controller mounted"
            ) from e


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf: no syscall number for {platform.machine()}")
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def load_program(rules: Sequence[DeviceRule]) -> int:
    """bpf(BPF_PROG_LOAD) of the device program; returns its fd."""
    insns = bpf_program(rules)
    insns_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"Apache-2.0")  # no GPL-only helpers used
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # union bpf_attr, BPF_PROG_LOAD: prog_type u32, insn_cnt u32, insns u64,
    # license u64, log_level u32, log_size u32, log_buf u64
    ctypes.memmove(
        attr,
        (
            ctypes.c_uint32(BPF_PROG_TYPE_CGROUP_DEVICE).value.to_bytes(4, "little")
            + (len(insns) // 8).to_bytes(4, "little")
            + ctypes.addressof(insns_buf).to_bytes(8, "little")
            + ctypes.addressof(license_buf).to_bytes(8, "little")
            + (1).to_bytes(4, "little")
            + len(log).to_bytes(4, "little")
            + ctypes.addressof(log).to_bytes(8, "little")
        ),
        40,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        verifier = log.value.decode(errors="replace").strip()
        raise OSError(
            e.errno, f"{e.strerror}; verifier: {verifier[-500:]}" if verifier else e.strerror
        ) from None


def attach_program(cgroup_dir: str, prog_fd: int) -> None:
    """bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE) to a cgroup2 directory."""
    target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        # target_fd u32, attach_bpf_fd u32, attach_type u32, attach_flags u32
        ctypes.memmove(
            attr,
            target.to_bytes(4, "little")
            + prog_fd.to_bytes(4, "little")
            + BPF_CGROUP_DEVICE.to_bytes(4, "little")
            + (0).to_bytes(4, "little"),
            16,
        )
        _bpf(BPF_PROG_ATTACH, attr)
    finally:
        os.close(target)


def apply_v2(cgroup_dir: str, rules: Sequence[DeviceRule]) -> None:
    """Load and attach the device program to a cgroup2 directory."""
    try:
        prog = load_program(rules)
    except OSError as e:
        raise KernelError(
            f"loading the device cgroup BPF program for {cgroup_dir}: {e.strerror}; "
            "the kernel needs CONFIG_CGROUP_BPF and the daemon CAP_SYS_ADMIN/CAP_BPF",
            errno=e.errno,
            path=cgroup_dir,
        ) from None
    try:
        attach_program(cgroup_dir, prog)
    except OSError as e:
        raise KernelError(
            f"attaching the device program to {cgroup_dir}: {e.strerror}; run the daemon as root",
            errno=e.errno,
            path=cgroup_dir,
        ) from None
    finally:
        os.close(prog)
