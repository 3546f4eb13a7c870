#!/bin/bash
# Run one command inside a throw-away QEMU VM with a pure cgroup v2 hierarchy.
#
# The VM boots the host's newest Debian kernel (/boot/vmlinuz-*, as an extracted
# ELF vmlinux through its PVH entry) with a busybox initramfs (mkinitramfs.sh,
# guest-init). Inside: the host / read-only over 9p, cgroup2 with every
# controller at /sys/fs/cgroup (cgroup_no_v1=all psi=1), /tmp and /var/tmp as
# overlays (host dir read-only below, tmpfs on top), /run and /dev/shm tmpfs,
# devpts, lo up, hostname nsvisor-vm, a scratch virtio disk at /dev/vda and a
# read-write host dir at /run/vm-share. The command runs as root in the guest's
# root cgroup, in the caller's working directory, with NSVISOR_IN_VM=1.
#
# usage: vm-exec.sh COMMAND [ARG...]      e.g.  vm-exec.sh sh -c 'cat /proc/mounts'
# exit:  the command's status; 124 timeout; 255 the VM died without a status.
# env:   VM_TIMEOUT     hard limit for the whole VM run, seconds (default 1500)
#        VM_ACCEL       auto (default: KVM if a trial boot works, else TCG) | kvm | tcg
#        VM_KVM_PROBE_TIMEOUT  limit of that trial boot, seconds (default 8); the
#                       verdict is cached in VM_CACHE (delete accel-* to re-probe)
#        VM_CPUS (2)    VM_MEM (2G)
#        VM_KERNEL      bzImage to boot (default: newest /boot/vmlinuz-* with /lib/modules)
#        VM_DISK        raw image for /dev/vda (default: a fresh sparse scratch image);
#                       "none": no disk
#        VM_DISK_SIZE   size of the scratch image (default 256M)
#        VM_SHARE       host dir shared read-write at /run/vm-share (default: a temp
#                       dir, removed afterwards)
#        VM_FAST_DIRS   ":"-separated host dirs to ship as cached read-only ext4
#                       images mounted over the same paths (much faster than 9p)
#        VM_CWD         guest working directory (default: the caller's, if visible)
#        VM_CONSOLE_LOG also write the serial console to this file
#        VM_SUBTREE     all (default: root cgroup.subtree_control enables every
#                       controller, like systemd) | none
#        VM_APPEND      extra kernel command line
#        VM_VERBOSE=1   kernel messages on the console
#        VM_CACHE       cache dir for vmlinux/initramfs (default: tests/vm/.cache)
# shellcheck disable=SC2054 # qemu options are comma-separated on purpose
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST_SHARE=/run/vm-share
log() { echo "vm: $*" >&2; }
die() { log "$*"; exit 255; }
[ $# -gt 0 ] || die "usage: $0 COMMAND [ARG...]"

command -v qemu-system-x86_64 >/dev/null ||
    die "qemu-system-x86_64 not found (apt-get install qemu-system-x86 qemu-system-data)"
QEMU_DATA=/usr/share/qemu
[ -e "$QEMU_DATA/qboot.rom" ] || die "no $QEMU_DATA/qboot.rom (apt-get install qemu-system-data)"

# ---- kernel + initramfs (cached, rebuilt when an input changes) ----------------
if [ -n "${VM_KERNEL:-}" ]; then
    BZ=$VM_KERNEL
else
    BZ=""
    while read -r k; do
        v=$(basename "$k")
        [ -d "/lib/modules/${v#vmlinuz-}" ] && BZ=$k
    done < <(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V)
    [ -n "$BZ" ] || die "no /boot/vmlinuz-* with modules (apt-get install linux-image-amd64)"
fi
KVER=$(basename "$BZ")
KVER=${KVER#vmlinuz-}
[ -d "/lib/modules/$KVER" ] || die "no /lib/modules/$KVER for $BZ"
[ -r "$BZ" ] || die "cannot read $BZ"

CACHE=${VM_CACHE:-$HERE/.cache}
mkdir -p "$CACHE"
INITRD=$CACHE/initramfs-$KVER.cpio.gz
VMLINUX=$CACHE/vmlinux-$KVER
stale() { # stale OUT INPUT...: OUT missing/empty or older than an input
    local out=$1 f
    shift
    [ -s "$out" ] || return 0
    for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
    return 1
}
{
    flock 9 # concurrent runs share one cache
    if stale "$INITRD" "$HERE/guest-init" "$HERE/mkinitramfs.sh" /bin/busybox \
        "/lib/modules/$KVER/modules.dep"; then
        log "building $INITRD"
        "$HERE/mkinitramfs.sh" "$KVER" "$INITRD.tmp.$$"
        mv -f "$INITRD.tmp.$$" "$INITRD"
    fi
    if stale "$VMLINUX" "$BZ" "$HERE/extract_vmlinux.py"; then
        log "extracting $VMLINUX"
        python3 "$HERE/extract_vmlinux.py" "$BZ" "$VMLINUX"
    fi
} 9>"$CACHE/.lock"

# ---- accelerator ----------------------------------------------------------------
ACCEL=${VM_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
    ACCEL=tcg
    if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        # /dev/kvm is not enough (PVM hosts abort on the first vCPU reset, some
        # nested setups hang): boot this very kernel under KVM once and cache the verdict.
        key="$(uname -r)-$KVER-$(qemu-system-x86_64 --version | head -n1 | tr -c 'A-Za-z0-9.\n' _)"
        verdict=$CACHE/accel-$(printf '%s' "$key" | md5sum | cut -c1-16)
        if [ ! -s "$verdict" ]; then
            probe_log=$CACHE/kvm-probe.log
            t0=$SECONDS
            VM_ACCEL=kvm VM_TIMEOUT=${VM_KVM_PROBE_TIMEOUT:-8} VM_DISK=none VM_SHARE='' \
                VM_CONSOLE_LOG='' VM_CWD=/ "$0" true >"$probe_log" 2>&1 &
            probe=$!
            # A broken KVM aborts at once, or crawls and then stops the vCPU with an
            # internal error (PVM here: ~22 s); a working one boots in ~1-2 s, and
            # TCG needs ~3 s, so a KVM that is not done in 8 s is not worth using.
            while kill -0 "$probe" 2>/dev/null &&
                ! grep -qE 'KVM internal error|emulation failure|failed to set MSR' "$probe_log"; do
                sleep 0.2
            done
            kill -TERM "$probe" 2>/dev/null || true
            if wait "$probe"; then echo kvm >"$verdict"; else echo tcg >"$verdict"; fi
            log "KVM probe: $(cat "$verdict") ($((SECONDS - t0)) s, log: $probe_log)"
        fi
        ACCEL=$(cat "$verdict")
    fi
fi
case "$ACCEL" in
    tcg) ACCEL_OPTS=(-accel tcg,thread=multi,tb-size=256 -cpu max) ;;
    kvm) ACCEL_OPTS=(-accel kvm -cpu host) ;;
    *) die "VM_ACCEL must be auto, kvm or tcg (got $ACCEL)" ;;
