# Helpers for the scenario scripts that run in L1 (sourced by /scenario/run.sh).
# Knobs (set them before calling): L2_VCPUS (1), L2_MEM (256 MiB),
# VMM_TIMEOUT (seconds before the VMM gets SIGINT; it still writes its report),
# L2_CMDLINE_EXTRA (appended to L2's kernel command line).
L2_VCPUS=${L2_VCPUS:-1}
L2_MEM=${L2_MEM:-256}
VMM_TIMEOUT=${VMM_TIMEOUT:-300}

uptime_s() { read up _ < /proc/uptime; echo "$up"; }

# L1's own view of an L2 run, for failures no L2 log explains (an L2 triple
# fault leaves no register state on AMD): KVM's tracepoints for every L2
# exit (reason, RIP, exit info: the `shutdown` exit carries the RIP the
# emulated CPU stopped at), injected exceptions and the MMU notifier's
# unmaps of guest memory, in a ring of 1 MiB per CPU; and what L1's memory
# manager did meanwhile (/proc/vmstat: THP collapses, compaction, migration).
TRACE=/sys/kernel/tracing
l1_trace_begin() {
    cp /proc/vmstat /tmp/vmstat.before
    grep -q " $TRACE " /proc/mounts || mount -t tracefs nodev "$TRACE" 2>/dev/null || return 0
    echo 1024 > "$TRACE/buffer_size_kb"
    for e in kvm/kvm_exit kvm/kvm_inj_exception kvm/kvm_unmap_hva_range kvm/kvm_set_spte_hva; do
        echo 1 > "$TRACE/events/$e/enable" 2>/dev/null
    done
    echo > "$TRACE/trace"
    echo 1 > "$TRACE/tracing_on"
}
# l1_trace_end: the trace's last 200 lines, event counts and the vmstat
# counters that moved into /results/l1-trace.txt.
l1_trace_end() {
    {
        echo "l2 cmdline: $L2_CMDLINE_USED"
        echo "thp: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
        echo "vmstat counters that moved during the run:"
        awk 'NR == FNR { b[$1] = $2; next } $2 != b[$1] { print "  " $1, $2 - b[$1] }' \
            /tmp/vmstat.before /proc/vmstat | grep -E 'thp|compact|migrat|numa|swap|reclaim|steal|zap|unevict|mlock' 
        if [ -f "$TRACE/tracing_on" ]; then
            echo 0 > "$TRACE/tracing_on"
            cat "$TRACE/trace" > /tmp/l1-trace
            echo "events in the ring: exits $(grep -c ' kvm_exit:' /tmp/l1-trace)," \
                "injected exceptions $(grep -c kvm_inj_exception /tmp/l1-trace)," \
                "unmaps $(grep -c kvm_unmap_hva_range /tmp/l1-trace)," \
                "spte sets $(grep -c kvm_set_spte_hva /tmp/l1-trace)"
            echo "last unmaps:"
            grep kvm_unmap_hva_range /tmp/l1-trace | tail -n 20
            echo "last events:"
            grep -v '^#' /tmp/l1-trace | tail -n 200
        fi
    } > /results/l1-trace.txt 2>&1
}

# run_l2 WORKLOAD [VMM ARGS...]: boots L2 with /workloads/WORKLOAD; the report
# goes to /results/report.json, the L2 console to /results/l2-console.txt (and
# L1's console), the VMM's log to /results/vmm-stderr.txt.
run_l2() {
    local w=$1
    shift
    # L2_DEFAULT_CMDLINE=1: no --cmdline, so the VMM's default command line
    # boots the stock kernel (and /init runs its default workload, boot).
    # nokaslr: the RIPs in L1's trace (l1_trace_end) are then the kernel's
    # own addresses, which the harness names from the package's System.map.
    local cmdline="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux loglevel=4 nokaslr rsrc.workload=$w${L2_CMDLINE_EXTRA:+ $L2_CMDLINE_EXTRA}"
    [ "${L2_DEFAULT_CMDLINE:-0}" = 1 ] && cmdline=
    L2_CMDLINE_USED=${cmdline:-the VMM default}
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
    l1_trace_begin
    { timeout -s INT "$VMM_TIMEOUT" /bin/resourceful run --kernel /l2/vmlinuz --initrd /l2/initramfs \
        --mem-mib "$L2_MEM" --vcpus "$L2_VCPUS" --report-json /results/report.json \
        ${cmdline:+--cmdline "$cmdline"} "$@" 2>/results/vmm-stderr.txt
      echo $? > /tmp/vmm.rc; } | tee /results/l2-console.txt
    kill $watcher 2>/dev/null
    l1_trace_end
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
