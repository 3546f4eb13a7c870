#!/bin/bash
# The whole test suite, as root on a fresh Debian 12 host: installs what is
# missing (deploy/setup.sh), runs unit, kernel and e2e tests on this host's
# cgroup layout, then the cgroup tests again inside a pure cgroup v2 VM
# (tests/vm/run.sh). Extra arguments go to the host pytest run.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
deploy/setup.sh
mkdir -p tests/out
echo "== host suite ($(test -e /sys/fs/cgroup/cgroup.controllers && echo cgroup v2 || echo hybrid cgroups))"
.venv/bin/python -m pytest -p no:cacheprovider --junitxml=tests/out/junit-host.xml "$@"
if [ -x tests/vm/run.sh ] && [ -z "${NSVISOR_SKIP_VM:-}" ]; then
    echo "== cgroup v2 suite (VM)"
    VM_RESULTS_DIR=tests/out tests/vm/run.sh
fi
