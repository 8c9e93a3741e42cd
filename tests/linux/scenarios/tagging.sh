# Tagging: L2's agent loads its eBPF slot tagger and registers the slot
# pages over vsock; two cgroups' processes each make a known number of MMIO
# exits (images/linux/guest/workloads/tagging), charged to their containers.
run_l2 tagging --vsock cid=3
