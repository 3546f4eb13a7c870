"""Small pure `str -> value` parsers for sizes, durations and signals (STYLE habit 9).

Each raises ValueError with a message that says what was wrong and which forms
are accepted; callers (supervisor.config) prefix the field name, so the
messages here do not repeat it unless `field` is given.
"""

from __future__ import annotations

import json
import re
import signal

_SIZE_FORMS = "use a size like 64M or 1g (bytes, or a number with a suffix b, k, m, g, t, optionally followed by b or ib; binary, 1k = 1024)"

# Docker's units.RAMInBytes: "64M", "64m", "64mb", "1GiB", "512k", "100" (bytes),
# "1.5g". The multipliers are binary whatever the spelling ("mb" is 1024*1024),
# as in Docker, so that `-m 64mb` means the same here as there.
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?) ?(?:([kmgtp])(?:i?b)?|b)?$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _q(value: object) -> str:
    """Quote a value as the user wrote it in TOML/JSON: "64M", 5, true."""
    return json.dumps(value) if isinstance(value, str | bool) else repr(value)


def _prefix(field: str | None) -> str:
    return f"{field}: " if field else ""


def parse_size(text: str | int, field: str | None = None) -> int:
    """A size in bytes, Docker rules. Raises ValueError with the accepted forms."""
    if isinstance(text, bool):
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a size; {_SIZE_FORMS}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{_prefix(field)}{text} is negative; {_SIZE_FORMS}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a size; {_SIZE_FORMS}")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{_prefix(field)}{_q(text)} is negative; {_SIZE_FORMS}")
    match = _SIZE_RE.match(stripped)
    if not match:
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a size; {_SIZE_FORMS}")
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(float(number) * _SIZE_MULT[unit])


def format_size(n: int | None) -> str:
    """Human form for display: 512B, 64MiB, 1.5GiB; None -> 'unlimited'."""
    if n is None:
        return "unlimited"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.1f}".rstrip("0").rstrip(".") + unit
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


_DURATION_FORMS = 'use seconds (10, 1.5) or a duration like "100ms", "1.5s", "2m", "1h", "1m30s"'
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)", re.IGNORECASE)
_DURATION_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | int | float, field: str | None = None) -> float:
    """Seconds from "100ms", "1.5s", "2m", "1h", "1m30s" or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a duration; {_DURATION_FORMS}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"{_prefix(field)}{text} is negative; {_DURATION_FORMS}")
        if text != text or text == float("inf"):
            raise ValueError(f"{_prefix(field)}{text} is not a finite duration; {_DURATION_FORMS}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a duration; {_DURATION_FORMS}")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{_prefix(field)}{_q(text)} is negative; {_DURATION_FORMS}")
    if re.fullmatch(r"\d+(?:\.\d+)?", stripped):
        return float(stripped)
    pos, total = 0, 0.0
    for part in _DURATION_PART.finditer(stripped):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _DURATION_MULT[part.group(2).lower()]
        pos = part.end()
    if pos == 0 or pos != len(stripped):
        raise ValueError(f"{_prefix(field)}{_q(text)} is not a duration; {_DURATION_FORMS}")
    return total


_SIGNAL_FORMS = "use a signal name or number like SIGTERM, TERM, KILL or 15"


def parse_signal(text: str | int) -> int:
    """'SIGTERM', 'TERM', 'term', '15', 15 -> 15; also SIGRTMIN+N. ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"{_q(text)} is not a signal; {_SIGNAL_FORMS}")
    if isinstance(text, int):
        number = text
    elif isinstance(text, str):
        stripped = text.strip()
        if stripped.isdigit():
            number = int(stripped)
        else:
            name = stripped.upper()
            if not name.startswith("SIG"):
                name = "SIG" + name
            rt = re.fullmatch(r"SIGRTMIN\+(\d+)", name)
            if rt:
                number = signal.SIGRTMIN + int(rt.group(1))
            else:
                try:
                    return int(signal.Signals[name])
                except KeyError:
                    raise ValueError(f"unknown signal {_q(text)}; {_SIGNAL_FORMS}") from None
    else:
        raise ValueError(f"{_q(text)} is not a signal; {_SIGNAL_FORMS}")
    if not 1 <= number < signal.NSIG:
        raise ValueError(
            f"signal number {number} is out of range 1..{signal.NSIG - 1}; {_SIGNAL_FORMS}"
        )
    return number


def signal_name(number: int) -> str:
    """15 -> 'SIGTERM'; a number with no name (a real-time signal) -> 'SIGRTMIN+N'."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return str(number)
