# Boot L2 to /init with the VMM's default kernel command line (no --cmdline:
# a stock kernel must find its devices and CPUs without tokens; /init runs its
# default workload, boot, which prints the CPUs and virtio devices it sees),
# then L2 powers off. The VM has one device of each kind: a disk, a TAP and
# vsock. With $RSRC_LINUX_L2_CMDLINE set the harness's command line is used.
[ -z "$L2_CMDLINE_EXTRA" ] && L2_DEFAULT_CMDLINE=1
dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
tunctl -t rsrc0 > /dev/null
ip link set rsrc0 up
run_l2 boot --disk /tmp/disk.img --net tap=rsrc0 --vsock cid=3
