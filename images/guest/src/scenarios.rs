//! The scenarios, chosen with `scenario=NAME` on the command line.
//!
//! Every exit below is one call of an `io` helper, so the exact charges per
//! principal can be read off the code; docs/guest-scenarios.md lists them.
//! Printing happens only on vCPU 0 while its slot holds tag 0, with fixed
//! strings and fixed-width numbers, so every printed byte is one
//! `unattributed` `port_out` exit whose count never varies.

use crate::acct::{self, Decl};
use crate::blk::{self, Blk};
use crate::frame::{self, Ends};
use crate::io::{self, mmio_read_work, mmio_write_work, port_work, print, print_dec10};
use crate::net::Net;
use crate::virtio::UsedError;
use crate::vsock::{self, Vsock};
use crate::{arg, finish, parse_u64, release_others, virtio, wait_others, Boot};
use accounting::abi::{self, tag, EntryKind, Status};

/// The scenarios. The discriminant is only used to hand the scenario to the
/// other vCPUs.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Scenario {
    Basic = 1,
    Multi = 2,
    Demo = 3,
    Spin = 4,
    GarbageRing = 5,
    BadRegister = 6,
    ContainerFlood = 7,
    RequestFlood = 8,
    TripleFault = 9,
    ExitCode = 10,
    Blk = 11,
    BlkTagged = 12,
    Net = 13,
    Vsock = 14,
    Agent = 15,
    BlkBadHead = 16,
    RequestChurn = 17,
    AcctStraddle = 18,
    SlotTiming = 19,
    Exits = 20,
    AgentSlots = 21,
    XvmClient = 22,
    XvmServer = 23,
    RunLog = 24,
    BlkMix = 25,
    Blk2 = 26,
    FloodEcho = 27,
    CpuCap = 28,
}

const ALL: [(Scenario, &[u8]); 28] = [
    (Scenario::Basic, b"basic"),
    (Scenario::Multi, b"multi"),
    (Scenario::Demo, b"demo"),
    (Scenario::Spin, b"spin"),
    (Scenario::GarbageRing, b"garbage-ring"),
    (Scenario::BadRegister, b"bad-register"),
    (Scenario::ContainerFlood, b"container-flood"),
    (Scenario::RequestFlood, b"request-flood"),
    (Scenario::TripleFault, b"triple-fault"),
    (Scenario::ExitCode, b"exit-code"),
    (Scenario::Blk, b"blk"),
    (Scenario::BlkTagged, b"blk-tagged"),
    (Scenario::Net, b"net"),
    (Scenario::Vsock, b"vsock"),
    (Scenario::Agent, b"agent"),
    (Scenario::BlkBadHead, b"blk-bad-head"),
    (Scenario::RequestChurn, b"request-churn"),
    (Scenario::AcctStraddle, b"acct-straddle"),
    (Scenario::SlotTiming, b"slot-timing"),
    (Scenario::Exits, b"exits"),
    (Scenario::AgentSlots, b"agent-slots"),
    (Scenario::XvmClient, b"xvm-client"),
    (Scenario::XvmServer, b"xvm-server"),
    (Scenario::RunLog, b"run-log"),
    (Scenario::BlkMix, b"blk-mix"),
    (Scenario::Blk2, b"blk2"),
    (Scenario::FloodEcho, b"flood-echo"),
    (Scenario::CpuCap, b"cpucap"),
];

impl Scenario {
    pub fn from_name(name: &[u8]) -> Option<Self> {
        ALL.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        ALL.iter().find(|(s, _)| *s as u32 == v).map(|(s, _)| *s)
    }
}

/// vCPU 0: runs scenario `s` to its end.
pub fn run(b: &Boot, s: Scenario) -> ! {
    match s {
        Scenario::Basic => basic(b),
        Scenario::Multi => multi(b),
        Scenario::Demo => demo(b),
        Scenario::Spin => spin(b),
        Scenario::GarbageRing => garbage_ring(b),
        Scenario::BadRegister => bad_register(b),
        Scenario::ContainerFlood => container_flood(b),
        Scenario::RequestFlood => request_flood(b),
        Scenario::TripleFault => triple_fault(b),
        Scenario::ExitCode => finish(b, 7),
        Scenario::Blk => blk(b),
        Scenario::BlkTagged => blk_tagged(b),
        Scenario::Net => net(b),
        Scenario::Vsock => vsock_scenario(b),
        Scenario::Agent => crate::agent::scenario(b),
        Scenario::BlkBadHead => blk_bad_head(b),
        Scenario::RequestChurn => request_churn(b),
        Scenario::AcctStraddle => acct_straddle(b),
        Scenario::SlotTiming => slot_timing(b),
        Scenario::Exits => exits(b),
        Scenario::AgentSlots => crate::agent_slots::scenario(b),
        Scenario::XvmClient => crate::xvm::client(b),
        Scenario::XvmServer => crate::xvm::server(b),
        Scenario::RunLog => run_log(b),
        Scenario::BlkMix => crate::blk_mix::scenario(b),
        Scenario::Blk2 => blk2(b),
        Scenario::FloodEcho => crate::flood_echo::scenario(b),
        Scenario::CpuCap => cpucap(b),
    }
}

/// vCPUs other than 0: their part of scenario `s` (nothing for most).
pub fn secondary(b: &Boot, s: Scenario) {
    match s {
        Scenario::Multi => multi_part(b),
        Scenario::Demo => demo_part(b),
        Scenario::Spin => spin_part(b),
        Scenario::Exits => exits_part(b),
        Scenario::CpuCap => cpucap_part(b),
        _ => {}
    }
}

fn declare(id: u32, parent: u32, name: &[u8]) {
    acct::declare_container(id, parent, name);
}

/// One request: begin it, switch to it, run `work`, switch to tag 0, end it.
/// Only `work` exits.
fn request(b: &Boot, container: u32, id: u32, arg64: u64, work: impl FnOnce()) {
    acct::begin_request(id, container, arg64);
    acct::set_tag(b.vcpu, tag(container, id));
    work();
    acct::set_tag(b.vcpu, 0);
    acct::end_request(id);
}

