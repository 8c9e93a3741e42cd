// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//
// Tags each CPU's Resourceful tag slot with the principal of the task that
// runs on it (docs/tag-abi.md, "Slots registered by the agent").
//
// At every context switch, `tp_btf/sched_switch` looks up the tag of the
// task being switched in (`next`; at this tracepoint `current` is still the
// previous task), in this order:
//   1. its thread's request binding (`thread_tags`, by thread id);
//   2. its cgroup v2's container (`cgroup_tags`, by cgroup id, which is the
//      inode number of the cgroup's directory);
//   3. its process's container (`process_tags`, by thread-group id);
//   4. else 0, `unattributed`.
// and stores it in `slots[cpu]`, a BPF_F_MMAPABLE array whose pages the
// agent registers with the VMM as guest-physical pages: the hypervisor reads
// the slot at each exit of that vCPU.
//
// Self-contained: no kernel or libbpf headers. The kernel structures are
// declared with only the fields used, `preserve_access_index` makes libbpf
// relocate their offsets against the running kernel's BTF (CO-RE), and the
// loads are direct BTF dereferences (cheaper than probe-read helpers).

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

// include/uapi/linux/bpf.h
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_ARRAY_OF_MAPS 12
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_MMAPABLE (1U << 10)
#define BPF_EXIST 2

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

// The block layer, as far as a request's cgroup: the blkcg of the bio's
// blkg is the cgroup that submitted it (or its nearest ancestor with the io
// controller enabled).
struct cgroup_subsys_state {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct blkcg {
	struct cgroup_subsys_state css;
} __attribute__((preserve_access_index));

struct blkcg_gq {
	struct blkcg *blkcg;
} __attribute__((preserve_access_index));

struct bio {
	struct blkcg_gq *bi_blkg;
} __attribute__((preserve_access_index));

struct request {
	struct bio *bio;
} __attribute__((preserve_access_index));

struct blk_mq_queue_data {
	struct request *rq;
} __attribute__((preserve_access_index));

// One slot: a cache line, the tag in its first 8 bytes, then the switch log
// (accounting::abi::TagSlot; docs/tag-abi.md, "The switch log"): a sequence
// and the last three switches, stamped with the guest's CLOCK_MONOTONIC
// (bpf_ktime_get_ns; the agent's clock_sync tells the VMM how it maps to
// the TSC).
struct log_entry {
	__u64 stamp;
	__u64 tag;
};

struct slot {
	__u64 tag;
	__u64 log_seq;
	struct log_entry log[3];
};

static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;

// Switches the slot to `tag` and logs it, as the tag ABI asks: the sequence
// odd (a locked add: visible before the time stamp is read, which the
// kernel's clock reads after an lfence), the entry, the tag, then the
// sequence even (volatile stores: emitted in this order, and x86 keeps
// stores in order).
static __attribute__((always_inline)) void switch_slot(struct slot *s, __u64 tag)
{
	__u64 n = s->log_seq & ~1ULL;
	__u64 i = (n / 2) % 3;
	// Hides the bound from the compiler, so the check below is kept: the
	// verifier does not bound the result of a modulo by itself.
	asm volatile("" : "+r"(i));
	if (i > 2)
		return;
	__sync_fetch_and_add(&s->log_seq, 1);
	struct log_entry *e = &s->log[i];
	*(volatile __u64 *)&e->stamp = bpf_ktime_get_ns();
	*(volatile __u64 *)&e->tag = tag;
	*(volatile __u64 *)&s->tag = tag;
	*(volatile __u64 *)&s->log_seq = n + 2;
}

// The loader sets max_entries to the guest's possible CPUs, rounded up to
// a page of slots (64); at most MAX_SLOTS.
#define MAX_SLOTS 1024

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct slot);
	__uint(max_entries, 64);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 65536);
} thread_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 4096);
} cgroup_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 65536);
} process_tags SEC(".maps");

// Rebind pages (docs/tagging.md, "Rebind pages"): a client of the agent
// holds one or more one-page BPF_F_MMAPABLE arrays of its own (one u64 word
// per thread index) and a thread rebinds by storing a request id in its
// word. The agent puts each page in `rebind_pages` and each registered
// thread in `rebind_threads` (tid -> page, index, the container the agent
// fixed for the page): the tag is (that container, the stored request), so
// a client names requests of that container only.
#define REBIND_SLOTS 512
#define MAX_REBIND_PAGES 256

