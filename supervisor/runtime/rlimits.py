"""Process resource limits (`--ulimit nofile=1024:2048`), Docker's names.

Pure parsing here plus one apply() that the workload calls before exec (and
before it drops CAP_SYS_RESOURCE, which raising a hard limit needs).
"""

from __future__ import annotations

import resource
from collections.abc import Iterable

UNLIMITED = -1
"""Stored for RLIM_INFINITY (JSON has no unsigned 64-bit max)."""

# Docker's names (docker/go-units ulimit.go) -> resource.RLIMIT_*.
RLIMITS: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS (Linux); Python's resource module does not export it
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}
_FORMS = 'use NAME=SOFT[:HARD], e.g. "nofile=1024:2048" (numbers or "unlimited")'

Ulimit = tuple[str, int, int]
"""(name, soft, hard); UNLIMITED for infinity."""


def _value(text: str, spec: str) -> int:
    t = text.strip().lower()
    if t in ("unlimited", "-1"):
        return UNLIMITED
    if not t.isdigit():
        raise ValueError(f'"{spec}": {text!r} is not a number; {_FORMS}')
    return int(t)


def parse_ulimit(spec: str) -> Ulimit:
    """ "nofile=1024:2048" -> ("nofile", 1024, 2048); "nproc=100" -> hard = soft."""
    name, sep, values = spec.partition("=")
    name = name.strip().lower()
    if not sep or not values:
        raise ValueError(f'"{spec}" is not NAME=SOFT[:HARD]; {_FORMS}')
    if name not in RLIMITS:
        raise ValueError(f'"{spec}": unknown ulimit {name!r}; use one of {", ".join(RLIMITS)}')
    soft_text, _, hard_text = values.partition(":")
    soft = _value(soft_text, spec)
    hard = _value(hard_text, spec) if hard_text else soft
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise ValueError(
            f'"{spec}": the soft limit is above the hard limit; swap them or raise HARD'
        )
    return name, soft, hard


def format_ulimit(u: Ulimit) -> str:
    name, soft, hard = u
    s = "unlimited" if soft == UNLIMITED else str(soft)
    h = "unlimited" if hard == UNLIMITED else str(hard)
    return f"{name}={s}:{h}"


def _kernel(v: int) -> int:
    return resource.RLIM_INFINITY if v == UNLIMITED else v


def apply(ulimits: Iterable[Ulimit]) -> None:
    """setrlimit each; raises OSError naming the limit on failure."""
    for name, soft, hard in ulimits:
        try:
            resource.setrlimit(RLIMITS[name], (_kernel(soft), _kernel(hard)))
        except (OSError, ValueError) as e:
            raise OSError(
                getattr(e, "errno", None), f"setrlimit {name}={soft}:{hard}: {e}"
            ) from None


def set_oom_score_adj(value: int, proc: str = "/proc") -> None:
    """Write /proc/self/oom_score_adj (lowering it needs CAP_SYS_RESOURCE)."""
    with open(f"{proc}/self/oom_score_adj", "w") as f:
        f.write(str(value))
