"""supervisor.units: sizes, durations and signals as Docker spells them."""

from __future__ import annotations

import signal

import pytest

from supervisor.units import format_size, parse_duration, parse_signal, parse_size, signal_name

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", 100),
        (100, 100),
        ("0", 0),
        ("10b", 10),
        ("10B", 10),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("64M", 64 * MiB),
        ("64m", 64 * MiB),
        ("64mb", 64 * MiB),
        ("64MB", 64 * MiB),
        ("64MiB", 64 * MiB),
        ("64mib", 64 * MiB),
        ("1g", 1 << 30),
        ("1GiB", 1 << 30),
        ("1.5g", 3 << 29),
        ("2t", 2 << 40),
        (" 64m ", 64 * MiB),
    ],
)
def test_parse_size_follows_docker(text: str | int, expected: int) -> None:
    """A bare number is bytes; suffixes are binary whatever the spelling."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-5M", "-1", -1])
def test_parse_size_rejects_negative_and_says_so(text: str | int) -> None:
    with pytest.raises(ValueError, match="is negative; use a size like 64M or 1g"):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "abc", "64x", "64ib", "m", "1e3", "64 mb b", True, 1.5, None])
def test_parse_size_rejects_garbage_with_the_accepted_forms(text: object) -> None:
    with pytest.raises(ValueError, match="is not a size; use a size like 64M or 1g"):
        parse_size(text)  # type: ignore[arg-type]


def test_parse_size_field_prefix() -> None:
    with pytest.raises(ValueError, match=r'^memory: "abc" is not a size'):
        parse_size("abc", "memory")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100ms", 0.1),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("10", 10.0),
        (10, 10.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "abc", "10x", "1m 30s", "s", "5ms5", True, "nan"])
def test_parse_duration_rejects_garbage(text: object) -> None:
    with pytest.raises(ValueError, match=r'use seconds \(10, 1.5\) or a duration like "100ms"'):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["-1s", -1, "-0.5"])
def test_parse_duration_rejects_negative(text: str | int) -> None:
    with pytest.raises(ValueError, match="is negative"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["SIGTERM", "TERM", "term", "sigterm", "15", 15, " TERM "])
def test_parse_signal_forms(text: str | int) -> None:
    assert parse_signal(text) == signal.SIGTERM


def test_parse_signal_realtime() -> None:
    assert parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    assert signal_name(signal.SIGRTMIN + 3) == "SIGRTMIN+3"


@pytest.mark.parametrize("text", ["SIGFOO", "FOO", "0", "65", "", -1, True])
def test_parse_signal_rejects_unknown(text: object) -> None:
    with pytest.raises(ValueError, match="SIGTERM, TERM, KILL or 15"):
        parse_signal(text)  # type: ignore[arg-type]


def test_signal_name_round_trips() -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGUSR1):
        assert parse_signal(signal_name(sig)) == sig


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "unlimited"),
        (0, "0B"),
        (512, "512B"),
        (1024, "1KiB"),
        (64 * MiB, "64MiB"),
        (1536 * MiB, "1.5GiB"),
        (3 << 40, "3TiB"),
    ],
)
def test_format_size(n: int | None, text: str) -> None:
    assert format_size(n) == text
