"""The crun timer (see bench.oci.HiddenUnified). Started by `unshare --mount
--propagation private`; refuses to mount anything unless its mount namespace
really differs from its caller's. Protocol: one JSON argv per stdin line, one
{"s": seconds} or {"error": text} per stdout line; EOF ends it (and with it
the namespace and its tmpfs)."""

from __future__ import annotations

import json
import os
import sys

from bench.proc import BenchError, time_spawn

UNIFIED = "/sys/fs/cgroup/unified"


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    # argv[1]: the caller's mount namespace (PID 1's may not be readable here).
    if len(sys.argv) < 2 or os.readlink("/proc/self/ns/mnt") == sys.argv[1]:
        _say({"error": "not in a private mount namespace; refusing to hide the unified hierarchy"})
        return 1
    if os.path.isdir(UNIFIED) and os.path.ismount(UNIFIED):
        try:
            time_spawn(["mount", "-t", "tmpfs", "-o", "size=4k,mode=755", "nsvisor-bench", UNIFIED])
        except BenchError as e:
            _say({"error": str(e)})
            return 1
    _say({"ready": True})
    for line in sys.stdin:
        try:
            _say({"s": time_spawn(json.loads(line))})
        except (BenchError, OSError, ValueError) as e:
            _say({"error": str(e)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
