# A 64 MiB disk file: zeros, and at 56 MiB 128 KiB of a known pattern that the
# workload reads back (16 blocks of 4 KiB, every other one).
dd if=/dev/zero of=/tmp/disk.img bs=1M count=64 2>/dev/null
yes RSRC-READ-PATTERN | head -c 131072 | dd of=/tmp/disk.img bs=4096 seek=14336 conv=notrunc 2>/dev/null
: > /tmp/expect
n=0
while [ $n -lt 16 ]; do
    dd if=/tmp/disk.img bs=4096 count=1 skip=$((14336 + 2 * n)) 2>/dev/null >> /tmp/expect
    n=$((n + 1))
done
echo "expect-read-md5 $(md5sum < /tmp/expect | cut -d' ' -f1)" > /results/l1.txt
run_l2 block --disk /tmp/disk.img
# What L2 left on the disk: the direct writes at 48 MiB and the file's bytes.
echo "written-md5 $(dd if=/tmp/disk.img bs=65536 skip=768 count=8 2>/dev/null | md5sum | cut -d' ' -f1)" >> /results/l1.txt
echo "expect-written-md5 $(yes RSRC-BLOCK-PATTERN | head -c 524288 | md5sum | cut -d' ' -f1)" >> /results/l1.txt
echo "file-pattern-hits $(grep -a -o RSRC-FILE-CONTENT /tmp/disk.img | wc -l)" >> /results/l1.txt
echo "ext2-magic $(dd if=/tmp/disk.img bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' ')" >> /results/l1.txt
