# Tagging: L2's agent loads its eBPF slot tagger and registers the slot
# pages over vsock; two cgroups' processes each make a known number of MMIO
# exits (images/linux/guest/workloads/tagging), charged to their containers;
# a third writes to the disk, a fourth sends UDP datagrams.
dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
# A TAP in L1 (172.16.0.1/24) with a UDP sink on port 9000 for rsrc-udp.
tunctl -t rsrc0 > /dev/null
ip addr add 172.16.0.1/24 dev rsrc0
ip link set rsrc0 up
timeout 280 nc -u -l -p 9000 > /dev/null 2>&1 &
run_l2 tagging --vsock cid=3 --disk /tmp/disk.img --net tap=rsrc0
