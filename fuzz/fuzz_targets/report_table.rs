//! The report's table (`accounting::report::Report::to_table`) on hostile
//! text.
//!
//! Real books: an `Accounting` whose tenant is any string (the CLI checks
//! `--tenant`, the ledger does not), containers declared through the ring
//! with any names (control characters, long, unicode, lookalikes of the
//! table's own rows; the registry keeps only valid ones) and parents,
//! requests begun and ended, some containers retired, and exits, run time,
//! block, net and vsock work charged to them. The VM facts (`kernel` is a
//! user's path, `end_detail` an error message) are any strings too, and so
//! are, afterwards, the container paths and request paths of the report, as
//! a report read back from JSON could have them.
//!
//! Nothing may panic, and the table must:
//! - hold no control character but the `\n` that ends its own lines: as
//!   many lines as the same report with every text replaced by `x`;
//! - stay within that report's size plus a bounded expansion of the text
//!   it was given.
#![no_main]

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::registry::Limits;
use accounting::report::{Report, VmInfo};
use accounting::resource::{BlockOp, BlockWork, ExitReason, NetCharge, VsockCharge};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    Any(String),
    Pick(u8),
    Repeat(u8, u16),
}

/// Texts that look like the table, break terminals or are long.
const PICKS: &[&str] = &[
    "web",
    "----------------------------",
    "= tenant total",
    "=",
    "CONTAINER",
    "a|b",
    "a\nb",
    "a\r\nconservation: holds for all 99 resources",
    "\x1b[2J\x1b[H",
    "\x1b]0;title\x07",
    "\u{9b}31m",
    "tab\there",
    "\0",
    "\u{7f}",
    "\u{202e}evil",
    "名前",
    "é",
    "x:y.z_-",
    "unattributed",
];