/// Work charged to `container` with no request.
fn in_container(b: &Boot, container: u32, work: impl FnOnce()) {
    acct::set_tag(b.vcpu, tag(container, abi::NO_REQUEST));
    work();
    acct::set_tag(b.vcpu, 0);
}

// ---------------------------------------------------------------------------
// basic (1 vCPU)
// ---------------------------------------------------------------------------

const BASIC_WEB: u32 = 1;
const BASIC_BATCH: u32 = 2;

fn basic(b: &Boot) -> ! {
    print("basic: start\n");
    acct::register();
    declare(BASIC_WEB, 0, b"web");
    declare(BASIC_BATCH, 0, b"batch");
    for id in 1..=10 {
        request(b, BASIC_WEB, id, 0, || port_work(10));
    }
    in_container(b, BASIC_BATCH, || mmio_write_work(250));
    print("basic: done\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// multi (2 vCPUs)
// ---------------------------------------------------------------------------

const MULTI_WEB: u32 = 1;
const MULTI_BATCH: u32 = 2;
const MULTI_API: u32 = 3;

fn multi(b: &Boot) -> ! {
    if b.nr_vcpus < 2 {
        print("multi: needs 2 vcpus\n");
        finish(b, 2);
    }
    print("multi: start\n");
    acct::register();
    declare(MULTI_WEB, 0, b"web");
    declare(MULTI_BATCH, 0, b"batch");
    declare(MULTI_API, MULTI_WEB, b"api");
    release_others(Scenario::Multi);
    multi_part(b);
    wait_others(b);
    print("multi: done\n");
    finish(b, 0)
}

/// vCPUs 0 and 1 (others do nothing): 3 rounds of { 5 requests in `web`
/// with 7 port writes each; 40 MMIO writes in `batch`; 3 MMIO reads in
/// `api` }. Request ids: 100*v + 5*round + k, k = 1..=5.
fn multi_part(b: &Boot) {
    if b.vcpu >= 2 {
        return;
    }
    for round in 0..3 {
        for k in 1..=5 {
            let id = 100 * b.vcpu + 5 * round + k;
            request(b, MULTI_WEB, id, 0, || port_work(7));
        }
        in_container(b, MULTI_BATCH, || mmio_write_work(40));
        in_container(b, MULTI_API, || mmio_read_work(3));
    }
}

// ---------------------------------------------------------------------------
// demo (any number of vCPUs; totals do not depend on it)
// ---------------------------------------------------------------------------

const DEMO_FRONTEND: u32 = 1;
const DEMO_API: u32 = 2;
const DEMO_DB: u32 = 3;
const DEMO_BATCH: u32 = 4;
const DEMO_REQUESTS: u32 = 200;

fn demo(b: &Boot) -> ! {
    print("demo: start\n");
    acct::register();
    declare(DEMO_FRONTEND, 0, b"frontend");
    declare(DEMO_API, DEMO_FRONTEND, b"api");
    declare(DEMO_DB, 0, b"db");
    declare(DEMO_BATCH, 0, b"batch");
    release_others(Scenario::Demo);
    demo_part(b);
    wait_others(b);
    print("demo: done\n");
    finish(b, 0)
}

/// Container of demo request `i`.
fn demo_container(i: u32) -> u32 {
    if i % 5 == 0 {
        DEMO_DB
    } else if i % 2 == 0 {
        DEMO_API
    } else {
        DEMO_FRONTEND
    }
}

/// vCPU v serves requests i = v+1, v+1+n, v+1+2n, ... (n = vCPU count).
/// Request i: (i % 7 + 1) * 3 port writes, i % 4 MMIO writes, and 2 MMIO
/// reads if it is a `db` request. After request i, if i % 10 == 0: 20 MMIO
/// writes in `batch` (no request); if i % 25 == 0: 5 port writes in
/// `frontend` (no request).
///
/// With `loop=1` on the command line (`resourceful demo --duration`), every
/// vCPU repeats its part in rounds until the VMM ends the VM; round r's
/// request ids are i + 200 r.
fn demo_part(b: &Boot) {
    if arg(b.cmdline, b"loop=") == Some(&b"1"[..]) {
        let mut round: u32 = 0;
        loop {
            demo_round(b, round);
            round = round.wrapping_add(1);
        }
    }
    demo_round(b, 0);
}

fn demo_round(b: &Boot, round: u32) {
    let n = b.nr_vcpus;
    let base = round.wrapping_mul(DEMO_REQUESTS);
    let mut i = b.vcpu + 1;
    while i <= DEMO_REQUESTS {
        let c = demo_container(i);
        // Id 0 is not a request; it comes round once in 21 million rounds.
        let id = base.wrapping_add(i).max(1);
        request(b, c, id, 0xde00_0000 + u64::from(id), || {
            port_work((i % 7 + 1) * 3);
            mmio_write_work(i % 4);
            if c == DEMO_DB {
                mmio_read_work(2);
            }
        });
        if i % 10 == 0 {
            in_container(b, DEMO_BATCH, || mmio_write_work(20));
        }
        if i % 25 == 0 {
            in_container(b, DEMO_FRONTEND, || port_work(5));
        }
        i += n;
    }
}

// ---------------------------------------------------------------------------
// spin (any number of vCPUs): guest run time, no exits in the loops
// ---------------------------------------------------------------------------

const SPIN_A: u32 = 1;
const SPIN_B: u32 = 2;
/// Default iterations of the long loop (`spin_iters=N` overrides); the short
/// loop runs a quarter of that.
const SPIN_ITERS: u64 = 200_000_000;

fn spin(b: &Boot) -> ! {
    acct::register();
    declare(SPIN_A, 0, b"cpu-a");
    declare(SPIN_B, 0, b"cpu-b");
    // This print's first exit drains the declarations before any loop runs.
    print("spin: start\n");
    release_others(Scenario::Spin);
    spin_part(b);
    wait_others(b);
    print("spin: done\n");
    finish(b, 0)
}

fn spin_iters(b: &Boot) -> u64 {
    arg(b.cmdline, b"spin_iters=")
        .and_then(parse_u64)
        .unwrap_or(SPIN_ITERS)
}

/// Pure arithmetic, no memory traffic, no exits.
#[inline(never)]
fn burn(iters: u64) -> u64 {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..iters {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // SAFETY: an empty asm block; it only hides `x` from the optimizer
        // so the loop is not folded.
        unsafe { core::arch::asm!("/* {0} */", inout(reg) x, options(nomem, nostack, preserves_flags)) };
    }
    x
}

/// Even vCPUs: long loop in `cpu-a`, then short loop in `cpu-b`; odd vCPUs
/// the other way round.
fn spin_part(b: &Boot) {
    let (first, second) = if b.vcpu % 2 == 0 {
        (SPIN_A, SPIN_B)
    } else {
        (SPIN_B, SPIN_A)
    };
    let iters = spin_iters(b);
    acct::set_tag(b.vcpu, tag(first, 0));
    core::hint::black_box(burn(iters));
    acct::set_tag(b.vcpu, tag(second, 0));
    core::hint::black_box(burn(iters / 4));
    acct::set_tag(b.vcpu, 0);
}

/// Port writes per vCPU of `exits` unless `exits=N` says otherwise.
const EXITS_PER_VCPU: u64 = 100_000;

/// `exits` (any number of vCPUs): every vCPU makes `exits=N` port writes
/// (default 100,000) with its slot at `cpu-a` (even vCPUs) or `cpu-b` (odd):
/// the workload of the exit-path scaling benchmark.
fn exits(b: &Boot) -> ! {
    acct::register();
    declare(SPIN_A, 0, b"cpu-a");
    declare(SPIN_B, 0, b"cpu-b");
    print("exits: start\n");
    release_others(Scenario::Exits);
    exits_part(b);
    wait_others(b);
    print("exits: done\n");
    finish(b, 0)
}

fn exits_part(b: &Boot) {
    let n = arg(b.cmdline, b"exits=")
        .and_then(parse_u64)
        .unwrap_or(EXITS_PER_VCPU);
    let mine = if b.vcpu % 2 == 0 { SPIN_A } else { SPIN_B };
    acct::set_tag(b.vcpu, tag(mine, 0));
    for _ in 0..n / 1_000_000 {
        port_work(1_000_000);
    }
    port_work((n % 1_000_000) as u32);
    acct::set_tag(b.vcpu, 0);
}

// ---------------------------------------------------------------------------
// garbage-ring: malformed declarations
// ---------------------------------------------------------------------------

const GR_GOOD: u32 = 1;
/// A container id that is never declared.
const GR_UNDECLARED: u32 = 4242;
/// A request id that is never begun.
const GR_NEVER_BEGUN: u32 = 777;

fn garbage_ring(b: &Boot) -> ! {
    const DECL: u16 = EntryKind::DeclareContainer as u16;
    const RETIRE: u16 = EntryKind::RetireContainer as u16;
    const BEGIN: u16 = EntryKind::BeginRequest as u16;
    const END: u16 = EntryKind::EndRequest as u16;

    print("garbage-ring: start\n");
    acct::register();
    declare(GR_GOOD, 0, b"good");
    in_container(b, GR_GOOD, || port_work(5));

    // Twelve malformed entries (each must be rejected) ...
    acct::push(&Decl::new(99, 50, 0)); // 1. unknown kind
    acct::push(&Decl::new(DECL, 2, 0).named(b"")); // 2. empty name
    acct::push(&Decl::new(DECL, 3, 0).named(&[0xff, b'x'])); // 3. invalid name bytes
    acct::push(&Decl::new(DECL, 4, 0).named(&[b'a'; 40])); // 4. name_len 40 > 32
    acct::push(&Decl::new(DECL, 0, 0).named(b"zero")); // 5. container id 0
    acct::push(&Decl::new(DECL, GR_GOOD, 0).named(b"dup")); // 6. duplicate id
    acct::push(&Decl::new(DECL, 6, 999).named(b"orphan")); // 7. undeclared parent
    acct::push(&Decl::new(RETIRE, 7, 0)); // 8. retire undeclared container
    acct::push(&Decl::new(BEGIN, 10, 8)); // 9. request in undeclared container
    acct::push(&Decl::new(BEGIN, 0, GR_GOOD)); // 10. request id 0
    acct::push(&Decl::new(END, 11, 0)); // 11. end a request never begun
    acct::begin_request(12, GR_GOOD, 0); // (valid)
    acct::push(&Decl::new(BEGIN, 12, GR_GOOD)); // 12. duplicate begin of live request 12
    acct::end_request(12); // (valid)
                           // ... and one entry whose seq is far in the future (to be skipped).
    acct::push_with_seq(
        &Decl::new(DECL, 9, 0).named(b"future"),
        1000 * u64::from(acct::RING_ENTRIES),
    );

    // The first of these exits drains all of the above.
    in_container(b, GR_UNDECLARED, || port_work(3));
    acct::set_tag(b.vcpu, tag(GR_GOOD, GR_NEVER_BEGUN));
    port_work(2);
    acct::set_tag(b.vcpu, 0);

    print("garbage-ring: rejected=");
    print_dec10(acct::ring_rejected());
    print("\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// bad-register: registrations the VMM must refuse
// ---------------------------------------------------------------------------

const BR_OK: u32 = 1;

fn expect(got: u32, want: Status) {
    if got != want as u32 {
        print("bad-register: unexpected status\n");
        io::exit(3);
    }
}

fn bad_register(b: &Boot) -> ! {
    print("bad-register: start\n");
    let base = acct::region_gpa();
    let len = acct::REGION_LEN;

    // 1. Misaligned: a region at base+8 whose own header is valid (2048 ring
    //    entries, so it fits in `len - 64` bytes); only the alignment is bad.
    acct::write_shifted_header(8, 2048);
    expect(acct::register_at(base + 8, len - 64), Status::Misaligned);
    acct::clear_shifted_header(8);
    acct::init_header();
    // 2. Beyond the end of RAM below the gap.
    let beyond = (b.ram_end + 63) & !63;
    expect(acct::register_at(beyond, len), Status::NotInRam);
    // 3. Inside the MMIO gap (the accounting device itself).
    expect(acct::register_at(abi::ACCT_MMIO_BASE, len), Status::NotInRam);
    // 4. Shorter than the header says.
    expect(acct::register_at(base, len - 64), Status::BadLength);
    // 5. Bad magic.
    acct::edit_header(|h| h.magic = 0);
    expect(acct::register_at(base, len), Status::BadHeader);
    acct::init_header();
    // 6. Version 99.
    acct::edit_header(|h| h.version = 99);
    expect(acct::register_at(base, len), Status::BadHeader);
    acct::init_header();
    // 7. Fewer slots than vCPUs (a guest lying about its vCPU count).
    let fewer = b.nr_vcpus - 1;
    acct::edit_header(|h| h.nr_slots = fewer);
    expect(acct::register_at(base, len), Status::BadGeometry);
    acct::init_header();
    // 8. Ring size not a power of two.
    acct::edit_header(|h| h.ring_entries = 3);
    expect(acct::register_at(base, len), Status::BadGeometry);
    acct::init_header();
    // 9. Unknown command.
    expect(acct::command(7), Status::BadCommand);
    // 10. The real registration.
    acct::register();

    declare(BR_OK, 0, b"ok");
    in_container(b, BR_OK, || port_work(4));
    print("bad-register: done\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// floods: more declarations than the VMM keeps
// ---------------------------------------------------------------------------

const FLOOD_CONTAINERS: u32 = 1_000_000;
const FLOOD_REQUESTS: u32 = 100_000;

/// Writes `prefix` followed by `n` in decimal into `buf`; returns the length.
fn decimal_name(prefix: u8, mut n: u32, buf: &mut [u8; 16]) -> usize {
    let mut digits = [0u8; 10];
    let mut nd = 0;
    loop {
        digits[nd] = b'0' + (n % 10) as u8;
        nd += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[0] = prefix;
    for k in 0..nd {
        buf[1 + k] = digits[nd - 1 - k];
    }
    1 + nd
}

fn print_flood_stats(label: &str, limit: u32) {
    print(label);
    print_dec10(u64::from(limit));
    print(" forced_exits=");
    print_dec10(acct::forced_exits());
    print(" rejected=");
    print_dec10(acct::ring_rejected());
    print("\n");
}

fn container_flood(b: &Boot) -> ! {
    print("container-flood: start\n");
    acct::register();
    let limit = io::mmio_read32(abi::REG_MAX_CONTAINERS);
    let mut buf = [0u8; 16];
    for id in 1..=FLOOD_CONTAINERS {
        let n = decimal_name(b'c', id, &mut buf);
        declare(id, 0, &buf[..n]);
    }
    in_container(b, 1, || port_work(10));
    print_flood_stats("container-flood: max_containers=", limit);
    finish(b, 0)
}

const RF_CONTAINER: u32 = 1;

fn request_flood(b: &Boot) -> ! {
    print("request-flood: start\n");
    acct::register();
    let limit = io::mmio_read32(abi::REG_MAX_LIVE_REQUESTS);
    declare(RF_CONTAINER, 0, b"r");
    for id in 1..=FLOOD_REQUESTS {
        acct::begin_request(id, RF_CONTAINER, 0);
    }
    acct::set_tag(b.vcpu, tag(RF_CONTAINER, 1));
    port_work(3);
    acct::set_tag(b.vcpu, 0);
    print_flood_stats("request-flood: max_live_requests=", limit);
    finish(b, 0)
}

/// Requests of `request-churn` unless `requests=N` says otherwise.
const CHURN_REQUESTS: u64 = 200_000;

/// `request-churn`: begins and ends `requests=N` requests (default
/// 200,000) one after the other in container `r`, each with its sequence
/// number as the guest's 64-bit id; one port write inside every 1,000th,
/// so the finished requests carry charges. The VMM's retention limit
/// decides how many stay in the report. Exit status 0.
fn request_churn(b: &Boot) -> ! {
    print("request-churn: start\n");
    acct::register();
    declare(RF_CONTAINER, 0, b"r");
    let n = arg(b.cmdline, b"requests=")
        .and_then(parse_u64)
        .unwrap_or(CHURN_REQUESTS);
    for i in 0..n {
        // Ids cycle below 2^31 (0 is not an id); ended ids may be reused.
        let id = (i % 0x7fff_fffe) as u32 + 1;
        acct::begin_request(id, RF_CONTAINER, i);
        if i % 1000 == 0 {
            acct::set_tag(b.vcpu, tag(RF_CONTAINER, id));
            port_work(1);
            acct::set_tag(b.vcpu, 0);
        }
        acct::end_request(id);
    }
    print("request-churn: done\n");
    finish(b, 0)
}

/// `acct-straddle`: one 8-byte store and one 8-byte load at offset 0xffc
/// of the accounting device's 4 KiB window, crossing its end into the
/// address after it (the first virtio slot, empty in this VM). Prints
/// `acct-straddle: read all-ones` if the load read 0xff in every byte,
/// else `acct-straddle: read other`, and exits 0.
fn acct_straddle(b: &Boot) -> ! {
    print("acct-straddle: start\n");
    io::mmio_write64(0xffc, 0x1122_3344_5566_7788);
    let v = io::mmio_read64(0xffc);
    print(if v == u64::MAX {
        "acct-straddle: read all-ones\n"
    } else {
        "acct-straddle: read other\n"
    });
    finish(b, 0)
}

const ST_WORKER: u32 = 1;

/// `slot-timing`: shows when the VMM reads the slot. Registers, declares
/// `worker`, sets the slot to `worker`, and writes `Unregister` to
/// REG_COMMAND (one `mmio_write` exit), then reads REG_STATUS (one
/// `mmio_read`) and makes 3 port writes. The slot is read before the exit is
/// handled, so the `Unregister` write is `worker`'s; everything after it is
/// `unattributed` (no region). Exit status 0.
fn slot_timing(b: &Boot) -> ! {
    print("slot-timing: start\n");
    acct::register();
    declare(ST_WORKER, 0, b"worker");
    acct::set_tag(b.vcpu, tag(ST_WORKER, 0));
    let status = acct::command(abi::Command::Unregister as u32);
    port_work(3);
    print(if status == abi::Status::Ok as u32 {
        "slot-timing: done\n"
    } else {
        "slot-timing: unregister failed\n"
    });
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// triple-fault
// ---------------------------------------------------------------------------

const TF_DOOMED: u32 = 1;

fn triple_fault(b: &Boot) -> ! {
    print("triple-fault: start\n");
    acct::register();
    declare(TF_DOOMED, 0, b"doomed");
    acct::set_tag(b.vcpu, tag(TF_DOOMED, 0));
    port_work(2);
    // No IDT: #UD escalates to a triple fault, charged to `doomed`.
    // SAFETY: deliberately ends the VM.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

// ---------------------------------------------------------------------------
// blk: a virtio-blk device, requests charged by the notifying principal
// ---------------------------------------------------------------------------

const BLK_WRITER: u32 = 1;
const BLK_READER: u32 = 2;
const BLK_FLUSHER: u32 = 3;
/// Sectors (of 512 bytes) per read/write request.
const BLK_SECTORS: u64 = 8;
/// Data bytes per read/write request.
const BLK_BYTES: u32 = 4096;
/// The disk must hold sectors 8..40 (requests at 8·k, k = 1..=4).
const BLK_MIN_SECTORS: u64 = 5 * BLK_SECTORS;

/// Sets the slot to tag 0 (so the message is printed unattributed), prints
/// `msg` and exits with `status`.
fn blk_fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

/// Notifies of `blk-bad-head`.
const BAD_HEAD_NOTIFIES: u32 = 20_000;

/// `blk-bad-head`: 20,000 times, publishes an available-ring entry whose
/// head (0xffff) is outside the 16-entry queue and notifies; then sets
/// `avail.idx` 0x8000 entries ahead (more than the queue holds) and
/// notifies once more. The device can use none of it; virtio-queue logs an
/// error for every bad head, which the VMM's logger must cut down. Exit
/// status 0.
fn blk_bad_head(b: &Boot) -> ! {
    print("blk-bad-head: start\n");
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_BLOCK) else {
        blk_fail(b, "blk: no device\n", 8)
    };
    let Ok(mut d) = Blk::init(mmio) else {
        blk_fail(b, "blk: init failed\n", 10)
    };
    for _ in 0..BAD_HEAD_NOTIFIES {
        d.publish_raw(0xffff);
        d.notify();
    }
    d.skew_avail(0x8000);
    d.notify();
    print("blk-bad-head: done\n");
    finish(b, 0)
}

/// One request that must end with status OK (else exit 11; no completion:
/// exit 12). Exactly one exit (the notify) when it succeeds.
fn blk_ok(b: &Boot, d: &mut Blk, kind: u32, sector: u64, len: u32) {
    match d.request(kind, sector, len) {
        Ok(blk::S_OK) => {}
        Ok(_) | Err(UsedError::WrongId) => blk_fail(b, "blk: request failed\n", 11),
        Err(UsedError::Timeout) => blk_fail(b, "blk: timeout\n", 12),
    }
}

fn blk(b: &Boot) -> ! {
    print("blk: start\n");
    acct::register();
    declare(BLK_WRITER, 0, b"writer");
    declare(BLK_READER, 0, b"reader");
    declare(BLK_FLUSHER, 0, b"flusher");

    // Discovery and initialisation, all at tag 0: 3 + 10 `mmio_read`,
    // 20 `mmio_write` (the first read drains the declarations above).
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_BLOCK) else {
        blk_fail(b, "blk: no device\n", 8)
    };
    let Ok(mut d) = Blk::init(mmio) else {
        blk_fail(b, "blk: init failed\n", 10)
    };
    if d.read_only {
        blk_fail(b, "blk: read-only disk\n", 10);
    }
    if d.capacity < BLK_MIN_SECTORS {
        blk_fail(b, "blk: disk too small\n", 10);
    }

    // writer: requests 1..=4, each one OUT of 4096 bytes of 0x40 + r at
    // sector 8r.
    for r in 1..=4u32 {
        request(b, BLK_WRITER, r, 0, || {
            blk::fill(0x40 + r as u8, BLK_BYTES as usize);
            blk_ok(b, &mut d, blk::T_OUT, BLK_SECTORS * u64::from(r), BLK_BYTES);
        });
    }
    // reader: requests 11..=14, each one IN of 4096 bytes at sector
    // 8(r - 10), checked against 0x40 + (r - 10).
    for r in 11..=14u32 {
        let k = r - 10;
        request(b, BLK_READER, r, 0, || {
            blk::fill(0xee, BLK_BYTES as usize);
            blk_ok(b, &mut d, blk::T_IN, BLK_SECTORS * u64::from(k), BLK_BYTES);
            if !blk::check(0x40 + k as u8, BLK_BYTES as usize) {
                blk_fail(b, "blk: mismatch\n", 6);
            }
        });
    }
    // flusher (no request): one FLUSH.
    in_container(b, BLK_FLUSHER, || blk_ok(b, &mut d, blk::T_FLUSH, 0, 0));
    // unattributed: one GET_ID into a 20-byte buffer.
    blk_ok(b, &mut d, blk::T_GET_ID, 0, blk::ID_BYTES);
    // writer (no request): one OUT of 512 bytes of 0x5a at sector =
    // capacity, just past the end: the device must answer IOERR.
    in_container(b, BLK_WRITER, || {
        blk::fill(0x5a, 512);
        match d.request(blk::T_OUT, d.capacity, 512) {
            Ok(blk::S_IOERR) => {}
            Ok(_) | Err(UsedError::WrongId) => blk_fail(b, "blk: expected ioerr\n", 9),
            Err(UsedError::Timeout) => blk_fail(b, "blk: timeout\n", 12),
        }
    });
    // With `loop=1` (the live-limit tests): rounds of one writer OUT and
    // one reader IN of 4096 bytes at sector 8, and one unattributed
    // GET_ID, until the VMM ends the VM.
    if arg(b.cmdline, b"loop=") == Some(&b"1"[..]) {
        loop {
            in_container(b, BLK_WRITER, || {
                blk::fill(0x41, BLK_BYTES as usize);
                blk_ok(b, &mut d, blk::T_OUT, BLK_SECTORS, BLK_BYTES);
            });
            in_container(b, BLK_READER, || {
                blk_ok(b, &mut d, blk::T_IN, BLK_SECTORS, BLK_BYTES);
            });
            blk_ok(b, &mut d, blk::T_GET_ID, 0, blk::ID_BYTES);
        }
    }
    print("blk: done\n");
    finish(b, 0)
}

const BLK2_W: u32 = 1;

/// Two disks (the VM-wide tenant bucket's test): container `w` writes 512
/// bytes of 0x77 at sector 8 on disk 0, disk 1, disk 0, disk 1, one
/// request at a time.
fn blk2(b: &Boot) -> ! {
    print("blk2: start\n");
    acct::register();
    declare(BLK2_W, 0, b"w");
    let disk = |n| virtio::find_nth(b.cmdline, virtio::DEVICE_ID_BLOCK, n);
    let (Some(m0), Some(m1)) = (disk(0), disk(1)) else {
        blk_fail(b, "blk2: two disks needed\n", 8)
    };
    let (Ok(mut d0), Ok(mut d1)) = (Blk::init(m0), Blk::init_second(m1)) else {
        blk_fail(b, "blk2: init failed\n", 10)
    };
    in_container(b, BLK2_W, || {
        for i in 0..4 {
            let d = if i % 2 == 0 { &mut d0 } else { &mut d1 };
            blk::fill(0x77, 512);
            blk_ok(b, d, blk::T_OUT, BLK_SECTORS, 512);
        }
    });
    print("blk2: done\n");
    finish(b, 0)
}

const TAGGED_SVC: u32 = 1;
const TAGGED_BG: u32 = 2;
const TAGGED_REQUEST: u32 = 7;
const TAGGED_UNDECLARED: u32 = 99;

/// One read of 8 sectors at `sector` with an explicit tag (0: none), which
/// must end OK; exactly one exit (the notify, charged to the slot's tag).
fn blk_read_as(b: &Boot, d: &mut Blk, sector: u64, explicit: u64) {
    match d.request_as(blk::T_IN, sector, BLK_BYTES, explicit) {
        Ok(blk::S_OK) => {}
        Ok(_) | Err(UsedError::WrongId) => blk_fail(b, "blk: request failed\n", 11),
        Err(UsedError::Timeout) => blk_fail(b, "blk: timeout\n", 12),
    }
}

/// Explicit per-request tags: the vCPU works for `svc` (its slot), but
/// submits one read on behalf of request 7 of `bg` by tagging it in the
/// queue tag table; one read with no explicit tag goes to `svc`, the
/// notifier; one names an undeclared container and goes to `unattributed`.
fn blk_tagged(b: &Boot) -> ! {
    print("blk-tagged: start\n");
    acct::register();
    declare(TAGGED_SVC, 0, b"svc");
    declare(TAGGED_BG, 0, b"bg");
    acct::begin_request(TAGGED_REQUEST, TAGGED_BG, 0);
    // Discovery and initialisation at tag 0, as in `blk`.
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_BLOCK) else {
        blk_fail(b, "blk: no device\n", 8)
    };
    let Ok(mut d) = Blk::init(mmio) else {
        blk_fail(b, "blk: init failed\n", 10)
    };
    in_container(b, TAGGED_SVC, || {
        blk_read_as(b, &mut d, 0, tag(TAGGED_BG, TAGGED_REQUEST));
        blk_read_as(b, &mut d, BLK_SECTORS, 0);
        blk_read_as(b, &mut d, 2 * BLK_SECTORS, tag(TAGGED_UNDECLARED, 0));
    });
    acct::end_request(TAGGED_REQUEST);
    print("blk-tagged: done\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// net: a virtio-net device; TX charged by tag, RX by flow
// ---------------------------------------------------------------------------

const NET_UDP: u32 = 1;
const NET_TCP: u32 = 2;
const NET_SPOOF: u32 = 3;
const NET_GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const NET_HOST_IP: [u8; 4] = [10, 77, 0, 1];
const NET_ECHO_PORT: u16 = 7000;
const NET_TCP_PORT: u16 = 7001;
const NET_TCP_SRC_PORT: u16 = 6000;
/// UDP source port of the explicitly tagged datagram.
const NET_TAGGED_PORT: u16 = 5010;
/// UDP source port of the spoofed datagram.
const NET_SPOOF_PORT: u16 = 5999;
/// The spoofed datagram's Ethernet source (not the device's MAC).
const NET_SPOOF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// Payload bytes of the spoofed and of the explicitly tagged datagrams.
const NET_SMALL_PAYLOAD: usize = 10;
/// Polls of the RX used ring before a reply counts as missing (seconds).
const NET_POLLS: u64 = 1 << 28;

/// Sets the slot to tag 0, prints `msg` and exits with `status`.
fn net_fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

/// The `net` scenario's device and frame state.
struct NetRun<'a> {
    b: &'a Boot,
    d: Net,
    peer: [u8; 6],
    /// IPv4 identification of the next frame.
    ip_id: u16,
    /// Frames received that were not the awaited echo.
    ignored: u64,
}

impl NetRun<'_> {
    fn ends(&self, src_mac: [u8; 6], src_port: u16, dst_port: u16) -> Ends {
        Ends {
            src_mac,
            dst_mac: self.peer,
            src_ip: NET_GUEST_IP,
            dst_ip: NET_HOST_IP,
            src_port,
            dst_port,
        }
    }

    fn next_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Sends `f` (one exit); a chain the device never used ends the run.
    fn send(&mut self, f: &[u8], explicit: u64) {
        if self.d.send(f, explicit).is_err() {
            net_fail(self.b, "net: tx failed\n", 19);
        }
    }

    /// One UDP datagram from `src_mac` (normally the device's) and
    /// `src_port` to the echo port, with `payload_len` bytes. One exit.
    fn send_udp(&mut self, src_mac: [u8; 6], src_port: u16, payload_len: usize, explicit: u64) {
        let mut buf = [0u8; 512];
        let e = self.ends(src_mac, src_port, NET_ECHO_PORT);
        let id = self.next_id();
        let n = frame::udp(&mut buf, &e, id, payload_len);
        self.send(&buf[..n], explicit);
    }

    /// One TCP segment 6000 -> 7001 at `seq` with `payload_len` bytes. One
    /// exit.
    fn send_tcp(&mut self, seq: u32, payload_len: usize) {
        let mut buf = [0u8; 512];
        let e = self.ends(self.d.mac, NET_TCP_SRC_PORT, NET_TCP_PORT);
        let id = self.next_id();
        let n = frame::tcp(&mut buf, &e, id, seq, payload_len);
        self.send(&buf[..n], 0);
    }

    /// Polls (no exits) until the echo of a `payload_len`-byte datagram
    /// sent from port `port` arrives; drops and counts every other frame.
    fn await_echo(&mut self, port: u16, payload_len: usize) {
        loop {
            let Some(f) = self.d.recv(NET_POLLS) else {
                net_fail(self.b, "net: no reply\n", 16)
            };
            match frame::udp_payload(f, NET_HOST_IP, NET_ECHO_PORT, port) {
                None => self.ignored += 1,
                Some(p) => {
                    let same = p.len() == payload_len
                        && p.iter().enumerate().all(|(i, &c)| c == frame::payload_byte(i));
                    if !same {
                        net_fail(self.b, "net: bad echo\n", 15);
                    }
                    return;
                }
            }
        }
    }
}

/// UDP echoes in requests, TCP segments with a retransmission, a spoofed
/// frame, and one datagram sent for another principal with an explicit
/// queue tag. See docs/guest-scenarios.md.
fn net(b: &Boot) -> ! {
    print("net: start\n");
    let Some(peer) = crate::arg(b.cmdline, b"net_peer_mac=").and_then(frame::parse_mac) else {
        net_fail(b, "net: no peer mac\n", 14)
    };
    acct::register();
    declare(NET_UDP, 0, b"udp");
    declare(NET_TCP, 0, b"tcp");
    declare(NET_SPOOF, 0, b"spoof");

    // Discovery and initialisation at tag 0: 3 + 16 `mmio_read`, 30
    // `mmio_write` (the RX notify included; the first read drains the
    // declarations above).
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_NET) else {
        net_fail(b, "net: no device\n", 17)
    };
    let Ok(d) = Net::init(mmio) else {
        net_fail(b, "net: init failed\n", 18)
    };
    let mut n = NetRun {
        b,
        d,
        peer,
        ip_id: 0,
        ignored: 0,
    };

    // udp: requests 1..=3, each one datagram of 100r bytes from port
    // 5000 + r, and its echo.
    for r in 1..=3u32 {
        let port = 5000 + r as u16;
        let len = 100 * r as usize;
        request(b, NET_UDP, r, 0, || {
            let mac = n.d.mac;
            n.send_udp(mac, port, len, 0);
            n.await_echo(port, len);
        });
    }
    // tcp (no request): 100 bytes at 1000, 100 at 1100, then the first 100
    // again (retransmitted).
    in_container(b, NET_TCP, || {
        n.send_tcp(1000, 100);
        n.send_tcp(1100, 100);
        n.send_tcp(1000, 100);
    });
    // spoof (no request): a datagram from a foreign MAC; the device drops
    // it, so no echo comes.
    in_container(b, NET_SPOOF, || {
        n.send_udp(NET_SPOOF_MAC, NET_SPOOF_PORT, NET_SMALL_PAYLOAD, 0);
    });
    // The slot says tcp, the explicit queue tag says udp: the TX and the
    // echo (by the flow learned from this TX) go to udp, the exit to tcp.
    in_container(b, NET_TCP, || {
        let mac = n.d.mac;
        n.send_udp(
            mac,
            NET_TAGGED_PORT,
            NET_SMALL_PAYLOAD,
            tag(NET_UDP, abi::NO_REQUEST),
        );
        n.await_echo(NET_TAGGED_PORT, NET_SMALL_PAYLOAD);
    });

    print("net: ignored=");
    print_dec10(n.ignored);
    print("\n");
    print("net: done\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// vsock: a stream to a host port; TX charged to the notifier, RX to the
// principal that opened the connection
// ---------------------------------------------------------------------------

const VS_A: u32 = 1;
const VS_B: u32 = 2;
/// The guest's port for its one connection.
const VS_LOCAL_PORT: u32 = 40_000;
/// Bytes vs-a sends (and gets back), then vs-b.
const VS_A_BYTES: usize = 100;
const VS_B_BYTES: usize = 200;
const VS_POLLS: u64 = 1 << 27;

fn vsock_fail(b: &Boot, msg: &str, status: u32) -> ! {
    print(msg);
    finish(b, status)
}

/// Waits for a packet with `want` op, skipping credit updates.
fn vsock_await(b: &Boot, d: &mut Vsock, want: u16) {
    loop {
        let Some((h, _)) = d.recv(VS_POLLS) else {
            vsock_fail(b, "vsock: timeout\n", 31)
        };
        match h.op {
            vsock::op::CREDIT_UPDATE => {}
            op if op == want => return,
            _ => vsock_fail(b, "vsock: unexpected op\n", 32),
        }
    }
}

/// Sends `n` bytes of `fill` as one RW packet and waits for all of them to
/// come back (in one or more RW packets).
fn vsock_echo(b: &Boot, d: &mut Vsock, fill: u8, n: usize) {
    let buf = [fill; VS_B_BYTES];
    if d.send(vsock::op::RW, &buf[..n], 0).is_err() {
        vsock_fail(b, "vsock: tx failed\n", 33)
    }
    let mut got = 0;
    while got < n {
        let Some((h, p)) = d.recv(VS_POLLS) else {
            vsock_fail(b, "vsock: no echo\n", 34)
        };
        match h.op {
            vsock::op::CREDIT_UPDATE => {}
            vsock::op::RW if p.iter().all(|&x| x == fill) => got += p.len(),
            _ => vsock_fail(b, "vsock: bad echo\n", 35),
        }
    }
}

/// `vsock`: connects to host port `vsock_port=` (default 1024) from guest
/// port 40000. In vs-a: REQUEST (answered by RESPONSE), 100 bytes echoed.
/// In vs-b: 200 bytes echoed on the same connection. In vs-a: SHUTDOWN of
/// both directions, answered by RST. TX packets go to the container that
/// sent them; every packet the device sends goes to vs-a, which opened the
/// connection.
fn vsock_scenario(b: &Boot) -> ! {
    print("vsock: start\n");
    let port = arg(b.cmdline, b"vsock_port=")
        .and_then(parse_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(1024);
    acct::register();
    declare(VS_A, 0, b"vs-a");
    declare(VS_B, 0, b"vs-b");
    let Some(mmio) = virtio::find(b.cmdline, vsock::DEVICE_ID_VSOCK) else {
        vsock_fail(b, "vsock: no device\n", 36)
    };
    let Ok(mut d) = Vsock::init(mmio) else {
        vsock_fail(b, "vsock: init failed\n", 37)
    };
    d.port = VS_LOCAL_PORT;
    d.peer_port = port;
    in_container(b, VS_A, || {
        if d.send(vsock::op::REQUEST, &[], 0).is_err() {
            vsock_fail(b, "vsock: tx failed\n", 33)
        }
        vsock_await(b, &mut d, vsock::op::RESPONSE);
        vsock_echo(b, &mut d, 0xa5, VS_A_BYTES);
    });
    in_container(b, VS_B, || vsock_echo(b, &mut d, 0x5b, VS_B_BYTES));
    in_container(b, VS_A, || {
        if d.send(vsock::op::SHUTDOWN, &[], vsock::SHUTDOWN_BOTH).is_err() {
            vsock_fail(b, "vsock: tx failed\n", 33)
        }
        vsock_await(b, &mut d, vsock::op::RST);
    });
    print("vsock: done\n");
    finish(b, 0)
}

// ---------------------------------------------------------------------------
// run-log (1 vCPU): exact run time per request from the switch log
// ---------------------------------------------------------------------------

const RL_SVC: u32 = 1;
const RL_REQUESTS: u32 = 6;
/// TSC cycles per unit of spin (`cycles=N` overrides): request k spins
/// k units, with no exit.
const RL_CYCLES: u64 = 2_000_000;

/// Requests 1..=6 in `svc`, each switched to and from with a logged
/// switch, spinning k·`cycles` TSC cycles with no exit in between. Before
/// each switch-in one `port_out` (in `unattributed`) applies the request's
/// begin; after the switch-out the guest prints the cycles between its two
/// logged switches (`run-log: request NNNNNNNNNN cycles NNNNNNNNNN`), which
/// is the run time the VMM must charge the request.
fn run_log(b: &Boot) -> ! {
    if b.nr_vcpus != 1 {
        print("run-log: needs 1 vcpu\n");
        finish(b, 3);
    }
    acct::register();
    declare(RL_SVC, 0, b"svc");
    print("run-log: start\n");
    let unit = arg(b.cmdline, b"cycles=")
        .and_then(parse_u64)
        .unwrap_or(RL_CYCLES);
    for k in 1..=RL_REQUESTS {
        acct::begin_request(k, RL_SVC, 0);
        port_work(1);
        let t0 = acct::switch_logged(b.vcpu, tag(RL_SVC, k));
        spin_cycles(u64::from(k) * unit);
        let t1 = acct::switch_logged(b.vcpu, 0);
        acct::end_request(k);
        print("run-log: request ");
        print_dec10(u64::from(k));
        print(" cycles ");
        print_dec10(t1 - t0);
        print("\n");
    }
    if arg(b.cmdline, b"lie=") == Some(&b"1"[..]) {
        run_log_lies(b, unit);
    }
    print("run-log: done\n");
    finish(b, 0)
}

fn spin_cycles(n: u64) {
    let until = acct::rdtsc() + n;
    while acct::rdtsc() < until {
        core::hint::spin_loop();
    }
}

/// `lie=1`: request 7 with a log that lies: a switch stamped before the VM
/// started, one far in the future, a sequence moved back, and five
/// switches with no exit between them (more than the log holds).
fn run_log_lies(b: &Boot, unit: u64) {
    acct::begin_request(7, RL_SVC, 0);
    port_work(1);
    acct::log_at(b.vcpu, tag(RL_SVC, 7), 0);
    spin_cycles(unit);
    acct::log_at(b.vcpu, tag(RL_SVC, 0), u64::MAX);
    spin_cycles(unit);
    acct::set_log_seq(b.vcpu, 2);
    spin_cycles(unit);
    for _ in 0..5 {
        acct::switch_logged(b.vcpu, tag(RL_SVC, 7));
    }
    spin_cycles(unit);
    acct::switch_logged(b.vcpu, 0);
    acct::end_request(7);
    print("run-log: lied\n");
}

/// `cpucap`: the containers of the capping experiment.
const CAP_A: u32 = 1;
const CAP_B: u32 = 2;

/// `cpucap` (docs/guest-scenarios.md): containers `cap-a` and `cap-b`, then
/// spin until the VMM's time limit ends the VM. `mode=coop` (the default,
/// vCPU 0 only works): a cooperative scheduler that runs `cap-a` unless its
/// throttle word says `cap-a`'s CPU budget is spent, else `cap-b`, each
/// switch logged. `mode=hog`: every vCPU spins for one container (even
/// vCPUs `cap-a`, odd `cap-b`) and never looks at its throttle word.
fn cpucap(b: &Boot) -> ! {
    acct::register();
    declare(CAP_A, 0, b"cap-a");
    declare(CAP_B, 0, b"cap-b");
    // This print's first exit drains the declarations before any loop runs.
    print("cpucap: start\n");
    release_others(Scenario::CpuCap);
    cpucap_part(b);
    finish(b, 0)
}

fn cpucap_part(b: &Boot) {
    if arg(b.cmdline, b"mode=") == Some(&b"hog"[..]) {
        let c = if b.vcpu % 2 == 0 { CAP_A } else { CAP_B };
        acct::switch_logged(b.vcpu, tag(c, 0));
        loop {
            burn(1000);
        }
    }
    if b.vcpu != 0 {
        loop {
            burn(1000);
        }
    }
    let mut cur = 0;
    loop {
        let w = acct::throttle_word(b.vcpu);
        let a_spent = w & abi::THROTTLE_SPENT != 0 && (w as u32 == CAP_A || w & abi::THROTTLE_TENANT != 0);
        let want = if a_spent { CAP_B } else { CAP_A };
        if want != cur {
            acct::switch_logged(b.vcpu, tag(want, 0));
            cur = want;
        }
        burn(200);
    }
}
