"""Shell completion: `nsvisor completion bash` completes commands, each
command's options and the daemon's container names (stopped ones too),
asking the daemon given with --socket on the line being completed."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import Daemon

pytestmark = [pytest.mark.e2e]


def complete(script: str, words: list[str], nsvisor: str) -> list[str]:
    """Run bash's completion function on `words` (the last is the one being
    completed) and return COMPREPLY."""
    line = " ".join(f"'{w}'" for w in words)
    prog = f"""
nsvisor() {{ {nsvisor} "$@"; }}
{script}
COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}
_nsvisor
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_options_and_container_names(running_daemon: Daemon) -> None:
    d = running_daemon
    d.cli("run", "-d", "--name", "web-1", d.rootfs, "--", "sleep", "1000")
    d.cli("run", "-d", "--name", "web-2", d.rootfs, "--", "true")
    d.wait_for("web-2", lambda i: i["state"] == "exited")
    script = d.cli("completion", "bash").stdout
    cli = f"{sys.executable} -m supervisor"
    assert {"attach", "stats", "top", "cp"} <= set(complete(script, ["nsvisor", ""], cli))
    assert complete(script, ["nsvisor", "at"], cli) == ["attach"]
    assert "--detach-keys" in complete(script, ["nsvisor", "run", "--de"], cli)
    names = complete(script, ["nsvisor", "--socket", d.socket, "stop", "web"], cli)
    assert sorted(names) == ["web-1", "web-2"]
    cp = complete(script, ["nsvisor", "--socket", d.socket, "cp", "web-1"], cli)
    assert "web-1:" in cp
    # No daemon: no names, no error, no hang.
    assert complete(script, ["nsvisor", "--socket", "/nonexistent", "stop", ""], cli) == []


def test_zsh_script_is_generated(running_daemon: Daemon) -> None:
    d = running_daemon
    script = d.cli("completion", "zsh").stdout
    assert script.startswith("#compdef nsvisor") and "compdef _nsvisor nsvisor" in script
    if shutil.which("zsh"):
        r = subprocess.run(["zsh", "-n", "-c", script], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
