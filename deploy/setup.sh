#!/bin/bash
# Installs everything nsvisor and its tests need on a fresh Debian 12 host, as
# root: Debian packages and a virtual environment (.venv) with nsvisor in it.
# Idempotent: re-running skips what is there.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PKGS=(busybox-static libseccomp2 iproute2 nftables util-linux mount procps e2fsprogs runc crun
      qemu-system-x86 qemu-system-data linux-image-amd64 cpio kmod gcc libc6-dev
      prometheus prometheus-alertmanager)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The container monitor (supervisor/runtime/monitor.c): one C file, libc only.
MON_SRC="$REPO/supervisor/runtime/monitor.c"
MON_BIN="$REPO/supervisor/runtime/nsvisor-monitor"
if [ ! -x "$MON_BIN" ] || [ "$MON_SRC" -nt "$MON_BIN" ]; then
    ${CC:-gcc} -std=c11 -O2 -Wall -Wextra -Werror -o "$MON_BIN.tmp" "$MON_SRC"
    mv "$MON_BIN.tmp" "$MON_BIN"
fi
# The command-line client's front end (supervisor/cliclient.c): replaces the
# Python entry point pip writes as .venv/bin/nsvisor (below), which it runs
# itself when no daemon command server answers.
CLI_SRC="$REPO/supervisor/cliclient.c"
CLI_BIN="$REPO/supervisor/nsvisor-cli"
if [ ! -x "$CLI_BIN" ] || [ "$CLI_SRC" -nt "$CLI_BIN" ]; then
    ${CC:-gcc} -std=c11 -O2 -Wall -Wextra -Werror -o "$CLI_BIN.tmp" "$CLI_SRC"
    mv "$CLI_BIN.tmp" "$CLI_BIN"
fi
PY=${PYTHON:-python3}
if [ ! -x "$REPO/.venv/bin/python" ]; then
    "$PY" -m venv "$REPO/.venv"
fi
"$REPO/.venv/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" 2>&1 | grep -v '^WARNING: Location' || true
install -m 0755 "$CLI_BIN" "$REPO/.venv/bin/nsvisor"  # over pip's Python entry point
"$REPO/.venv/bin/python" -c 'import supervisor, trio, hypercorn, prometheus_client, structlog, pyroute2' 
