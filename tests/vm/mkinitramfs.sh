#!/bin/bash
# Build the tiny initramfs of the cgroup v2 test VM: busybox-static, the modules
# needed to reach the host root over virtio-9p (plus virtio-blk, virtio-rng,
# overlay, ext4 for the read-only images of VM_FAST_DIRS) in dependency order, a /sbin/modprobe shim and guest-init as /init.
#
# usage: mkinitramfs.sh KERNEL_VERSION OUT.cpio.gz
set -euo pipefail
KVER=${1:?kernel version, e.g. 6.1.0-56-amd64}
OUT=${2:?output initramfs path}
HERE=$(cd "$(dirname "$0")" && pwd)
# Modules the guest init loads itself (everything else is loaded on demand by the
# shim below, which runs the host's modprobe inside the host root).
WANT="virtio_pci virtio_blk virtio_rng 9pnet_virtio 9p overlay ext4"

BUSYBOX=${VM_BUSYBOX:-/bin/busybox}
if ! "$BUSYBOX" --list >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "mkinitramfs: $BUSYBOX is not a static busybox (apt-get install busybox-static)" >&2
    exit 1
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/nsvisor-initramfs.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bin" "$W/sbin" "$W/lib/mod" "$W/proc" "$W/sys" "$W/dev" "$W/newroot"
cp "$BUSYBOX" "$W/bin/busybox"

# Dependency-ordered, de-duplicated list of module files ("builtin" lines are skipped).
order=()
declare -A seen=()
for m in $WANT; do
    deps=$(modprobe -S "$KVER" --show-depends "$m") || {
        echo "mkinitramfs: module $m not found for kernel $KVER" >&2
        exit 1
    }
    while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        [ -z "${seen[$path]:-}" ] || continue
        seen[$path]=1
        order+=("$path")
    done <<<"$deps"
done
: >"$W/lib/mod/order"
for f in "${order[@]}"; do
    name=$(basename "$f")
    name=${name%%.ko*}
    case "$f" in
        *.ko) cp "$f" "$W/lib/mod/$name.ko" ;;
        *.ko.xz) xz -dc "$f" >"$W/lib/mod/$name.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$W/lib/mod/$name.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$W/lib/mod/$name.ko" ;;
        *) echo "mkinitramfs: unexpected module path $f" >&2; exit 1 ;;
    esac
    echo "$name" >>"$W/lib/mod/order"
done

# The kernel's module autoloader (and other usermode helpers) run in the root of
# the initramfs, not in the chroot where the tests run: forward to the host's
# modprobe, which finds /lib/modules/$KVER in the host root.
cat >"$W/sbin/modprobe" <<'EOF'
#!/bin/busybox sh
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
EOF
chmod 755 "$W/sbin/modprobe"

cp "$HERE/guest-init" "$W/init"
chmod 755 "$W/init"
(cd "$W" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 >"$OUT"
