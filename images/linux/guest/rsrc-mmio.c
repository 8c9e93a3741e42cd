/* rsrc-mmio N: N 4-byte writes to the accounting device's scratch register
 * (REG_SCRATCH at 0xd0000040, docs/tag-abi.md) through /dev/mem: exactly N
 * mmio_write exits, charged to whoever the vCPU's slot names while this
 * process runs. The Linux tagging scenario runs it in a cgroup per
 * container (images/linux/guest/workloads/tagging). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define ACCT_MMIO_BASE 0xd0000000UL
#define REG_SCRATCH 0x40

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: rsrc-mmio N\n");
		return 2;
	}
	long n = strtol(argv[1], NULL, 10);
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0) {
		perror("rsrc-mmio: /dev/mem");
		return 1;
	}
	volatile uint32_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, ACCT_MMIO_BASE);
	if (p == MAP_FAILED) {
		perror("rsrc-mmio: mmap of the accounting device");
		return 1;
	}
	for (long i = 0; i < n; i++)
		p[REG_SCRATCH / 4] = (uint32_t)i;
	printf("rsrc-mmio: %ld writes\n", n);
	return 0;
}
