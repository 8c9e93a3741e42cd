# Shared steps of build.sh (the L2 guest image) and build-l1.sh (the L1
# image of the emulated test suite). Sourced, not run.
#
# Everything comes from the Debian archive by package name (apt-get download),
# cached under $CACHE keyed by package version, so a rerun takes seconds.

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Commands the builders need, and the Debian packages that provide them.
require_tools() {
    local missing=() t
    for t in apt-get apt-cache dpkg-deb cpio xz; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: apt-get install apt dpkg cpio xz-utils"
}

# The candidate version of a package; runs `apt-get update` once if apt has
# no package lists yet.
pkg_version() {
    local v
    v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        log "apt-get update (no candidate for $1 yet)"
        apt-get update -q >&2 || die "apt-get update failed"
        v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    fi
    [ -n "$v" ] && [ "$v" != "(none)" ] || return 1
    printf '%s\n' "$v"
}

# Downloads package $1 into $CACHE/debs (unless that version is there) and
# unpacks it into $CACHE/pkgs/$1_$version; prints that directory.
fetch_pkg() {
    local pkg=$1 ver dir deb
    ver=$(pkg_version "$pkg") || die "the Debian archive has no package $pkg (apt-get update?)"
    dir=$CACHE/pkgs/${pkg}_${ver//:/%3a}
    if [ ! -e "$dir/.done" ]; then
        mkdir -p "$CACHE/debs"
        deb=$(ls "$CACHE/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
        if [ -z "$deb" ]; then
            log "apt-get download $pkg=$ver"
            (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) || die "apt-get download $pkg failed"
            deb=$(ls "$CACHE/debs/${pkg}_${ver//:/%3a}_"*.deb | head -1)
        fi
        rm -rf "$dir" && mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        touch "$dir/.done"
    fi
    printf '%s\n' "$dir"
}

# The Debian kernel: the ABI linux-image-amd64 depends on, preferably its
# -unsigned variant. Sets KPKG_DIR, KVER (e.g. 6.1.0-57-amd64), VMLINUZ, MODDIR.
fetch_kernel() {
    local abi
    abi=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
    if [ -z "$abi" ]; then
        pkg_version linux-image-amd64 >/dev/null || die "no linux-image-amd64 in the Debian archive"
        abi=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
    fi
    [ -n "$abi" ] || die "cannot tell which kernel linux-image-amd64 depends on"
    if pkg_version "linux-image-$abi-unsigned" >/dev/null 2>&1; then
        KPKG_DIR=$(fetch_pkg "linux-image-$abi-unsigned")
    else
        KPKG_DIR=$(fetch_pkg "linux-image-$abi")
    fi
    KVER=$abi
    VMLINUZ=$KPKG_DIR/boot/vmlinuz-$KVER
    MODDIR=$KPKG_DIR/lib/modules/$KVER
    [ -f "$VMLINUZ" ] && [ -d "$MODDIR/kernel" ] || die "unexpected layout in $KPKG_DIR"
    # The package ships no modules.dep (depmod makes it when it is installed).
    if [ ! -f "$MODDIR/modules.dep" ]; then
        log "depmod for $KVER"
        run_depmod "$KPKG_DIR" "$KVER"
    fi
}

# depmod -b ROOT VERSION: kmod's depmod, else busybox's.
run_depmod() {
    if command -v depmod >/dev/null 2>&1; then
        depmod -b "$1" "$2"
    else
        "$(fetch_pkg busybox-static)/bin/busybox" depmod -b "$1" "$2"
    fi
    [ -f "$1/lib/modules/$2/modules.dep" ] || die "depmod made no modules.dep (apt-get install kmod)"
}

# A busybox root: the static busybox from busybox-static and its applet links.
make_busybox_root() {
    local root=$1 bb a
    bb=$(fetch_pkg busybox-static)/bin/busybox
    [ -x "$bb" ] || die "busybox-static has no bin/busybox"
    rm -rf "$root" && mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,run,mnt,usr/bin,usr/sbin,var/tmp}
    cp "$bb" "$root/bin/busybox"
    for a in $("$bb" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
    done
}

# The modules.dep path of module $1 (dashes and underscores are the same).
module_path() {
    local name=${1//-/_} p
    p=$(sed -n 's/:.*//p' "$MODDIR/modules.dep" | awk -v n="$name" '{
            b = $0; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b)
            if (b == n) { print; exit }
        }')
    [ -n "$p" ] || die "module $1 is not in $MODDIR/modules.dep"
    printf '%s\n' "$p"
}

# Prints the modules $@ and everything they depend on (from modules.dep),
# one path a line, each after its dependencies: the order to load them in.
module_closure() {
    local -A seen=()
    local out=()
    visit() {
        local p=$1 d
        [ -n "${seen[$p]:-}" ] && return
        seen[$p]=1
        for d in $(sed -n "s|^$p: *||p" "$MODDIR/modules.dep"); do visit "$d"; done
        out+=("$p")
    }
    local m
    for m in "$@"; do visit "$(module_path "$m")"; done
    printf '%s\n' "${out[@]}"
}

# Copies the closure of modules $2... into root $1 under /lib/modules
# (decompressed, so busybox insmod takes them) and writes /etc/modules.load,
# the load order.
install_modules() {
    local root=$1 p base; shift
    mkdir -p "$root/lib/modules"
    : > "$root/etc/modules.load"
    while read -r p; do
        base=${p##*/}
        case $base in
            *.ko.xz) xz -dc "$MODDIR/$p" > "$root/lib/modules/${base%.xz}"; base=${base%.xz};;
            *.ko.zst) zstd -qdc "$MODDIR/$p" > "$root/lib/modules/${base%.zst}"; base=${base%.zst};;
            *.ko.gz) gzip -dc "$MODDIR/$p" > "$root/lib/modules/${base%.gz}"; base=${base%.gz};;
            *) cp "$MODDIR/$p" "$root/lib/modules/$base";;
        esac
        echo "$base" >> "$root/etc/modules.load"
    done < <(module_closure "$@")
}

# newc cpio of directory $1 into file $2 (uncompressed: nothing to inflate
# under emulation).
make_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$2.tmp"
    mv "$2.tmp" "$2"
}

elapsed() { echo $(( $(date +%s) - $1 )); }
