"""Device rules, --device parsing and the BPF device program (pure)."""

from __future__ import annotations

import os
import struct

import pytest

from supervisor.runtime import devices
from supervisor.runtime.devices import DEFAULT_RULES, DeviceRule, bpf_program, parse_device


def test_default_rules_are_the_runtime_dev_nodes_only() -> None:
    lines = [r.v1_line() for r in DEFAULT_RULES]
    assert lines == [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ]
    assert not any(r.type in ("a", "b") for r in DEFAULT_RULES)


def test_parse_device_forms() -> None:
    m = parse_device("/dev/null")
    assert (m.host_path, m.container_path, m.permissions, m.type, m.major, m.minor) == (
        "/dev/null",
        "/dev/null",
        "rwm",
        "c",
        1,
        3,
    )
    assert parse_device("/dev/null:r").permissions == "r"
    assert parse_device("/dev/null:/dev/mynull").container_path == "/dev/mynull"
    m = parse_device("/dev/zero:/dev/z:rw")
    assert (m.container_path, m.permissions, m.minor) == ("/dev/z", "rw", 5)
    assert m.rule() == DeviceRule("c", 1, 5, "rwm")  # mknod of this node is implied


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/dev/null:/dev/x:rx", "combination of r, w, m"),
        ("/dev/nonexistent-device", "give an existing device node"),
        ("/etc/hostname:/dev/h", "not a character or block device"),
        ("/dev/null:/etc/x", "below /dev/"),
        ("dev/null", "absolute path"),
        ("/dev/null:a:b:c", r"HOST\[:CONTAINER\]\[:rwm\]"),
    ],
)
def test_parse_device_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_device(text)


def _decode(prog: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(prog), 8):
        code, regs, off, imm = struct.unpack("<BBhi", prog[i : i + 8])
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


def _run(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """A tiny interpreter for the instructions bpf_program emits."""
    regs = [0] * 11
    ctx = (access << 16 | dev_type, major, minor)
    insns = _decode(prog)
    pc = 0
    while True:
        code, dst, src, off, imm = insns[pc]
        pc += 1
        if code == 0x61:
            regs[dst] = ctx[off // 4]
        elif code == 0x54:
            regs[dst] &= imm & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] >>= imm
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0x55:
            if regs[dst] != imm:
                pc += off
        elif code == 0x5D:
            if regs[dst] != regs[src]:
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


CHAR, BLOCK = devices.BPF_DEVCG_DEV_CHAR, devices.BPF_DEVCG_DEV_BLOCK
M, R, W = devices.BPF_DEVCG_ACC_MKNOD, devices.BPF_DEVCG_ACC_READ, devices.BPF_DEVCG_ACC_WRITE


def test_program_allows_the_default_devices_and_nothing_else() -> None:
    prog = bpf_program(DEFAULT_RULES)
    assert _run(prog, CHAR, R | W, 1, 3) == 1
    assert _run(prog, CHAR, M, 136, 42) == 1
    assert _run(prog, CHAR, R, 1, 11) == 0  # kmsg
    assert _run(prog, BLOCK, R, 1, 3) == 0  # right numbers, wrong type
    assert _run(prog, BLOCK, M, 8, 0) == 0


def test_program_checks_access_bits() -> None:
    prog = bpf_program((DeviceRule("b", 7, 0, "r"), DeviceRule("a", -1, -1, "m")))
    assert _run(prog, BLOCK, R, 7, 0) == 1
    assert _run(prog, BLOCK, R | W, 7, 0) == 0
    assert _run(prog, BLOCK, M, 9, 9) == 1  # the "a *:* m" rule
    assert _run(prog, CHAR, R, 9, 9) == 0
    assert _run(bpf_program(()), CHAR, R, 1, 3) == 0


def test_the_host_null_device_parses() -> None:
    assert os.path.exists("/dev/null")
