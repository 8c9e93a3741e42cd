//! Per-container limits configured from a file (`--limits FILE`) and
//! changed live through the API, in real VMs (docs/limits-per-container.md).

use resourceful_tests::{boot, config};
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
    let disk = scratch("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cfg = config("blk", 1);
    cfg.disks = vec![DiskConfig {
        path: disk.clone(),
        read_only: false,
    }];
    cfg.container_limits = limits;

    let run = boot(cfg);
    let _ = std::fs::remove_file(&disk);

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
