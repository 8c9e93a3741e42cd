/* rsrc-mmio: known MMIO exits from a Linux guest's user space, for the
 * emulated Linux suite (tests/linux, workload `tagging`).
 *
 *   rsrc-mmio N
 *       N 4-byte writes to the accounting device's scratch register
 *       (REG_SCRATCH at 0xd0000040, docs/tag-abi.md) through /dev/mem:
 *       exactly N mmio_write exits, charged to whoever the vCPU's slot
 *       names while this process runs.
 *   rsrc-mmio serve CONTAINER WORKERS N
 *       A server: WORKERS threads at once, worker i (from 0) begins a
 *       request in CONTAINER over the agent's local socket with external id
 *       i + 1 and trace id 000...0(i+1), binds its own thread to it
 *       (work_for), makes N * (i + 1) writes, and ends it. Prints one line
 *       per request: "request ID external I writes W".
 *   rsrc-mmio spin CONTAINER WORKERS MS
 *       As serve, but worker i (trace id 000...01(i+1), hex 0x11 + i) spins
 *       for MS * (i + 1) ms of its own CPU time (CLOCK_THREAD_CPUTIME_ID)
 *       with no exit, all workers at once on the guest's CPUs, so their
 *       requests take turns on a vCPU. Prints "request ID external I
 *       cpu_ns C": the thread's CPU time between its binding and its end,
 *       the run time the VMM's switch log should charge the request.
 *   rsrc-mmio udp IPV4 PORT N SIZE
 *       N UDP datagrams of SIZE bytes to IPV4:PORT from one socket, one
 *       sendto each (a frame each: SIZE stays under the MTU). No MMIO.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define ACCT_MMIO_BASE 0xd0000000UL
#define REG_SCRATCH 0x40
#define AGENT_SOCKET "/run/resourceful-agent.sock"
#define MAX_WORKERS 16

static volatile uint32_t *scratch;

static void writes(long n)
{
	for (long i = 0; i < n; i++)
		scratch[REG_SCRATCH / 4] = (uint32_t)i;
}

/* One request line to the agent, one reply line back into `reply`. */
static int call(int fd, const char *line, char *reply, size_t cap)
{
	size_t len = strlen(line), got = 0;
	if (write(fd, line, len) != (ssize_t)len)
		return -1;
	while (got + 1 < cap) {
		ssize_t r = read(fd, reply + got, 1);
		if (r <= 0)
			return -1;
		if (reply[got++] == '\n')
			break;
	}
	reply[got] = 0;
	return strstr(reply, "\"ok\":true") ? 0 : -1;
}

struct worker {
	const char *container;
	int index;
	long n;
	int spin;
	unsigned long request;
	long cpu_ns;
	int rc;
};

static long thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	char line[512], reply[512];
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strncpy(a.sun_path, AGENT_SOCKET, sizeof a.sun_path - 1);
	w->rc = 1;
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("rsrc-mmio: " AGENT_SOCKET);
		return NULL;
	}
	snprintf(line, sizeof line,
		 "{\"op\":\"begin\",\"container\":\"%s\",\"external_id\":%d,"
		 "\"trace_id\":\"%032x\"}\n",
		 w->container, w->index + 1, w->spin ? 0x11 + w->index : w->index + 1);
	if (call(fd, line, reply, sizeof reply) < 0) {
		fprintf(stderr, "rsrc-mmio: begin: %s", reply);
		return NULL;
	}
	char *p = strstr(reply, "\"request\":");
	w->request = p ? strtoul(p + 10, NULL, 10) : 0;
	snprintf(line, sizeof line, "{\"op\":\"work_for\",\"request\":%lu,\"tid\":%d}\n",
		 w->request, gettid());
	if (call(fd, line, reply, sizeof reply) < 0) {
		fprintf(stderr, "rsrc-mmio: work_for: %s", reply);
		return NULL;
	}
	/* The binding holds from this thread's next switch-in: reading the
	 * reply blocked it, so it has been switched in again since. */
	long t0 = thread_cpu_ns();
	if (w->spin) {
		while (thread_cpu_ns() - t0 < w->n * 1000000L)
			;
	} else {
		writes(w->n);
	}
	w->cpu_ns = thread_cpu_ns() - t0;
	snprintf(line, sizeof line, "{\"op\":\"end\",\"request\":%lu}\n", w->request);
	if (call(fd, line, reply, sizeof reply) < 0) {
		fprintf(stderr, "rsrc-mmio: end: %s", reply);
		return NULL;
	}
	close(fd);
	w->rc = 0;
	return NULL;
}

static int udp(const char *ip, int port, long n, int size)
{
	char buf[1400];
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || inet_pton(AF_INET, ip, &to.sin_addr) != 1 || size < 1 || size > (int)sizeof buf) {
		fprintf(stderr, "rsrc-mmio: udp: bad socket, address or size\n");
		return 1;
	}
	memset(buf, 'u', sizeof buf);
	for (long i = 0; i < n; i++) {
		if (sendto(fd, buf, size, 0, (struct sockaddr *)&to, sizeof to) != size) {
			perror("rsrc-mmio: sendto");
			return 1;
		}
	}
	printf("RSRC-L2: udp %ld datagrams of %d bytes sent\n", n, size);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "udp") == 0)
		return udp(argv[2], atoi(argv[3]), strtol(argv[4], NULL, 10), atoi(argv[5]));
	int spin = argc == 5 && strcmp(argv[1], "spin") == 0;
	int serve = spin || (argc == 5 && strcmp(argv[1], "serve") == 0);
	if (argc != 2 && !serve) {
		fprintf(stderr, "usage: rsrc-mmio N | rsrc-mmio serve|spin CONTAINER WORKERS N | rsrc-mmio udp IPV4 PORT N SIZE\n");
		return 2;
	}
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0) {
		perror("rsrc-mmio: /dev/mem");
		return 1;
	}
	scratch = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, ACCT_MMIO_BASE);
	if (scratch == MAP_FAILED) {
		perror("rsrc-mmio: mmap of the accounting device");
		return 1;
	}
	if (!serve) {
		long n = strtol(argv[1], NULL, 10);
		writes(n);
		printf("rsrc-mmio: %ld writes\n", n);
		return 0;
	}
	int workers = atoi(argv[3]);
	long n = strtol(argv[4], NULL, 10);
	if (workers < 1 || workers > MAX_WORKERS) {
		fprintf(stderr, "rsrc-mmio: 1..%d workers\n", MAX_WORKERS);
		return 2;
	}
	struct worker w[MAX_WORKERS];
	pthread_t t[MAX_WORKERS];
	for (int i = 0; i < workers; i++) {
		w[i] = (struct worker){ .container = argv[2], .index = i, .n = n * (i + 1), .spin = spin };
		pthread_create(&t[i], NULL, work, &w[i]);
	}
	int rc = 0;
	for (int i = 0; i < workers; i++) {
		pthread_join(t[i], NULL);
		rc |= w[i].rc;
		if (spin)
			printf("RSRC-L2: request %lu external %d cpu_ns %ld\n", w[i].request, i + 1, w[i].cpu_ns);
		else
			printf("RSRC-L2: request %lu external %d writes %ld\n", w[i].request, i + 1, w[i].n);
	}
	return rc;
}
