"""Device access: which device nodes a container may create and open.

Pure: the rule model, the default allow-list, `--device` parsing, and the
two renderings the cgroup backends apply (supervisor.cgroups.devices):

- cgroup v1 (the devices controller): "a" written to devices.deny, then one
  "TYPE MAJOR:MINOR ACCESS" line per rule to devices.allow;
- cgroup v2 (no devices controller): a BPF_PROG_TYPE_CGROUP_DEVICE program,
  assembled here instruction by instruction as runc's devicefilter does, that
  returns 1 (allow) for the rules and 0 (deny) for everything else.

The default is runc's minus blanket mknod: only the nodes the runtime creates
in /dev (null, zero, full, random, urandom, tty, console, ptmx, the devpts
ptys) may be created, read or written. runc additionally allows `mknod` of
every char and block device ("c *:* m", "b *:* m") and relies on open() being
denied; nsvisor refuses the mknod itself, so a container cannot even leave a
host device node on a volume for a less confined process to open.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

WILDCARD = -1


@dataclass(frozen=True)
class DeviceRule:
    """One allow rule: type "c", "b" or "a" (all), major/minor (-1 = any),
    access a subset of "rwm"."""

    type: Literal["a", "b", "c"]
    major: int
    minor: int
    access: str

    def v1_line(self) -> str:
        def num(n: int) -> str:
            return "*" if n == WILDCARD else str(n)

        return f"{self.type} {num(self.major)}:{num(self.minor)} {self.access}"


DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", 1, 3, "rwm"),  # null
    DeviceRule("c", 1, 5, "rwm"),  # zero
    DeviceRule("c", 1, 7, "rwm"),  # full
    DeviceRule("c", 1, 8, "rwm"),  # random
    DeviceRule("c", 1, 9, "rwm"),  # urandom
    DeviceRule("c", 5, 0, "rwm"),  # tty
    DeviceRule("c", 5, 1, "rwm"),  # console
    DeviceRule("c", 5, 2, "rwm"),  # ptmx
    DeviceRule("c", 136, WILDCARD, "rwm"),  # /dev/pts/N
)


@dataclass(frozen=True)
class DeviceMapping:
    """`--device HOST[:CONTAINER][:PERMISSIONS]`, resolved against the host."""

    host_path: str
    container_path: str
    permissions: str  # subset of "rwm"
    type: Literal["b", "c"]
    major: int
    minor: int

    def to_raw(self) -> str:
        return f"{self.host_path}:{self.container_path}:{self.permissions}"

    def rule(self) -> DeviceRule:
        """The cgroup rule: the permissions asked for, plus mknod ("m") of
        this one device, because the workload creates the node in /dev after
        joining the cgroup. A second node of the same device grants nothing
        more: open() is still checked against "r"/"w"."""
        access = self.permissions if "m" in self.permissions else self.permissions + "m"
        return DeviceRule(self.type, self.major, self.minor, access)


def _is_perms(text: str) -> bool:
    return bool(text) and set(text) <= set("rwm") and len(set(text)) == len(text)


def parse_device(text: str) -> DeviceMapping:
    """Docker's --device syntax. Stats the host path (it must be a char or
    block device). ValueError says what is wrong and the accepted form."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(
            f"{text!r} is not HOST[:CONTAINER][:rwm]; e.g. /dev/fuse or /dev/sdb:/dev/xvdb:r"
        )
    host = parts[0]
    container = host
    perms = "rwm"
    if len(parts) == 2:
        if _is_perms(parts[1]):
            perms = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, perms = parts[1], parts[2]
        if not _is_perms(perms):
            raise ValueError(f"{text!r}: permissions {perms!r} must be a combination of r, w, m")
    for label, path in (("host path", host), ("container path", container)):
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{text!r}: the {label} {path!r} must be an absolute path without ..")
    if not os.path.normpath(container).startswith("/dev/"):
        raise ValueError(f"{text!r}: the container path must be below /dev/, e.g. /dev/xvdb")
    try:
        st = os.stat(host)
    except OSError as e:
        raise ValueError(f"{text!r}: {host}: {e.strerror}; give an existing device node") from None
    if stat.S_ISCHR(st.st_mode):
        kind: Literal["b", "c"] = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ValueError(f"{text!r}: {host} is not a character or block device")
    return DeviceMapping(
        os.path.normpath(host),
        os.path.normpath(container),
        perms,
        kind,
        os.major(st.st_rdev),
        os.minor(st.st_rdev),
    )


