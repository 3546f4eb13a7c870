"""runc and crun over the benchmark's busybox rootfs.

Each runtime gets a bundle whose config.json points at the same rootfs, runs
/bin/true with the namespaces nsvisor gives a container by default (pid, net,
ipc, uts, cgroup, mount), and has an absolute cgroupsPath under the
benchmark's own parent, so neither nests under the caller's cgroup.

crun 1.8 refuses this machine's hybrid layout (v1 controllers plus an empty
cgroup2 at /sys/fs/cgroup/unified). It runs from a helper process
(bench._inns) in a private mount namespace where a tmpfs hides that empty
hierarchy; the host's mounts are never changed. The helper times each crun run
itself with the same posix_spawn timer as every other contender.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proc import BenchError, which

NAMESPACES = ("pid", "network", "ipc", "uts", "cgroup", "mount")


def write_bundle(bundle: Path, rootfs: str, cgroups_path: str) -> Path:
    """A minimal OCI bundle: the runtime's defaults (`runc spec`) with our
    rootfs, command, namespaces and cgroup, no terminal, a writable root (as
    an nsvisor container by default)."""
    runc = which("runc")
    bundle.mkdir(parents=True, exist_ok=True)
    if runc:
        subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
        config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    else:  # crun can write the same skeleton
        subprocess.run(["crun", "spec"], cwd=bundle, check=True, capture_output=True)
        config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": rootfs, "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["linux"]["namespaces"] = [{"type": t} for t in NAMESPACES]
    config["linux"]["cgroupsPath"] = cgroups_path
    config["linux"].pop("resources", None)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def run_argv(runtime: str, state_root: Path, bundle: Path, container_id: str) -> list[str]:
    """`runc run` / `crun run`, foreground, its state under our own root."""
    path = which(runtime)
    if path is None:
        raise BenchError(f"{runtime} not found")
    return [path, "--root", str(state_root), "run", "--bundle", str(bundle), container_id]


class HiddenUnified:
    """A timer process in a private mount namespace without the empty cgroup2
    hierarchy; `time(argv)` runs one command there and returns its seconds."""

    def __init__(self) -> None:
        unshare = which("unshare")
        if unshare is None:
            raise BenchError("unshare (util-linux) not found")
        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=repo)
        self.proc = subprocess.Popen(
            [
                unshare,
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "bench._inns",
                os.readlink("/proc/self/ns/mnt"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        reply = self._read()
        if "ready" not in reply:
            self.close()
            raise BenchError(f"crun helper failed: {reply.get('error')}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"crun helper exited {self.proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def time(self, argv: Sequence[str]) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(argv)) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise BenchError(str(reply["error"]))
        return float(reply["s"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
