# Tagging: L2's agent loads its eBPF slot tagger and registers the slot
# pages over vsock; two cgroups' processes each make a known number of MMIO
# exits (images/linux/guest/workloads/tagging), charged to their containers;
# a third writes to the disk.
dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
run_l2 tagging --vsock cid=3 --disk /tmp/disk.img
