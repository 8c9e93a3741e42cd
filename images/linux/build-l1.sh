#!/usr/bin/env bash
# Builds the L1 image of the emulated Linux test suite (tests/linux): the
# Debian kernel again, and a busybox initramfs with kvm_amd and tun (plus
# their modules.dep closure), the resourceful binary (and the libraries ldd
# lists), rsrc-http (a static HTTP-over-Unix-socket client), the L2 image
# (/l2/vmlinuz, /l2/initramfs) and /init (images/linux/l1/init).
#
#   DIR/vmlinuz     L1's kernel
#   DIR/initramfs   L1's initramfs; append a cpio holding /scenario/run.sh
#
# Usage: images/linux/build-l1.sh --out DIR --resourceful PATH --guest DIR [--cache DIR]
#   --guest DIR   the output of images/linux/build.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

L1_MODULES=(kvm_amd tun)

parse_args() {
    OUT= CACHE=${RSRC_LINUX_CACHE:+$RSRC_LINUX_CACHE/cache} VMM= GUEST=
    while [ $# -gt 0 ]; do
        case $1 in
            --out) OUT=$2; shift 2;;
            --cache) CACHE=$2; shift 2;;
            --resourceful) VMM=$2; shift 2;;
            --guest) GUEST=$2; shift 2;;
            -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
            *) die "unknown argument $1 (see --help)";;
        esac
    done
    [ -n "$OUT" ] || die "--out DIR is required"
    [ -x "$VMM" ] || die "--resourceful PATH must be the resourceful binary (cargo build --release -p vmm --bin resourceful)"
    [ -f "$GUEST/vmlinuz" ] && [ -f "$GUEST/initramfs" ] || die "--guest DIR must hold vmlinuz and initramfs (images/linux/build.sh --out DIR)"
    CACHE=${CACHE:-$REPO/target/linux-e2e/cache}
    mkdir -p "$OUT" "$CACHE"
    OUT=$(cd "$OUT" && pwd) CACHE=$(cd "$CACHE" && pwd)
}

# The VMM and the shared libraries it needs (ldd), at the same paths.
install_vmm() {
    local lib
    cp "$VMM" "$ROOT/bin/resourceful"
    strip "$ROOT/bin/resourceful" 2>/dev/null || true
    for lib in $(ldd "$VMM" | grep -o '/[^ ]*'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}

# rsrc-http, built static with gcc (libc6-dev).
install_http_client() {
    command -v gcc >/dev/null || die "missing gcc: apt-get install gcc libc6-dev"
    gcc -O2 -static -o "$ROOT/bin/rsrc-http" "$HERE/l1/rsrc-http.c" \
        || die "cannot build rsrc-http static: apt-get install gcc libc6-dev"
}

make_root() {
    ROOT=$CACHE/work/l1root
    make_busybox_root "$ROOT"
    install_modules "$ROOT" "${L1_MODULES[@]}"
    install_vmm
    install_http_client
    mkdir -p "$ROOT/l2"
    cp "$GUEST/vmlinuz" "$GUEST/initramfs" "$ROOT/l2/"
    install -m 0644 "$HERE/l1/rsrc-l1.sh" "$ROOT/lib/rsrc-l1.sh"
    install -m 0755 "$HERE/l1/init" "$ROOT/init"
}

main() {
    local t0
    t0=$(date +%s)
    parse_args "$@"
    require_tools
    fetch_kernel
    make_root
    cp "$VMLINUZ" "$OUT/vmlinuz"
    make_cpio "$ROOT" "$OUT/initramfs"
    log "made $OUT/vmlinuz ($KVER) and $OUT/initramfs ($(stat -c %s "$OUT/initramfs") bytes; modules: $(tr '\n' ' ' < "$ROOT/etc/modules.load"))"
    log "L1 image done in $(elapsed "$t0") s"
}

main "$@"
