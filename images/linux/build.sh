#!/usr/bin/env bash
# Builds the Linux guest image for `resourceful run`, only from Debian
# packages (plus the project's own static resourceful-agent):
#
#   DIR/vmlinuz     the kernel linux-image-amd64 depends on (its -unsigned variant)
#   DIR/initramfs   newc cpio: busybox-static, the virtio/vsock/ext4 modules and
#                   their modules.dep closure, resourceful-agent and its config,
#                   /workloads/NAME, and /init (images/linux/guest/init)
#
# Usage: images/linux/build.sh --out DIR [--cache DIR] [--agent PATH]
#   --cache DIR   downloads and unpacked packages, keyed by version
#                 (default: target/linux-e2e/cache, or $RSRC_LINUX_CACHE/cache)
#   --agent PATH  a static resourceful-agent (default: built here with cargo)
#
# Boot it (hardware KVM): resourceful run --kernel DIR/vmlinuz --initrd DIR/initramfs
#   --vsock cid=3 --cmdline 'console=ttyS0 reboot=k panic=1 rsrc.workload=boot'
# See docs/linux-guests.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

# Modules the guest loads; their dependencies come from modules.dep.
# crc32c_generic is ext4's soft dependency (modules.softdep), not in modules.dep.
GUEST_MODULES=(virtio_mmio virtio_blk virtio_net vsock vmw_vsock_virtio_transport
               crc32c_generic ext4)

parse_args() {
    OUT= CACHE=${RSRC_LINUX_CACHE:+$RSRC_LINUX_CACHE/cache} AGENT=
    while [ $# -gt 0 ]; do
        case $1 in
            --out) OUT=$2; shift 2;;
            --cache) CACHE=$2; shift 2;;
            --agent) AGENT=$2; shift 2;;
            -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
            *) die "unknown argument $1 (see --help)";;
        esac
    done
    [ -n "$OUT" ] || die "--out DIR is required"
    CACHE=${CACHE:-$REPO/target/linux-e2e/cache}
    mkdir -p "$OUT" "$CACHE"
    OUT=$(cd "$OUT" && pwd) CACHE=$(cd "$CACHE" && pwd)
}

# The static agent: built with crt-static in its own target subdirectory.
build_agent() {
    if [ -n "$AGENT" ]; then
        [ -x "$AGENT" ] || die "--agent $AGENT is not an executable"
    else
        log "cargo build resourceful-agent (static)"
        (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build -q --release -p guest-agent --target x86_64-unknown-linux-gnu >&2)
        AGENT=$REPO/target/x86_64-unknown-linux-gnu/release/resourceful-agent
    fi
    if ! file -L "$AGENT" | grep -qE 'statically linked|static-pie linked'; then
        die "$AGENT is not static ($(file -b "$AGENT")); build it with RUSTFLAGS='-C target-feature=+crt-static' and libc6-dev installed"
    fi
}

make_root() {
    ROOT=$CACHE/work/l2root
    make_busybox_root "$ROOT"
    install_modules "$ROOT" "${GUEST_MODULES[@]}"
    cp "$AGENT" "$ROOT/bin/resourceful-agent"
    strip "$ROOT/bin/resourceful-agent" 2>/dev/null || true
    cp "$HERE/guest/resourceful-agent.json" "$ROOT/etc/resourceful-agent.json"
    # rsrc-mmio, the tagging workload's known MMIO exits, static like the agent.
    gcc -O2 -static -o "$ROOT/bin/rsrc-mmio" "$HERE/guest/rsrc-mmio.c" \
        || die "cannot build rsrc-mmio static: apt-get install gcc libc6-dev"
    mkdir -p "$ROOT/workloads"
    cp "$HERE"/guest/workloads/* "$ROOT/workloads/"
    install -m 0755 "$HERE/guest/init" "$ROOT/init"
}

main() {
    local t0
    t0=$(date +%s)
    parse_args "$@"
    require_tools
    command -v file >/dev/null || die "missing file: apt-get install file"
    fetch_kernel
    build_agent
    make_root
    cp "$VMLINUZ" "$OUT/vmlinuz"
    make_cpio "$ROOT" "$OUT/initramfs"
    echo "$KVER" > "$OUT/kernel-release"
    log "made $OUT/vmlinuz ($KVER, $(stat -c %s "$OUT/vmlinuz") bytes)"
    log "made $OUT/initramfs ($(stat -c %s "$OUT/initramfs") bytes; modules: $(tr '\n' ' ' < "$ROOT/etc/modules.load"))"
    log "guest image done in $(elapsed "$t0") s"
}

main "$@"
