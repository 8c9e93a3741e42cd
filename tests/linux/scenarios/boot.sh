# Boot L2 to /init; the workload prints the CPUs it sees, then L2 powers off.
run_l2 boot
