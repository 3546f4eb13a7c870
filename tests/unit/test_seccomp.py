"""The default seccomp profile, Docker's profile format and the compile step
(pure: no filter is loaded here; tests/kernel/test_seccomp.py loads them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.runtime import seccomp
from supervisor.runtime.caps import DEFAULT_CAPS

ALLOW = 0x7FFF0000
EPERM_ACTION = 0x00050000 | 1
X86_64 = "SCMP_ARCH_X86_64"


def _rules(
    caps: frozenset[str] = DEFAULT_CAPS, arch: str = X86_64
) -> dict[str, list[tuple[int, tuple[tuple[int, int, int, int], ...]]]]:
    flt = seccomp.compile_profile(seccomp.default_profile(), caps, arch, (6, 18))
    out: dict[str, list[tuple[int, tuple[tuple[int, int, int, int], ...]]]] = {}
    for name, action, args in flt.rules:
        out.setdefault(name, []).append((action, args))
    return out


def test_default_action_is_eperm_and_subarches_follow_the_native_one() -> None:
    flt = seccomp.compile_profile(seccomp.default_profile(), DEFAULT_CAPS, X86_64, (6, 18))
    assert flt.default_action == EPERM_ACTION
    assert flt.arches == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    arm = seccomp.compile_profile(
        seccomp.default_profile(), DEFAULT_CAPS, "SCMP_ARCH_AARCH64", (6, 18)
    )
    assert arm.arches == ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")


def test_ordinary_calls_are_allowed_without_conditions() -> None:
    rules = _rules()
    for name in (
        "read",
        "write",
        "openat",
        "execve",
        "mmap",
        "futex",
        "socketpair",
        "wait4",
        "mknodat",
    ):
        assert rules[name] == [(ALLOW, ())], name


@pytest.mark.parametrize(
    "name",
    [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "chroot_not_a_call",
        "init_module",
        "finit_module",
        "ptrace_never",
        "bpf",
        "perf_event_open",
        "add_key",
        "keyctl",
        "kexec_load",
        "open_by_handle_at",
        "clock_settime",
        "settimeofday",
        "reboot",
        "swapon",
        "acct",
        "syslog",
        "userfaultfd",
        "iopl",
    ],
)
def test_dangerous_calls_are_not_allowed_by_default(name: str) -> None:
    assert name not in _rules()


def test_clone_only_without_namespace_flags_and_clone3_gets_enosys() -> None:
    rules = _rules()
    assert rules["clone"] == [(ALLOW, ((0, 7, seccomp.CLONE_NAMESPACE_FLAGS, 0),))]
    assert rules["clone3"] == [(0x00050000 | 38, ())]
    assert seccomp.CLONE_NAMESPACE_FLAGS == 0x7E020000


def test_personality_and_socket_argument_filters() -> None:
    rules = _rules()
    assert sorted(args[0][2] for _, args in rules["personality"]) == sorted(
        seccomp.PERSONALITY_VALUES
    )
    assert rules["socket"] == [(ALLOW, ((0, 1, 40, 0),))]  # != AF_VSOCK


def test_capabilities_widen_the_profile_as_docker_does() -> None:
    with_admin = _rules(DEFAULT_CAPS | {"SYS_ADMIN"})
    assert with_admin["mount"] == [(ALLOW, ())]
    assert with_admin["clone"] == [(ALLOW, ())]  # unconditional with SYS_ADMIN
    assert "clone3" in with_admin and with_admin["clone3"] == [(ALLOW, ())]
    assert "chroot" in _rules()  # SYS_CHROOT is a default capability
    assert "chroot" not in _rules(frozenset(DEFAULT_CAPS - {"SYS_CHROOT"}))
    assert "clock_settime" in _rules(DEFAULT_CAPS | {"SYS_TIME"})
    assert "ptrace" in _rules()  # minKernel 4.8, kernel 6.18
    assert "ptrace" not in _rules_on_kernel((4, 4))


def _rules_on_kernel(kernel: tuple[int, int]) -> set[str]:
    flt = seccomp.compile_profile(seccomp.default_profile(), DEFAULT_CAPS, X86_64, kernel)
    return {name for name, _, _ in flt.rules}


def test_arch_only_calls() -> None:
    assert "arch_prctl" in _rules()
    assert "arch_prctl" not in _rules(arch="SCMP_ARCH_AARCH64")
    assert "set_tls" in _rules(arch="SCMP_ARCH_AARCH64")


def test_the_shipped_json_is_the_default_profile() -> None:
    """supervisor/runtime/profiles/default.json is what default_profile()
    returns (regenerate with: python -c 'import json; from supervisor.runtime
    .seccomp import default_profile; print(json.dumps(default_profile(), indent=2))')."""
    path = Path(seccomp.__file__).parent / "profiles" / "default.json"
    assert json.loads(path.read_text()) == seccomp.default_profile()


def test_a_docker_profile_round_trips_through_parse() -> None:
    text = json.dumps(seccomp.default_profile())
    assert seccomp.parse_profile(text) == seccomp.default_profile()
    assert seccomp.profile_for("unconfined") is None
    assert seccomp.profile_for("default") == seccomp.default_profile()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"syscalls": []}', "defaultAction is missing"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown action"),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
            "names no syscall",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}',
            "action is missing",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
            ' "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
            "index must be 0..5",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
            ' "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}',
            "op 'EQ' is not one of",
        ),
    ],
)
def test_bad_profiles_are_refused_with_the_field(text: str, message: str) -> None:
    with pytest.raises(seccomp.ProfileError, match=message):
        seccomp.parse_profile(text, "my.json")


def test_rules_equal_to_the_default_action_are_skipped() -> None:
    """libseccomp refuses them (EACCES); runc skips them too."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    flt = seccomp.compile_profile(profile, (), X86_64, (6, 1))
    assert flt.rules == (("mount", EPERM_ACTION, ()),)