esac

# ---- share, scratch disk, command ---------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nsvisor-vm.XXXXXX")
QPID=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    if [ -n "$QPID" ]; then
        kill -TERM "$QPID" 2>/dev/null || true # timeout(1) passes it on to qemu
        wait "$QPID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

SHARE=${VM_SHARE:-$WORK/share}
mkdir -p "$SHARE"
rm -f "$SHARE/rc" "$SHARE/cmd.sh"

DISK_OPTS=()
DISK=${VM_DISK:-}
if [ -z "$DISK" ]; then
    DISK=$WORK/scratch.img
    truncate -s "${VM_DISK_SIZE:-256M}" "$DISK"
fi
if [ "$DISK" != none ]; then
    [ -f "$DISK" ] || die "VM_DISK $DISK is not a file"
    DISK_OPTS=(-drive "file=$DISK,if=none,id=scratch,format=raw,cache=unsafe,discard=unmap"
        -device virtio-blk-pci,drive=scratch,serial=scratch)
fi

# VM_FAST_DIRS: 9p costs ~1-4 ms per file operation under TCG (importing pytest
# over it takes ~12 s, from an ext4 image ~2 s), so big read-only trees such as
# the Python installation and the venv go in as cached ext4 images, rebuilt when
# anything below the dir is newer than the image.
FAST_OPTS=()
: >"$SHARE/fastdirs"
IFS=: read -r -a fast_dirs <<<"${VM_FAST_DIRS:-}"
if [ ${#fast_dirs[@]} -gt 0 ] && ! command -v mke2fs >/dev/null; then
    log "no mke2fs (apt-get install e2fsprogs): VM_FAST_DIRS read over 9p instead"
    fast_dirs=()
fi
n=0
for d in "${fast_dirs[@]}"; do
    [ -n "$d" ] || continue
    [ -d "$d" ] || die "VM_FAST_DIRS: $d is not a directory"
    d=$(cd "$d" && pwd -P)
    case "$d" in / | /usr | /etc | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /run | /run/*)
        die "VM_FAST_DIRS: $d cannot be an image" ;;
    esac
    img=$CACHE/fast-$(printf '%s' "$d" | md5sum | cut -c1-16).ext4
    {
        flock 9
        if [ ! -s "$img" ] || [ -n "$(find "$d" -newer "$img" -print -quit 2>/dev/null)" ]; then
            t0=$SECONDS
            files=$(find "$d" -xdev | wc -l)
            kib=$(du -sk --apparent-size "$d" | cut -f1)
            rm -f "$img.tmp" # (a run still using the old image keeps its inode)
            mke2fs -q -t ext4 -O ^has_journal,^resize_inode -m 0 -N $((files + files / 4 + 1024)) \
                -E root_owner=0:0 -L nsvisor-fast -d "$d" "$img.tmp" \
                "$((kib + kib / 4 + files * 4 + 65536))k" >&2 ||
                die "mke2fs failed for $d"
            mv -f "$img.tmp" "$img"
            log "image of $d built in $((SECONDS - t0)) s ($(du -sh "$img" | cut -f1))"
        fi
    } 9>"$CACHE/.lock"
    FAST_OPTS+=(-drive "file=$img,if=none,id=fast$n,format=raw,readonly=on"
        -device "virtio-blk-pci,drive=fast$n,serial=fast$n")
    printf 'fast%s %s\n' "$n" "$d" >>"$SHARE/fastdirs"
    n=$((n + 1))
done

q() { # POSIX-sh single-quote one word
    local s=${1//\'/\'\\\'\'}
    printf "'%s' " "$s"
}
CWD=${VM_CWD:-$PWD}
{
    echo "cd $(q "$CWD")2>/dev/null || cd /"
    echo "NSVISOR_IN_VM=1 NSVISOR_VM_SHARE=$GUEST_SHARE"
    echo "export NSVISOR_IN_VM NSVISOR_VM_SHARE"
    printf 'exec '
    for a in "$@"; do q "$a"; done
    echo
} >"$SHARE/cmd.sh"

# ---- boot -------------------------------------------------------------------------
APPEND="console=ttyS0 panic=-1 rdinit=/init cgroup_no_v1=all psi=1 mitigations=off"
APPEND+=" random.trust_cpu=on nsvisor.subtree=${VM_SUBTREE:-all}"
if [ "${VM_VERBOSE:-0}" = 1 ]; then APPEND+=" loglevel=7"; else APPEND+=" quiet loglevel=1"; fi
APPEND+=" ${VM_APPEND:-}"
SERIAL=stdio,id=console
[ -z "${VM_CONSOLE_LOG:-}" ] || SERIAL+=",logfile=$VM_CONSOLE_LOG"
TIMEOUT=${VM_TIMEOUT:-1500}

timeout --foreground -k 10 "$TIMEOUT" \
    qemu-system-x86_64 "${ACCEL_OPTS[@]}" -machine q35 -bios qboot.rom \
    -smp "${VM_CPUS:-2}" -m "${VM_MEM:-2G}" \
    -nodefaults -no-user-config -display none -no-reboot -monitor none \
    -chardev "$SERIAL" -serial chardev:console \
    -kernel "$VMLINUX" -initrd "$INITRD" -append "$APPEND" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=share,path=$SHARE,security_model=none,multidevs=remap" \
    -device virtio-9p-pci,fsdev=share,mount_tag=share \
    -device virtio-rng-pci \
    "${DISK_OPTS[@]}" "${FAST_OPTS[@]}" </dev/null &
QPID=$!
qrc=0
wait "$QPID" || qrc=$?
QPID=""
echo # the console's last line ("reboot: Power down") has no newline

if [ "$qrc" = 124 ]; then
    log "timed out after $TIMEOUT s (VM_TIMEOUT)"
    exit 124
fi
if [ ! -s "$SHARE/rc" ]; then
    log "the VM ended without an exit status (qemu status $qrc; see the console output above)"
    exit 255
fi
exit "$(cat "$SHARE/rc")"
