//! The charge hot path: nanoseconds per charged exit through
//! [`Writer::charge_exit`] with the tag already in the writer's cache.
//!
//! Run with `cargo bench -p accounting --bench charge`. Target: ≤ 20 ns per
//! charged exit (see docs/benchmarks.md). The books are opened exactly as the
//! VMM opens them for a 2-vCPU VM (two vCPU writers and the sampler); the
//! declarations go through `Accounting::apply`, the path the ring drain uses,
//! so every tag resolves exactly as it would in a VM. Each case first charges
//! once outside the timed loop, so the timed iterations all hit the cache
//! (the declarations are not changed while measuring, so the generation never
//! moves and the cache is never flushed).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::{Accounting, Writer};
use accounting::registry::Limits;
use accounting::resource::ExitReason;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn declare(acct: &Accounting, id: u32, name: &str) {
    let e = RingEntry::new(EntryKind::DeclareContainer, id, 0, 0, name.as_bytes());
    acct.apply(&e).expect("declare container");
}

fn begin(acct: &Accounting, id: u32, container: u32) {
    acct.apply(&RingEntry {
        kind: EntryKind::BeginRequest as u16,
        id,
        arg: container,
        ..Default::default()
    })
    .expect("begin request");
}

/// Books with containers 1..=4 and a live request 9 in container 1, and the
/// writer of vCPU 0.
fn books() -> (Arc<Accounting>, Writer) {
    let acct = Accounting::new("t", 2, 1, Limits::default());
    for id in 1..=4 {
        declare(&acct, id, &format!("c{id}"));
    }
    begin(&acct, 9, 1);
    let w = acct.writer(0);
    (acct, w)
}

/// Checks after a case that its charges landed where they should (and so that
/// the work cannot have been optimised away).
fn charged_exits(acct: &Accounting) -> u64 {
    acct.vcpu_totals()[0].exits_total().count
}

fn charge(c: &mut Criterion) {
    let mut g = c.benchmark_group("charge_exit");
    g.throughput(Throughput::Elements(1));

    // (a) A container tag, no request: the common case.
    {
        let (acct, mut w) = books();
        let t = Some(tag(1, 0));
        w.charge_exit(t, ExitReason::PortOut, 1);
        g.bench_function("a_container", |b| {
            b.iter(|| w.charge_exit(black_box(t), black_box(ExitReason::PortOut), black_box(40_000)));
        });
        assert!(charged_exits(&acct) > 1);
        assert!(acct.registry().containers()[1].cells.sum().exits_total().count > 1);
    }

    // (b) A container and a live request: adds fetch_adds on the request block.
    {
        let (acct, mut w) = books();
        let t = Some(tag(1, 9));
        w.charge_exit(t, ExitReason::MmioWrite, 1);
        g.bench_function("b_container_request", |b| {
            b.iter(|| w.charge_exit(black_box(t), black_box(ExitReason::MmioWrite), black_box(40_000)));
        });
        let reg = acct.registry();
        let req = reg.live_requests().next().expect("request 9 live");
        assert!(req.cells.read().exits_total().count > 1);
    }

    // (c) No tag (no region registered / no slot): the unattributed container.
    {
        let (acct, mut w) = books();
        g.bench_function("c_unattributed", |b| {
            b.iter(|| w.charge_exit(black_box(None), black_box(ExitReason::PortIn), black_box(40_000)));
        });
        assert!(acct.registry().containers()[0].cells.sum().exits_total().count > 1);
    }

    // (d) Four tags in turn, all cached: the cache scan finds different slots.
    {
        let (acct, mut w) = books();
        let tags = [tag(1, 0), tag(2, 0), tag(3, 0), tag(4, 0)];
        for t in tags {
            w.charge_exit(Some(t), ExitReason::PortOut, 1);
        }
        let mut i = 0usize;
        g.bench_function("d_alternating_4_tags", |b| {
            b.iter(|| {
                let t = tags[i & 3];
                i = i.wrapping_add(1);
                w.charge_exit(
                    black_box(Some(t)),
                    black_box(ExitReason::PortOut),
                    black_box(40_000),
                );
            });
        });
        let reg = acct.registry();
        for c in &reg.containers()[1..=4] {
            assert!(c.cells.sum().exits_total().count > 1);
        }
    }

    // (e) Everything a vCPU thread does per exit besides KVM_RUN and the
    // device: read the clock at the exit, read it again before re-entry, and
    // charge the difference (container tag, no request). Compare with (a) and
    // with clock_now alone to see the clock's share.
    {
        let (acct, mut w) = books();
        let t = Some(tag(1, 0));
        w.charge_exit(t, ExitReason::PortOut, 1);
        let clock = Arc::clone(&acct);
        g.bench_function("e_two_clock_reads_and_charge", |b| {
            b.iter(|| {
                let exit_at = clock.now_ns();
                let reentry_at = clock.now_ns();
                w.charge_exit(
                    black_box(t),
                    black_box(ExitReason::PortOut),
                    reentry_at.wrapping_sub(exit_at),
                );
            });
        });
        assert!(charged_exits(&acct) > 1);
    }

    // (f) As the vCPU loop really is: a clock read before KVM_RUN (run-time
    // stamp), one at the exit, one after handling, and the charge.
    {
        let (acct, mut w) = books();
        let t = Some(tag(1, 0));
        w.charge_exit(t, ExitReason::PortOut, 1);
        let clock = Arc::clone(&acct);
        g.bench_function("f_three_clock_reads_and_charge", |b| {
            b.iter(|| {
                black_box(clock.now_ns());
                let exit_at = clock.now_ns();
                let handled_at = clock.now_ns();
                w.charge_exit(
                    black_box(t),
                    black_box(ExitReason::PortOut),
                    handled_at.wrapping_sub(exit_at),
                );
            });
        });
        assert!(charged_exits(&acct) > 1);
    }
    g.finish();

    let mut g = c.benchmark_group("clock");
    g.throughput(Throughput::Elements(1));
    let acct = Accounting::new("t", 1, 0, Limits::default());
    g.bench_function(format!("now_ns ({})", acct.clock_source()), |b| {
        b.iter(|| black_box(acct.now_ns()))
    });
    let mono = accounting::clock::Clock::monotonic();
    g.bench_function("now_ns (monotonic)", |b| b.iter(|| black_box(mono.now_ns())));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = charge
}
criterion_main!(benches);
