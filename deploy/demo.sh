#!/bin/bash
# The main job: install what is missing, build the busybox rootfs, and run the
# daemon in the foreground with deploy/examples/nsvisor.toml (three demo
# containers; metrics on http://127.0.0.1:9323/metrics). Ctrl-C stops the
# daemon; the containers keep running (live restore) until `nsvisor rm -f`.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
"$REPO/deploy/setup.sh"
ROOTFS=/var/lib/nsvisor/rootfs/busybox
"$REPO/.venv/bin/nsvisor" rootfs busybox "$ROOTFS"
ln -sf "$REPO/.venv/bin/nsvisor" /usr/local/bin/nsvisor
exec "$REPO/.venv/bin/nsvisor" daemon --config "$REPO/deploy/examples/nsvisor.toml" "$@"