#[derive(Arbitrary, Debug)]
enum Op {
    Declare {
        id: u8,
        parent: u8,
        name: Name,
    },
    Retire(u8),
    Begin {
        id: u8,
        container: u8,
    },
    End(u8),
    Exit {
        container: u8,
        request: u8,
        reason: u8,
        ns: u32,
    },
    Run {
        container: u8,
        request: u8,
        ns: u32,
    },
    Block {
        container: u8,
        op: u8,
        bytes: u32,
        error: bool,
    },
    Net {
        container: u8,
        frames: u8,
        bytes: u32,
    },
    Vsock {
        container: u8,
        packets: u8,
        bytes: u32,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    tenant: Name,
    kernel: Name,
    boot: Name,
    end: Name,
    end_detail: Option<Name>,
    guest_status: Option<u32>,
    max_containers: u8,
    retained: u8,
    ops: Vec<Op>,
    /// Rewrites of container paths and request paths (index, text).
    paths: Vec<(u8, Name)>,
    max_requests: u8,
}

fn text(n: &Name) -> String {
    match n {
        Name::Any(s) => s.clone(),
        Name::Pick(i) => PICKS[usize::from(*i) % PICKS.len()].to_owned(),
        Name::Repeat(i, k) => PICKS[usize::from(*i) % PICKS.len()].repeat(usize::from(*k % 512)),
    }
}

fn small(v: u8) -> u32 {
    u32::from(v % 12)
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 256 {
        return;
    }
    let limits = Limits {
        max_containers: u32::from(input.max_containers % 32),
        max_live_requests: 16,
        retained_requests: u32::from(input.retained % 16),
    };
    let acct = Accounting::new(&text(&input.tenant), 2, 1, limits);
    let (mut vcpu, mut sampler) = (acct.writer(0), acct.writer(2));
    let mut dev = acct.writer(1);
    for op in &input.ops {
        match op {
            Op::Declare { id, parent, name } => {
                let e = RingEntry::new(
                    EntryKind::DeclareContainer,
                    small(*id),
                    small(*parent),
                    0,
                    text(name).as_bytes(),
                );
                if acct.apply(&e).is_ok() {
                    let n = &e.name[..usize::from(e.name_len)];
                    assert!(accounting::abi::valid_name(n), "the registry took {n:?}");
                }
            }
            Op::Retire(id) => {
                let _ = acct.apply(&entry(EntryKind::RetireContainer, small(*id), 0));
            }
            Op::Begin { id, container } => {
                let _ = acct.apply(&entry(EntryKind::BeginRequest, small(*id), small(*container)));
            }
            Op::End(id) => {
                let _ = acct.apply(&entry(EntryKind::EndRequest, small(*id), 0));
            }
            Op::Exit {
                container,
                request,
                reason,
                ns,
            } => {
                let reasons = [
                    ExitReason::PortIn,
                    ExitReason::PortOut,
                    ExitReason::MmioRead,
                    ExitReason::MmioWrite,
                    ExitReason::Shutdown,
                    ExitReason::InternalError,
                    ExitReason::Other,
                ];
                let r = reasons[usize::from(*reason) % reasons.len()];
                vcpu.charge_exit(Some(tag(small(*container), small(*request))), r, u64::from(*ns));
            }
            Op::Run {
                container,
                request,
                ns,
            } => {
                sampler.charge_run(0, Some(tag(small(*container), small(*request))), u64::from(*ns));
            }
            Op::Block {
                container,
                op,
                bytes,
                error,
            } => {
                let ops = [BlockOp::Read, BlockOp::Write, BlockOp::Flush, BlockOp::Other];
                let work = BlockWork {
                    op: ops[usize::from(*op) % ops.len()],
                    bytes: u64::from(*bytes),
                    device_ns: u64::from(*bytes / 7),
                    latency_ns: u64::from(*bytes / 3),
                    error: *error,
                    // The op byte's high bit: a request a limit held.
                    throttled_ns: (*op >= 0x80).then_some(u64::from(*bytes / 5)),
                };
                dev.charge_block(Some(tag(small(*container), 0)), &work);
            }
            Op::Net {
                container,
                frames,
                bytes,
            } => {
                let n = NetCharge {
                    tx_frames: u64::from(*frames),
                    tx_bytes: u64::from(*bytes),
                    rx_frames: u64::from(*frames / 2),
                    ..Default::default()
                };
                dev.charge_net(Some(tag(small(*container), 0)), &n);
            }
            Op::Vsock {
                container,
                packets,
                bytes,
            } => {
                let v = VsockCharge {
                    tx_packets: u64::from(*packets),
                    tx_bytes: u64::from(*bytes),
                    connections: 1,
                    ..Default::default()
                };
                dev.charge_vsock(Some(tag(small(*container), 0)), &v);
            }
        }
    }
    drop((vcpu, sampler, dev));
    let vm = VmInfo {
        vcpus: 2,
        mem_mib: 64,
        kernel: text(&input.kernel),
        boot: text(&input.boot),
        end: text(&input.end),
        end_detail: input.end_detail.as_ref().map(text),
        guest_status: input.guest_status,
        ..Default::default()
    };
    let mut report = Report::build(&acct, vm);
    for (i, n) in input.paths.iter().take(16) {
        let i = usize::from(*i);
        let t = text(n);
        if i % 2 == 0 && !report.containers.is_empty() {
            let k = (i / 2) % report.containers.len();
            report.containers[k].path = t;
        } else if !report.requests.is_empty() {
            let k = (i / 2) % report.requests.len();
            report.requests[k].container_path = t;
        }
    }

    let max_requests = usize::from(input.max_requests % 16);
    let table = report.to_table(max_requests);
    let plain = blanked(&report).to_table(max_requests);

    if let Some(c) = table.chars().find(|&c| c.is_control() && c != '\n') {
        panic!("control character {c:?} in the table: {:?}", short(&table));
    }
    assert_eq!(
        table.lines().count(),
        plain.lines().count(),
        "text added or removed lines: {:?}",
        short(&table)
    );
    // Every text is shown at most a few times (a container's path in up to
    // four sections), each char escaped to at most 10 bytes.
    let given = text_bytes(&report);
    assert!(
        table.len() <= plain.len() + 4 * 10 * given,
        "{} bytes of table for {given} bytes of text",
        table.len()
    );
});

/// The start of `t`, for messages (printed escaped, never raw).
fn short(t: &str) -> String {
    t.chars().take(2000).collect()
}

fn entry(kind: EntryKind, id: u32, arg: u32) -> RingEntry {
    RingEntry {
        kind: kind as u16,
        id,
        arg,
        ..Default::default()
    }
}

/// The texts of `r` that `to_table` prints.
fn text_bytes(r: &Report) -> usize {
    let v = &r.vm;
    r.tenant.len()
        + v.kernel.len()
        + v.boot.len()
        + v.end.len()
        + v.end_detail.as_ref().map_or(0, String::len)
        + r.containers.iter().map(|c| c.path.len()).sum::<usize>()
        + r.requests
            .iter()
            .map(|q| q.container_path.len() + q.state.len())
            .sum::<usize>()
}

/// `r` with every text `to_table` prints replaced by `x`.
fn blanked(r: &Report) -> Report {
    let mut b = r.clone();
    let x = || "x".to_owned();
    b.tenant = x();
    b.vm.kernel = x();
    b.vm.boot = x();
    b.vm.end = x();
    b.vm.end_detail = b.vm.end_detail.as_ref().map(|_| x());
    for c in &mut b.containers {
        c.path = x();
    }
    for q in &mut b.requests {
        q.container_path = x();
        q.state = x();
    }
    b
}
