"""Security options through the real daemon and CLI: each variant changes
exactly what it says, the default is confined, inspect shows what is in
force, and the host side keeps its secrets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.runtime import seccomp
from supervisor.runtime.caps import CAPABILITIES, DEFAULT_CAPS
from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e]

DEFAULT_MASK = sum(1 << CAPABILITIES[c] for c in DEFAULT_CAPS)


def _caps(text: str) -> dict[str, int]:
    return {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in text.splitlines()
        if line.startswith("Cap")
    }


def test_default_container_is_confined_and_inspect_says_so(running_daemon: Daemon) -> None:
    """seccomp filter mode, no_new_privs, the default capabilities; inspect's
    "security" shows the profile, the capabilities and the devices."""
    d = running_daemon
    r = d.cli(
        "run", "--name", "conf", d.rootfs, "--",
        "sh", "-c", "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; unshare -U true; echo userns=$?",
    )  # fmt: skip
    assert "Seccomp:\t2" in r.stdout and "NoNewPrivs:\t1" in r.stdout, r.stdout
    assert "userns=1" in r.stdout
    assert _caps(r.stdout)["CapEff"] == DEFAULT_MASK
    info = d.inspect("conf")
    assert info["security"]["seccomp"] == "default"
    assert info["security"]["capabilities"] == sorted(DEFAULT_CAPS)
    assert info["security"]["devices"] == []


def test_seccomp_unconfined_and_a_profile_file(running_daemon: Daemon, tmp_path: Path) -> None:
    d = running_daemon
    r = d.cli(
        "run", "--rm", "--security-opt", "seccomp=unconfined", d.rootfs, "--",
        "grep", "^Seccomp:", "/proc/self/status",
    )  # fmt: skip
    assert r.stdout.split() == ["Seccomp:", "0"]
    profile = seccomp.default_profile()
    profile["syscalls"][0]["names"].remove("mkdir")
    profile["syscalls"][0]["names"].remove("mkdirat")
    path = tmp_path / "no-mkdir.json"
    path.write_text(json.dumps(profile))
    r = d.cli(
        "run", "--name", "prof", "--security-opt", f"seccomp={path}", d.rootfs, "--",
        "sh", "-c", "mkdir /tmp/x; echo rc=$?",
    )  # fmt: skip
    assert r.stdout == "rc=1\n"
    info = d.inspect("prof")
    assert info["security"]["seccomp"] == str(path)
    assert json.loads(info["config"]["seccomp_profile"]) == profile  # the profile in force


def test_bad_security_options_are_refused_with_the_fix(
    running_daemon: Daemon, tmp_path: Path
) -> None:
    d = running_daemon
    bad = tmp_path / "bad.json"
    bad.write_text('{"syscalls": []}')
    for opt, message in (
        (f"seccomp={bad}", "defaultAction is missing"),
        ("apparmor=unconfined", "not supported"),
        ("seccomp=relative-does-not-exist.json", "cannot read the profile"),
    ):
        r = d.cli("run", "--rm", "--security-opt", opt, d.rootfs, "--", "true", check=False)
        assert r.returncode != 0 and message in r.stderr, (opt, r.stderr)
    r = d.cli("run", "--rm", "--userns", "sometimes", d.rootfs, "--", "true", check=False)
    assert r.returncode != 0 and "--userns" in r.stderr and "auto" in r.stderr


def test_cap_add_and_cap_drop(running_daemon: Daemon) -> None:
    """Bounding, effective and permitted follow; inheritable and ambient stay
    empty; a non-root user has nothing effective; ALL and SYS_ADMIN widen the
    seccomp profile too (mount then works)."""
    d = running_daemon
    r = d.cli(
        "run", "--rm", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", d.rootfs, "--",
        "grep", "^Cap", "/proc/self/status",
    )  # fmt: skip
    caps = _caps(r.stdout)
    nbs = 1 << CAPABILITIES["NET_BIND_SERVICE"]
    assert (caps["CapBnd"], caps["CapEff"], caps["CapPrm"], caps["CapInh"], caps["CapAmb"]) == (
        nbs, nbs, nbs, 0, 0,
    )  # fmt: skip
    r = d.cli(
        "run", "--rm", "--cap-drop", "CHOWN", "-u", "1000:1000", d.rootfs, "--",
        "grep", "^Cap", "/proc/self/status",
    )  # fmt: skip
    caps = _caps(r.stdout)
    assert caps["CapBnd"] == DEFAULT_MASK & ~(1 << CAPABILITIES["CHOWN"])
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == caps["CapAmb"] == 0
    r = d.cli(
        "run", "--rm", "--cap-add", "SYS_ADMIN", d.rootfs, "--",
        "sh", "-c", "mount -t tmpfs x /mnt && echo mounted",
    )  # fmt: skip
    assert r.stdout == "mounted\n"


def test_user_with_supplementary_groups_from_the_rootfs(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli("run", "--rm", "-u", "app", d.rootfs, "--", "id")
    assert r.stdout.startswith("uid=1000(app) gid=1000(app)"), r.stdout


def test_device_grant_and_default_denial(running_daemon: Daemon, tmp_path: Path) -> None:
    """Without --device a block device node cannot be made; with --device a
    loop device of the test's own is usable (read-only as asked)."""
    d = running_daemon
    backing = tmp_path / "img"
    backing.write_bytes(b"e2e-loop-bytes" + b"\0" * (1 << 20))
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(backing)], capture_output=True, text=True
    )
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    try:
        rdev = os.stat(dev).st_rdev
        majmin = f"{os.major(rdev)} {os.minor(rdev)}"
        r = d.cli(
            "run", "--rm", d.rootfs, "--", "sh", "-c", f"mknod /tmp/b b {majmin}; echo rc=$?",
        )  # fmt: skip
        assert r.stdout == "rc=1\n"
        r = d.cli(
            "run", "--name", "dev", "--device", f"{dev}:/dev/xvda:r", d.rootfs, "--",
            "sh", "-c", "head -c 14 /dev/xvda; echo; echo x > /dev/xvda; echo w=$?",
        )  # fmt: skip
        assert r.stdout.splitlines()[0] == "e2e-loop-bytes", r
        assert "w=0" not in r.stdout
        assert d.inspect("dev")["security"]["devices"] == [f"{dev}:/dev/xvda:r"]
    finally:
        d.cli("rm", "-f", "dev", check=False)
        subprocess.run(["losetup", "--detach", dev], check=False)


