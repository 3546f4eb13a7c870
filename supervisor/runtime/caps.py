"""Linux capability names and numbers, and Docker's default set.

Numbers from linux/include/uapi/linux/capability.h. The default set is
Docker's (moby/oci/caps/defaults.go): 14 capabilities.
"""

from __future__ import annotations

CAPABILITIES: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

DEFAULT_CAPS: frozenset[str] = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)


def normalize_cap(name: str) -> str:
    """'cap_net_admin', 'NET_ADMIN', 'CAP_NET_ADMIN' -> 'NET_ADMIN'; 'ALL' stays.
    Raises ValueError naming the valid forms for an unknown capability."""
    upper = name.strip().upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    if upper == "ALL" or upper in CAPABILITIES:
        return upper
    raise ValueError(
        f"unknown capability {name!r}; use a name like NET_ADMIN or CAP_NET_ADMIN, or ALL"
    )


def effective_caps(
    cap_add: list[str] | tuple[str, ...], cap_drop: list[str] | tuple[str, ...]
) -> frozenset[str]:
    """Docker's rule: start from the default set (or nothing if ALL is dropped),
    add cap_add (ALL = every capability), then drop cap_drop."""
    adds = {normalize_cap(c) for c in cap_add}
    drops = {normalize_cap(c) for c in cap_drop}
    caps: set[str] = set() if "ALL" in drops else set(DEFAULT_CAPS)
    caps |= set(CAPABILITIES) if "ALL" in adds else adds - {"ALL"}
    caps -= drops - {"ALL"}
    return frozenset(caps)