def rules_for(mappings: Sequence[DeviceMapping] = ()) -> tuple[DeviceRule, ...]:
    return DEFAULT_RULES + tuple(m.rule() for m in mappings)


# --- cgroup v2: the BPF device program -------------------------------------
#
# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
# access_type = (access << 16) | type, type BPF_DEVCG_DEV_BLOCK (1) or
# BPF_DEVCG_DEV_CHAR (2), access a mask of MKNOD (1), READ (2), WRITE (4).

BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4

# opcodes (linux/bpf_common.h, linux/bpf.h)
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_ALU32_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_ALU32_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_MOV64_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
_MOV64_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95  # BPF_JMP | BPF_EXIT


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn: u8 code; u8 dst:4, src:4; s16 off; s32 imm."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _access_mask(access: str) -> int:
    return (
        (BPF_DEVCG_ACC_MKNOD if "m" in access else 0)
        | (BPF_DEVCG_ACC_READ if "r" in access else 0)
        | (BPF_DEVCG_ACC_WRITE if "w" in access else 0)
    )


def bpf_program(rules: Sequence[DeviceRule]) -> bytes:
    """The program's instructions: load type, access, major, minor into
    r2..r5, then one block per rule that jumps to the next block on a mismatch
    and returns 1 when it matches; 0 (deny) at the end."""
    code = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0),
        _insn(_ALU32_AND_K, dst=2, imm=0xFFFF),  # r2 = type
        _insn(_LDX_MEM_W, dst=3, src=1, off=0),
        _insn(_ALU32_RSH_K, dst=3, imm=16),  # r3 = requested access
        _insn(_LDX_MEM_W, dst=4, src=1, off=4),  # r4 = major
        _insn(_LDX_MEM_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for rule in rules:
        checks: list[tuple[int, int, int, int]] = []  # (code, dst, src, imm) of each "skip if"
        if rule.type != "a":
            kind = BPF_DEVCG_DEV_BLOCK if rule.type == "b" else BPF_DEVCG_DEV_CHAR
            checks.append((_JNE_K, 2, 0, kind))
        mask = _access_mask(rule.access)
        pre: list[bytes] = []
        if mask != 0b111:
            # requested & allowed must equal requested: r1 = r3 & mask; r1 != r3 -> skip
            pre = [_insn(_MOV64_X, dst=1, src=3), _insn(_ALU32_AND_K, dst=1, imm=mask)]
            checks.append((_JNE_X, 1, 3, 0))
        if rule.major != WILDCARD:
            checks.append((_JNE_K, 4, 0, rule.major))
        if rule.minor != WILDCARD:
            checks.append((_JNE_K, 5, 0, rule.minor))
        # Block layout: [type check] [pre + access check] [major] [minor] r0=1 exit
        block: list[bytes | tuple[int, int, int, int]] = []
        for check in checks:
            if check[0] == _JNE_X:
                block += pre
            block.append(check)
        block += [_insn(_MOV64_K, dst=0, imm=1), _insn(_EXIT)]
        for i, item in enumerate(block):
            if isinstance(item, tuple):
                op, dst, src, imm = item
                code.append(_insn(op, dst=dst, src=src, off=len(block) - i - 1, imm=imm))
            else:
                code.append(item)
    code += [_insn(_MOV64_K, dst=0, imm=0), _insn(_EXIT)]
    return b"".join(code)
