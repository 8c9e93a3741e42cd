//! Experiment 4 of the resource-container paper, isolation of virtual
//! servers, at the hypervisor (docs/experiments.md): two containers that
//! both keep the disk busy under a tenant cap get its bandwidth in
//! proportion to their shares. Exact counts; the ratio with a margin.

use resourceful_tests::blk_mix::{shares_point, tsc_per_us, SHARES_READS};

#[test]
fn two_containers_with_2_to_1_shares_get_2_to_1_of_a_contended_disk() {
    let (a, b, report, took) = shares_point(Some((2, 1)), tsc_per_us());
    eprintln!("2:1 {a:?} {b:?} in {took:?}");
    // Exact: every read the guest made completed, 4096 bytes each.
    assert_eq!(a.reads + b.reads, SHARES_READS, "{a:?} {b:?}");
    assert_eq!((a.bytes, b.bytes), (a.reads * 4096, b.reads * 4096));
    // Both were held by the cap (the disk was contended) ...
    assert!(a.held > 0 && b.held > 0, "{a:?} {b:?}");
    // ... and got 2:1 of it, ± 10 %.
    let ratio = a.bytes as f64 / b.bytes as f64;
    assert!((1.8..=2.2).contains(&ratio), "ratio {ratio}: {a:?} {b:?}");
    for resource in ["block.throttle_events", "block.throttled_ns", "block.bytes_read"] {
        let l = report
            .conservation
            .lines
            .iter()
            .find(|l| l.resource == resource)
            .unwrap();
        assert_eq!(l.tenant_total, l.containers_sum, "{resource}");
    }
}

#[test]
fn equal_shares_get_equal_halves() {
    // Equal shares set: 1:1 ± 10 %.
    let (a, b, _, _) = shares_point(Some((1, 1)), tsc_per_us());
    eprintln!("1:1 {a:?} {b:?}");
    assert_eq!(a.reads + b.reads, SHARES_READS);
    let ratio = a.bytes as f64 / b.bytes as f64;
    assert!((0.9..=1.1).contains(&ratio), "ratio {ratio}: {a:?} {b:?}");
}
