#!/bin/bash
# Run the project's cgroup tests (markers "cgroups or cgroup2") inside a
# throw-away VM with a pure cgroup v2 hierarchy (see vm-exec.sh, README.md).
#
# usage: tests/vm/run.sh [PYTEST ARGS...]     e.g. tests/vm/run.sh -k memory -x
#        (a later -m in the arguments replaces the default marker expression)
# exit:  pytest's status; 124 the VM timed out; 255 the VM died / broken setup.
# env:   VM_RESULTS_DIR  where junit-cgroup2.xml and console.log go (default tests/vm/out)
#        VM_PYTHON       python to run pytest with (default <repo>/.venv/bin/python)
#        VM_FAST_DIRS    default: that python's installation prefix and venv (as
#                        ext4 images); set it empty to read them over 9p
#        VM_TIMEOUT (1500 s), VM_ACCEL, VM_CPUS, VM_MEM, ...: see vm-exec.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${VM_PYTHON:-$REPO/.venv/bin/python}
RESULTS=${VM_RESULTS_DIR:-$HERE/out}
GUEST_SHARE=/run/vm-share
JUNIT=junit-cgroup2.xml
log() { echo "vm: $*" >&2; }

[ -x "$PY" ] || { log "no python at $PY (create the venv first: python3 -m venv .venv)"; exit 255; }
# The guest sees the host / read-only, except paths it mounts over: tmpfs on /run
# and /dev/shm, its own /proc /sys /dev. (/tmp and /var/tmp stay visible: they are
# overlays with the host dir below.)
for p in "$REPO" "$(readlink -f "$PY")"; do
    case "$p" in
        /run | /run/* | /proc/* | /sys/* | /dev/*)
            log "$p is hidden inside the VM (/run, /proc, /sys, /dev are the guest's own)"
            exit 255
            ;;
    esac
done

# The interpreter's installation and the venv go in as cached ext4 images
# (vm-exec.sh VM_FAST_DIRS): 5-6x faster imports than over 9p. Not /usr (a
# Debian python): that would image the whole system.
if [ -z "${VM_FAST_DIRS+set}" ]; then
    VM_FAST_DIRS=""
    while read -r prefix; do
        case "$prefix" in /usr | /usr/local | /) ;; *) VM_FAST_DIRS+="$prefix:" ;; esac
    done < <("$PY" -c 'import sys; print(sys.base_prefix); print(sys.prefix)' | sort -u)
fi
export VM_FAST_DIRS

mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
rm -f "$RESULTS/$JUNIT" "$RESULTS/console.log"
SHARE=$(mktemp -d "${TMPDIR:-/tmp}/nsvisor-vm-share.XXXXXX")
VM=""
# shellcheck disable=SC2317 # called from traps
stop_vm() {
    [ -z "$VM" ] || kill -TERM "$VM" 2>/dev/null || true # vm-exec.sh stops qemu
    [ -z "$VM" ] || wait "$VM" 2>/dev/null || true
}
trap 'stop_vm; rm -rf "$SHARE"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

VM_SHARE=$SHARE VM_CWD=$REPO VM_CONSOLE_LOG=$RESULTS/console.log \
    "$HERE/vm-exec.sh" env PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    "$PY" -m pytest -p no:cacheprovider -ra -m "cgroups or cgroup2" \
    --basetemp=/tmp/nsvisor-vm-pytest --junitxml="$GUEST_SHARE/$JUNIT" "$@" &
VM=$!
rc=0
wait "$VM" || rc=$?
VM=""

if [ -s "$SHARE/$JUNIT" ]; then
    cp "$SHARE/$JUNIT" "$RESULTS/$JUNIT"
    log "junit: $RESULTS/$JUNIT"
else
    log "no junit report came back"
fi
log "console log: $RESULTS/console.log; exit status $rc"
exit "$rc"
