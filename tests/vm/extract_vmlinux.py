#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a bzImage (/boot/vmlinuz-*).

qemu boots the ELF directly through its PVH entry point (Debian kernels have
CONFIG_PVH=y), which skips the in-guest decompression: ~3.5 s faster under TCG.

usage: extract_vmlinux.py BZIMAGE OUT
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ELF_MAGIC = b"\x7fELF"


def _xz(buf: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(buf)


def _gzip(buf: bytes) -> bytes:
    # read1: stop at the end of the member, ignore the trailing bzImage bytes
    return gzip.GzipFile(fileobj=io.BytesIO(buf)).read1(1 << 30)


def _zstd(buf: bytes) -> bytes:
    if shutil.which("zstd") is None:
        return b""
    return subprocess.run(["zstd", "-dcq"], input=buf, capture_output=True, check=False).stdout


def _lz4(buf: bytes) -> bytes:
    if shutil.which("lz4") is None:
        return b""
    return subprocess.run(["lz4", "-dc"], input=buf, capture_output=True, check=False).stdout


DECODERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\xfd7zXZ\x00", _xz),
    (b"\x28\xb5\x2f\xfd", _zstd),
    (b"\x1f\x8b\x08", _gzip),
    (b"\x02\x21\x4c\x18", _lz4),
)


def extract(data: bytes) -> bytes | None:
    """Return the first compressed payload of *data* that decompresses to an ELF."""
    if data[:4] == ELF_MAGIC:
        return data
    for magic, decode in DECODERS:
        off = data.find(magic)
        while off >= 0:
            try:
                out = decode(data[off:])
            except (OSError, EOFError, lzma.LZMAError, ValueError):
                out = b""
            if out[:4] == ELF_MAGIC:
                return out
            off = data.find(magic, off + 1)
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[1]), Path(argv[2])
    out = extract(src.read_bytes())
    if out is None:
        print(f"extract_vmlinux: no compressed ELF payload found in {src}", file=sys.stderr)
        return 1
    tmp = dst.with_name(f"{dst.name}.tmp.{os.getpid()}")
    tmp.write_bytes(out)
    tmp.replace(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
