# Helpers for the scenario scripts that run in L1 (sourced by /scenario/run.sh).
# Knobs (set them before calling): L2_VCPUS (1), L2_MEM (256 MiB),
# VMM_TIMEOUT (seconds before the VMM gets SIGINT; it still writes its report),
# L2_CMDLINE_EXTRA (appended to L2's kernel command line).
L2_VCPUS=${L2_VCPUS:-1}
L2_MEM=${L2_MEM:-256}
VMM_TIMEOUT=${VMM_TIMEOUT:-300}

uptime_s() { read up _ < /proc/uptime; echo "$up"; }

# run_l2 WORKLOAD [VMM ARGS...]: boots L2 with /workloads/WORKLOAD; the report
# goes to /results/report.json, the L2 console to /results/l2-console.txt (and
# L1's console), the VMM's log to /results/vmm-stderr.txt.
run_l2() {
    local w=$1
    shift
    # L2_DEFAULT_CMDLINE=1: no --cmdline, so the VMM's default command line
    # boots the stock kernel (and /init runs its default workload, boot).
    local cmdline="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux loglevel=4 rsrc.workload=$w${L2_CMDLINE_EXTRA:+ $L2_CMDLINE_EXTRA}"
    [ "${L2_DEFAULT_CMDLINE:-0}" = 1 ] && cmdline=
    echo "RSRC-L1: vmm start (workload $w, $L2_VCPUS vCPU(s)), uptime $(uptime_s) s"
    # If the VMM outlives its SIGINT by 15 s, show where its threads are in
    # the kernel (console log level up, so the stacks reach the console).
    ( sleep $((VMM_TIMEOUT + 15))
      for p in $(pidof resourceful); do
          dmesg -n 8
          echo "RSRC-L1: vmm $p still alive after SIGINT; its threads:"
          for t in /proc/$p/task/*; do
              echo "RSRC-L1: thread ${t##*/} $(cat $t/comm) state $(cut -d' ' -f3 $t/stat) wchan $(cat $t/wchan)"
              sed "s/^/RSRC-L1:   /" $t/stack 2>/dev/null
          done
          echo l > /proc/sysrq-trigger
      done ) &
    local watcher=$!
    { timeout -s INT "$VMM_TIMEOUT" /bin/resourceful run --kernel /l2/vmlinuz --initrd /l2/initramfs \
        --mem-mib "$L2_MEM" --vcpus "$L2_VCPUS" --report-json /results/report.json \
        ${cmdline:+--cmdline "$cmdline"} "$@" 2>/results/vmm-stderr.txt
      echo $? > /tmp/vmm.rc; } | tee /results/l2-console.txt
    kill $watcher 2>/dev/null
    echo "RSRC-L1: vmm end rc=$(cat /tmp/vmm.rc), uptime $(uptime_s) s"
    cp /tmp/vmm.rc /results/vmm.rc
}

# api_get SOCKET PATH OUT: the raw HTTP response of GET PATH into OUT.
api_get() { /bin/rsrc-http "$1" "$2" > "$3" 2>&1; }

# wait_for PATH SECONDS: until PATH exists; 1 if it never did.
wait_for() {
    local i=0
    while [ ! -e "$1" ]; do
        [ "$i" -ge "$(($2 * 5))" ] && return 1
        sleep 0.2
        i=$((i + 1))
    done
}