struct rebind_page {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, REBIND_SLOTS);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, MAX_REBIND_PAGES);
	__array(values, struct rebind_page);
} rebind_pages SEC(".maps");

struct rebind_thread {
	__u32 page;
	__u32 index;
	// tag(container, 0)
	__u64 container;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct rebind_thread);
	__uint(max_entries, 65536);
} rebind_threads SEC(".maps");

// Cleared by the loader where the kernel refuses the rebind maps: the
// verifier then drops the lookups below as dead code.
const volatile __u32 rebind_on = 1;

// The tag of a thread registered in a rebind page, or 0 (a tag always
// names a container, never 0, for such a thread).
static __attribute__((always_inline)) __u64 rebind_tag(__u32 tid)
{
	if (!rebind_on)
		return 0;
	struct rebind_thread *rt = bpf_map_lookup_elem(&rebind_threads, &tid);
	if (!rt)
		return 0;
	__u32 page = rt->page;
	__u32 index = rt->index;
	__u64 container = rt->container;
	void *words = bpf_map_lookup_elem(&rebind_pages, &page);
	if (!words)
		return container;
	__u64 *w = bpf_map_lookup_elem(words, &index);
	if (!w)
		return container;
	__u64 request = *w;
	// A word over 32 bits names no request: the container alone.
	if (request >> 32)
		return container;
	return container | request;
}

static __attribute__((always_inline)) __u64 tag_of(struct task_struct *t)
{
	__u32 tid = t->pid;
	__u64 rt = rebind_tag(tid);
	if (rt)
		return rt;
	__u64 *v = bpf_map_lookup_elem(&thread_tags, &tid);
	if (v)
		return *v;
	// Each pointer may be NULL; a BTF load through NULL reads 0.
	__u64 cgroup = t->cgroups->dfl_cgrp->kn->id;
	v = bpf_map_lookup_elem(&cgroup_tags, &cgroup);
	if (v)
		return *v;
	__u32 tgid = t->tgid;
	v = bpf_map_lookup_elem(&process_tags, &tgid);
	if (v)
		return *v;
	return 0;
}

// sched_switch(bool preempt, struct task_struct *prev,
//              struct task_struct *next, unsigned int prev_state)
SEC("tp_btf/sched_switch")
int on_switch(__u64 *ctx)
{
	struct task_struct *next = (struct task_struct *)ctx[2];
	__u32 cpu = bpf_get_smp_processor_id();
	if (cpu >= MAX_SLOTS)
		return 0;
	struct slot *s = bpf_map_lookup_elem(&slots, &cpu);
	if (!s)
		return 0;
	__u64 tag = tag_of(next);
	// A store only on a change: the slot's cache line stays clean (and
	// shared with the hypervisor's reads) while one principal runs.
	if (s->tag != tag)
		switch_slot(s, tag);
	return 0;
}

// GPL-compatible, as tracing programs must be (the file is dual-licensed).
static __attribute__((always_inline)) struct slot *this_cpu_slot(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	if (cpu >= MAX_SLOTS)
		return 0;
	return bpf_map_lookup_elem(&slots, &cpu);
}

// virtio-blk hands a request to the device in virtio_queue_rq, often on a
// kernel worker (blk-mq dispatches plugged requests from kblockd), which is
// no container's. For the length of the call the slot names the container
// of the cgroup that submitted the request, so the queue notification (the
// exit that charges the device work) is charged to it. Loaded only when the
// virtio_blk module's BTF is there.
SEC("fentry/virtio_queue_rq")
int on_queue_rq(__u64 *ctx)
{
	struct blk_mq_queue_data *bd = (struct blk_mq_queue_data *)ctx[1];
	__u64 cgroup = bd->rq->bio->bi_blkg->blkcg->css.cgroup->kn->id;
	__u64 *v = bpf_map_lookup_elem(&cgroup_tags, &cgroup);
	struct slot *s = this_cpu_slot();
	if (!v || !s)
		return 0;
	if (s->tag != *v)
		switch_slot(s, *v);
	return 0;
}

// ... and back to the running task's principal after it.
SEC("fexit/virtio_queue_rq")
int on_queue_rq_exit(__u64 *ctx)
{
	struct slot *s = this_cpu_slot();
	if (!s)
		return 0;
	__u64 tag = tag_of(bpf_get_current_task_btf());
	if (s->tag != tag)
		switch_slot(s, tag);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
