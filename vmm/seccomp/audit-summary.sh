#!/usr/bin/env bash
# Summarizes the kernel's seccomp audit lines (SECCOMP_RET_LOG, from a run
# with the filters in logging mode: docs/sandbox.md, "Regenerating") as
# "kind syscall count", one line per thread kind and syscall not yet on the
# lists. Reads dmesg output from the files given, or from stdin.
#
#   dmesg -C; dmesg -w > /tmp/audit.txt &  ...run...  ; vmm/seccomp/audit-summary.sh /tmp/audit.txt
set -euo pipefail
unistd=/usr/include/x86_64-linux-gnu/asm/unistd_64.h
[ -r "$unistd" ] || unistd=/usr/include/asm/unistd_64.h
awk -v unistd="$unistd" '
BEGIN {
    while ((getline line < unistd) > 0)
        if (split(line, f, " ") == 3 && f[1] == "#define" && f[2] ~ /^__NR_/)
            name[f[3]] = substr(f[2], 6)
}
/type=1326/ {
    comm = $0; sub(/.*comm="/, "", comm); sub(/".*/, "", comm)
    nr = $0; sub(/.* syscall=/, "", nr); sub(/ .*/, "", nr)
    kind = comm
    if (comm ~ /^rsrc-vcpu/) kind = "vcpu"
    else if (comm == "rsrc-devices") kind = "devices"
    else if (comm == "rsrc-api") kind = "api"
    else if (comm ~ /^rsrc-agent/) kind = "agent"
    else if (comm == "rsrc-sampler") kind = "sampler"
    else if (comm == "resourceful" || comm == "main") kind = "main"
    seen[kind " " ((nr in name) ? name[nr] : nr)]++
}
END { for (k in seen) print k, seen[k] }
' "$@" | sort