def test_read_only_rootfs_with_writable_tmpfs(running_daemon: Daemon) -> None:
    d = running_daemon
    r = d.cli(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run", d.rootfs, "--",
        "sh", "-c", "touch /x 2>/dev/null || echo ro; touch /tmp/a /run/b && echo rw",
    )  # fmt: skip
    assert r.stdout == "ro\nrw\n"


def test_host_side_socket_state_files_and_no_secrets(running_daemon: Daemon) -> None:
    """The control socket is 0600 root; state files are 0600; an environment
    value never shows up in the daemon's log or the metrics."""
    d = running_daemon
    st = os.stat(d.socket)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    secret = "s3cr3t-value-" + os.urandom(4).hex()
    d.cli("run", "--name", "sec", "-e", f"API_TOKEN={secret}", d.rootfs, "--", "true")
    for root, _, files in os.walk(d.state_dir):
        for f in files:
            path = os.path.join(root, f)
            if os.path.isfile(path) and f.endswith(".json"):
                assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
    metrics = subprocess.run(
        ["wget", "-q", "-O-", f"http://{d.metrics_addr}/metrics"], capture_output=True, text=True
    ).stdout or _fetch(d.metrics_addr)
    assert secret not in metrics
    assert secret not in d.log()


def _fetch(addr: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def test_api_refuses_other_uids(running_daemon: Daemon) -> None:
    """A non-root process cannot use the control socket and is told why."""
    d = running_daemon
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
         *_cli(d), "ps"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "root" in r.stderr.lower() and "permission denied" in r.stderr.lower(), r.stderr
    # Past the file mode (made world-writable by hand, reached through a hard
    # link in a directory nobody may traverse to), SO_PEERCRED still refuses.
    import tempfile

    public = tempfile.mkdtemp(prefix="nsvisor-peercred-", dir="/tmp")  # same fs as d.socket
    link = os.path.join(public, "sock")
    os.chmod(public, 0o755)
    os.link(d.socket, link)
    os.chmod(link, 0o666)
    try:
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             sys.executable, "-m", "supervisor", "--socket", link, "ps"],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
    finally:
        os.chmod(link, 0o600)
        os.unlink(link)
        os.rmdir(public)
    assert r.returncode != 0
    assert "root-only; uid 65534 was refused" in r.stderr, r.stderr
    assert "api.refused" in d.log()
    d.cli("ps")  # root still gets in


def _cli(d: Daemon) -> list[str]:
    import sys

    return [sys.executable, "-m", "supervisor", "--socket", d.socket]
