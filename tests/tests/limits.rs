//! Per-container limits configured from a file (`--limits FILE`) and
//! changed live through the API, in real VMs (docs/limits-per-container.md).

use resourceful_tests::{boot, boot_blk, config};
use vmm::config::DiskConfig;

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("resourceful-limits-{}-{name}", std::process::id()))
}

/// The `blk` scenario with a limits file whose one entry is the pattern
/// `w*` (only `writer` matches): `writer` is throttled exactly as with
/// `--limit writer:...`, the others are not, counts stay exact and the
/// throttle lines are conserved.
#[test]
fn a_limit_from_a_file_throttles_the_containers_its_pattern_covers() {
    let file = scratch("limits.json");
    std::fs::write(
        &file,
        r#"{"limits": [{"container": "w*", "blk-ops": "1/30ms"}, {"container": "nobody/yet", "blk-ops": "1/s"}]}"#,
    )
    .unwrap();
    let limits = vmm::limits_file::load(&file).expect("a valid limits file");
    let _ = std::fs::remove_file(&file);
    let run = boot_blk("limits-file", limits);

    run.assert_clean();
    let block = |path: &str| run.container(path).charges.block;
    let (w, r, f) = (block("writer"), block("reader"), block("flusher"));
    assert_eq!((w.writes, w.errors, w.bytes_written), (5, 1, 4 * 4096));
    assert_eq!((r.reads, r.bytes_read), (4, 4 * 4096));
    assert_eq!(f.flushes, 1);
    // A full bucket of 1 lets the first of the 5 writes pass; the guest
    // issues them back to back, so at least one is held.
    assert!((1..=4).contains(&w.throttle_events), "{w:?}");
    assert!(w.throttled_ns > 0, "{w:?}");
    for other in [r, f, block("unattributed")] {
        assert_eq!((other.throttle_events, other.throttled_ns), (0, 0), "{other:?}");
    }
    let disk = run.report.devices.iter().find(|d| d.name == "disk0").unwrap();
    assert_eq!(disk.counters.get("throttled"), Some(&w.throttle_events));
    assert_eq!(
        run.conservation_line("block.throttle_events"),
        (w.throttle_events, w.throttle_events)
    );
    assert_eq!(
        run.conservation_line("block.throttled_ns"),
        (w.throttled_ns, w.throttled_ns)
    );
}

/// A tenant limit from a file: every request of the VM draws from one
/// bucket of 1 per 30 ms, whatever container it is charged to. The `blk`
/// scenario's 11 requests go one after the other: the first passes a full
/// bucket, at most the other 10 are held, counts stay exact.
#[test]
fn a_tenant_limit_from_a_file_holds_every_containers_requests() {
    let file = scratch("tenant.json");
    std::fs::write(
        &file,
        r#"{"limits": [{"container": "tenant", "blk-ops": "1/30ms"}]}"#,
    )
    .unwrap();
    let limits = vmm::limits_file::load(&file).expect("a valid limits file");
    let _ = std::fs::remove_file(&file);
    let run = boot_blk("limits-tenant", limits);

    run.assert_clean();
    let block = |path: &str| run.container(path).charges.block;
    let all = ["writer", "reader", "flusher", "unattributed"].map(block);
    let [w, r, f, u] = all;
    assert_eq!((w.writes, w.errors, w.bytes_written), (5, 1, 4 * 4096));
    assert_eq!((r.reads, r.bytes_read), (4, 4 * 4096));
    assert_eq!((f.flushes, u.other), (1, 1));
    // Each container may be held up to its own request count.
    for (c, n) in all.iter().zip([5, 4, 1, 1]) {
        assert!(c.throttle_events <= n, "{c:?}");
        assert_eq!(c.throttled_ns > 0, c.throttle_events > 0, "{c:?}");
    }
    let held: u64 = all.iter().map(|c| c.throttle_events).sum();
    // The first request passes a full bucket of 1; the next comes at once.
    assert!((1..=10).contains(&held), "{held}");
    let disk = run.report.devices.iter().find(|d| d.name == "disk0").unwrap();
    assert_eq!(disk.counters.get("throttled"), Some(&held));
    assert_eq!(run.conservation_line("block.throttle_events"), (held, held));
    let ns: u64 = all.iter().map(|c| c.throttled_ns).sum();
    assert_eq!(run.conservation_line("block.throttled_ns"), (ns, ns));
}

/// Boots `blk2` (container `w` writes on disk 0, 1, 0, 1, one at a time)
/// on two disks with `limits`; checks the exact counts and returns the
/// holds of each disk.
fn two_disks(name: &str, limits: &[&str]) -> (u64, u64) {
    let disks: Vec<_> = (0..2)
        .map(|i| {
            let d = scratch(&format!("{name}-disk{i}.img"));
            std::fs::write(&d, vec![0u8; 1 << 20]).unwrap();
            d
        })
        .collect();
    let mut cfg = config("blk2", 1);
    cfg.disks = (disks.iter())
        .map(|p| DiskConfig {
            path: p.clone(),
            read_only: false,
        })
        .collect();
    cfg.container_limits = limits.iter().map(|l| l.parse().unwrap()).collect();

    let run = boot(cfg);
    for d in &disks {
        let _ = std::fs::remove_file(d);
    }

    run.assert_clean();
    let w = run.container("w").charges.block;
    assert_eq!((w.writes, w.bytes_written), (4, 4 * 512));
    let held = |name: &str| {
        let d = run.report.devices.iter().find(|d| d.name == name).unwrap();
        assert_eq!(d.counters.get("bytes_written"), Some(&1024), "{name}");
        d.counters.get("throttled").copied().unwrap_or(0)
    };
    let (h0, h1) = (held("disk0"), held("disk1"));
    assert_eq!(w.throttle_events, h0 + h1);
    assert_eq!(w.throttled_ns > 0, w.throttle_events > 0, "{w:?}");
    assert_eq!(run.conservation_line("block.throttle_events"), (h0 + h1, h0 + h1));
    (h0, h1)
}

/// The tenant limit caps the whole VM: one bucket of 2 ops (refilling one
/// every 200 ms) over both disks. The four writes come one after another
/// (microseconds apart): the first two pass the full bucket, so the
/// third (on disk 0) finds it empty and waits, which two buckets of 2,
/// one per disk, would never make it do. A container limit of the same
/// size still applies per disk: nothing is held.
#[test]
fn a_tenant_limit_caps_both_disks_together() {
    let (h0, h1) = two_disks("tenant2", &["tenant:blk-ops=2/400ms"]);
    // The third write (disk 0) is held at least; at most the last two.
    assert!(h0 >= 1 && h0 + h1 <= 2, "{h0} {h1}");

    let (h0, h1) = two_disks("per-disk", &["w:blk-ops=2/400ms"]);
    assert_eq!((h0, h1), (0, 0));
}
