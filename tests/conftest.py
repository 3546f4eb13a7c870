"""Suite-wide test helpers. Markers are declared in pyproject.toml.

- Tests marked ``cgroup2`` are skipped unless the host has a pure cgroup v2
  hierarchy with the memory controller; tests/vm/run.sh provides one in a VM.
- ``in_vm()`` (also the session fixture ``in_vm``) tells whether the tests run
  inside that VM (vm-exec.sh sets NSVISOR_IN_VM=1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CGROUP2_SKIP_REASON = "needs a pure cgroup v2 host with the memory controller (run tests/vm/run.sh)"


def in_vm() -> bool:
    """True inside the cgroup v2 test VM of tests/vm/run.sh."""
    return os.environ.get("NSVISOR_IN_VM") == "1"


def pure_cgroup2_with_memory(root: Path = Path("/sys/fs/cgroup")) -> bool:
    """cgroup2 mounted at *root*, no cgroup v1 hierarchy anywhere, memory available."""
    try:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        controllers = (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False
    fstypes = {m[1]: m[2] for m in mounts if len(m) > 2}
    v1 = any(m[2] == "cgroup" for m in mounts if len(m) > 2)
    return fstypes.get(str(root)) == "cgroup2" and not v1 and "memory" in controllers


@pytest.fixture(scope="session", name="in_vm")
def _in_vm_fixture() -> bool:
    return in_vm()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("cgroup2") for item in items):
        return
    if pure_cgroup2_with_memory():
        return
    # a skipif (not skip): pytest evaluates skipif marks first, so this reason wins
    skip = pytest.mark.skipif(True, reason=CGROUP2_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("cgroup2"):
            item.add_marker(skip, append=False)
