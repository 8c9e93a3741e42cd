//! Experiment 1 of the resource-container paper, prioritized clients, at
//! the hypervisor (docs/experiments.md): a high-priority container's block
//! reads keep their latency while a low-priority container's offered load
//! grows 10x under a tenant cap; without priorities they queue behind it.
//! The shape only, with generous margins (the figures are the bench's).

use resourceful_tests::blk_mix::{prio_point, tsc_per_us, HIGH_READS};

#[test]
fn a_high_priority_container_keeps_its_latency_while_low_priority_load_grows_10x() {
    let tsc = tsc_per_us();
    // Latencies on a shared host are noisy: the unloaded and the loaded
    // figure are each the lowest mean of three runs.
    let best = |load| {
        (0..3)
            .map(|_| prio_point(load, true, tsc))
            .min_by(|x, y| x.0.mean_latency_us.total_cmp(&y.0.mean_latency_us))
            .unwrap()
    };
    let (alone, none, _, _) = best(0);
    let (hi10, lo10, report, rate10) = best(10);
    let (flat10, flat_lo10, _, _) = prio_point(10, false, tsc);
    eprintln!(
        "alone {alone:?}\nload 10 {hi10:?} {lo10:?} {rate10:.0}/s\nwithout priorities, load 10 {flat10:?} {flat_lo10:?}"
    );
    // Exact counts: every read of `high` completed, none lost.
    for h in [alone, hi10, flat10] {
        assert_eq!((h.reads, h.bytes), (HIGH_READS, HIGH_READS * 512), "{h:?}");
    }
    assert_eq!(none.reads, 0, "no low load at 0");
    // At load 10 the disk was contended: the cap held low's reads. (How
    // many low gets through depends on the host's speed, not asserted.)
    assert!(lo10.held > 0 && flat_lo10.held > 0, "{lo10:?} {flat_lo10:?}");
    // The mechanism: with priorities high's reads go past low's held ones
    // (almost never held themselves); without, most queue behind them.
    assert!(hi10.held * 10 <= HIGH_READS, "{hi10:?}");
    assert!(flat10.held * 2 >= HIGH_READS, "{flat10:?}");
    // The shape: with priorities, high stays within a generous 8x of its
    // unloaded latency (the bench measures the 2x target; a loaded host
    // makes single runs noisy); without them it is at least twice as slow
    // as with them.
    assert!(
        hi10.mean_latency_us < 8.0 * alone.mean_latency_us,
        "{hi10:?} vs alone {alone:?}"
    );
    assert!(
        flat10.mean_latency_us > 2.0 * hi10.mean_latency_us,
        "{flat10:?} vs {hi10:?}"
    );
    let throttled = report
        .conservation
        .lines
        .iter()
        .find(|l| l.resource == "block.throttled_ns")
        .unwrap();
    assert_eq!(throttled.tenant_total, throttled.containers_sum);
}
