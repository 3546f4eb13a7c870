"""A minimal busybox root filesystem for tests, benchmarks and the examples.

Uses Debian's busybox-static (/bin/busybox). It must be a static binary: the
rootfs has no libc, and a dynamic busybox would fail at exec with ENOENT (the
missing ELF interpreter), which reads like a missing command.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

BUSYBOX = "/bin/busybox"

DIRS: tuple[tuple[str, int], ...] = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("var/www", 0o755),
    ("run", 0o755),
    ("mnt", 0o755),
)

FILES: tuple[tuple[str, str], ...] = (
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/group", "root:x:0:\ntty:x:5:\napp:x:1000:\nnogroup:x:65534:\n"),
    ("etc/hostname", "busybox\n"),
    ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    ("etc/resolv.conf", ""),
    ("var/www/index.html", "<html><body>hello from nsvisor</body></html>\n"),
)

_PT_INTERP = 3


def is_static_elf(path: str) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        e_phoff = struct.unpack_from("<Q", header, 32)[0]
        e_phentsize, e_phnum = struct.unpack_from("<HH", header, 54)
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
    return all(
        struct.unpack_from("<I", table, i * e_phentsize)[0] != _PT_INTERP for i in range(e_phnum)
    )


def ensure_busybox(busybox: str = BUSYBOX) -> str:
    if not os.path.exists(busybox):
        print(f"{busybox} is missing: running apt-get install -y busybox-static", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "busybox-static"], check=True)
    if not is_static_elf(busybox):
        raise RuntimeError(
            f"{busybox} is dynamically linked; install the static one: apt-get install -y busybox-static"
        )
    return busybox


def build_busybox_rootfs(dest: str, busybox: str = BUSYBOX) -> None:
    """Create (or complete) a busybox rootfs at dest. Idempotent."""
    busybox = ensure_busybox(busybox)
    os.makedirs(dest, exist_ok=True)
    for rel, mode in DIRS:
        path = os.path.join(dest, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    target = os.path.join(dest, "bin/busybox")
    if not os.path.exists(target) or os.path.getsize(target) != os.path.getsize(busybox):
        shutil.copy2(busybox, target + ".new")
        os.replace(target + ".new", target)
    applets = subprocess.run(
        [busybox, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = os.path.join(dest, applet)
        if os.path.lexists(link) or applet == "bin/busybox":
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
    for rel, content in FILES:
        path = os.path.join(dest, rel)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(content)
