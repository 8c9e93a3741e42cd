//! virtio-blk end to end: a real file behind a real VM, each request charged
//! to the principal of the vCPU that notified the queue, and the file's
//! contents checked afterwards. Expected numbers: `docs/guest-scenarios.md`.

use accounting::resource::BlockCharge;
use resourceful_tests::{boot, boot_blk, config, counts};
use vmm::config::DiskConfig;

const SECTOR: usize = 512;

fn disk(name: &str, bytes: usize) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("resourceful-blk-{}-{name}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; bytes]).unwrap();
    path
}

#[test]
fn block_requests_are_charged_to_the_notifying_principal_and_reach_the_file() {
    let path = disk("rw", 1 << 20);
    let mut cfg = config("blk", 1);
    cfg.disks = vec![DiskConfig {
        path: path.clone(),
        read_only: false,
    }];

    let run = boot(cfg);
    let contents = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);

    run.assert_clean();
    // The file: sectors 8..40 patterned by the writer's requests, the rest zero.
    assert_eq!(contents.len(), 1 << 20, "the file keeps its size");
    for (i, b) in contents.iter().enumerate() {
        let sector = i / SECTOR;
        let want = if (8..40).contains(&sector) {
            0x40 + u8::try_from(sector / 8).unwrap()
        } else {
            0
        };
        assert_eq!(*b, want, "byte {i} (sector {sector})");
    }

    let block = |path: &str| run.container(path).charges.block;
    assert_eq!(
        block("writer"),
        BlockCharge {
            writes: 5,
            errors: 1,
            bytes_written: 4 * 4096,
            ..without_time(block("writer"))
        }
    );
    assert_eq!(
        block("reader"),
        BlockCharge {
            reads: 4,
            bytes_read: 4 * 4096,
            ..without_time(block("reader"))
        }
    );
    assert_eq!(
        block("flusher"),
        BlockCharge {
            flushes: 1,
            ..without_time(block("flusher"))
        }
    );
    assert_eq!(
        block("unattributed"),
        BlockCharge {
            other: 1,
            ..without_time(block("unattributed"))
        }
    );
    for r in 1..=4 {
        let b = run.request(r).charges.block;
        assert_eq!(
            (b.writes, b.bytes_written, b.errors, b.ops()),
            (1, 4096, 0, 1),
            "request {r}"
        );
    }
    for r in 11..=14 {
        let b = run.request(r).charges.block;
        assert_eq!((b.reads, b.bytes_read, b.ops()), (1, 4096, 1), "request {r}");
    }
    // Device work carries real time: CPU on the device thread, latency from
    // the notification to completion.
    let total = run.report.totals.block;
    assert_eq!(total.ops(), 11);
    assert!(total.latency_ns > 0 && total.device_ns > 0, "{total:?}");
    // Bare-metal guests poll: no irqchip, no interrupt reaches them.
    assert_eq!(run.report.totals.interrupts, 0);

    // Exits: one notify per request, charged like any MMIO write.
    assert_eq!(run.counts_of("unattributed"), [0, 22, 14, 24, 0]);
    assert_eq!(run.counts_of("writer"), [0, 0, 0, 5, 0]);
    assert_eq!(run.counts_of("reader"), [0, 0, 0, 4, 0]);
    assert_eq!(run.counts_of("flusher"), [0, 0, 0, 1, 0]);
    for r in (1..=4).chain(11..=14) {
        assert_eq!(counts(&run.request(r).charges), [0, 0, 0, 1, 0], "request {r}");
    }
    assert!(
        run.report.guest_errors.is_empty(),
        "{:?}",
        run.report.guest_errors
    );

    // The device's own counters reach the report: 11 requests, the one past
    // the end malformed (it had a status byte, so nothing was dropped), one
    // activation after the driver's reset, one notify per request.
    let disk = run
        .report
        .devices
        .iter()
        .find(|d| d.name == "disk0")
        .expect("disk0 in the report's devices");
    assert_eq!(disk.kind, "virtio-blk");
    let want: std::collections::BTreeMap<String, u64> = [
        ("requests", 11),
        ("bytes_read", 4 * 4096),
        ("bytes_written", 4 * 4096),
        ("io_errors", 0),
        ("unsupported", 0),
        ("malformed", 1),
        ("dropped", 0),
        ("read_only_refusals", 0),
        ("queue_errors", 0),
        ("interrupts", 11),
        ("ignored_notifications", 0),
        ("throttled", 0),
        ("throttle_stalls", 0),
        ("transport.bad_accesses", 0),
        ("transport.refused_features", 0),
        ("transport.failed_activations", 0),
        ("transport.activations", 1),
        ("transport.resets", 1),
        ("transport.notifications", 11),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(disk.counters, want);
}

/// `b` with only its times kept, so a struct literal can state every count.
fn without_time(b: BlockCharge) -> BlockCharge {
    BlockCharge {
        device_ns: b.device_ns,
        latency_ns: b.latency_ns,
        ..BlockCharge::default()
    }
}

#[test]
fn a_missing_disk_file_is_a_clear_error_naming_the_flag() {
    let mut cfg = config("blk", 1);
    cfg.disks = vec![DiskConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: false,
    }];
    let err = vmm::run(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("--disk") && err.contains("/nonexistent/disk.img"),
        "{err}"
    );
}

#[test]
fn an_explicit_request_tag_outranks_the_notifying_vcpu() {
    let path = disk("tagged", 1 << 20);
    let mut cfg = config("blk-tagged", 1);
    cfg.disks = vec![DiskConfig {
        path: path.clone(),
        read_only: false,
    }];

    let run = boot(cfg);
    let _ = std::fs::remove_file(&path);

    run.assert_clean();
    let reads = |c: &BlockCharge| (c.reads, c.bytes_read, c.ops());
    // The vCPU's slot said `svc` for all three notifications...
    assert_eq!(run.counts_of("svc"), [0, 0, 0, 3, 0]);
    // ...but the first read carried the explicit tag of bg's request 7,
    assert_eq!(reads(&run.request(7).charges.block), (1, 4096, 1));
    assert_eq!(reads(&run.container("bg").charges.block), (1, 4096, 1));
    assert_eq!(run.counts_of("bg"), [0; 5]);
    // the second none (so the notifier, svc, pays),
    assert_eq!(reads(&run.container("svc").charges.block), (1, 4096, 1));
    // and the third named an undeclared container: unattributed, counted.
    assert_eq!(reads(&run.container("unattributed").charges.block), (1, 4096, 1));
    assert_eq!(run.error("tag_unknown_container"), 1);
    assert_eq!(run.report.guest_errors.len(), 1, "{:?}", run.report.guest_errors);
    assert_eq!(run.counts_of("unattributed"), [0, 18 + 17 + 1, 1 + 13, 3 + 20, 0]);
}

/// `writer` limited to one request per 30 ms (a bucket of 1 op), `reader`
/// and `flusher` unlimited, in one VM running the `blk` scenario: the
/// counts stay exact, only `writer` is throttled, and the bucket arithmetic
/// bounds how many of its requests could have been held.
#[test]
fn a_limited_container_is_throttled_and_the_others_are_not() {
    let run = boot_blk("limited", vec!["writer:blk-ops=1/30ms".parse().unwrap()]);

    run.assert_clean();
    let block = |path: &str| run.container(path).charges.block;
    let (w, r, f) = (block("writer"), block("reader"), block("flusher"));
    // The same exact counts as without a limit: held, never dropped.
    assert_eq!((w.writes, w.errors, w.bytes_written), (5, 1, 4 * 4096));
    assert_eq!((r.reads, r.bytes_read), (4, 4 * 4096));
    assert_eq!(f.flushes, 1);
    // The bucket starts full with 1 token: the first of the 5 writes always
    // passes, so at most 4 are held; the guest issues them back to back, so
    // at least one finds the bucket empty.
    assert!((1..=4).contains(&w.throttle_events), "{w:?}");
    assert!(w.throttled_ns > 0, "{w:?}");
    assert!(
        w.throttled_ns <= w.latency_ns,
        "held time is part of latency: {w:?}"
    );
    for other in [r, f, block("unattributed")] {
        assert_eq!((other.throttle_events, other.throttled_ns), (0, 0), "{other:?}");
    }
    // Per request: the writer's requests 1..=4 carry their own holds, and
    // with the past-the-end write (charged to the container) they add up.
    let per_request: u64 = (1..=4)
        .map(|r| run.request(r).charges.block.throttle_events)
        .sum();
    assert!(per_request <= w.throttle_events && w.throttle_events <= per_request + 1);
    for r in 11..=14 {
        assert_eq!(run.request(r).charges.block.throttle_events, 0, "request {r}");
    }
    // The device counted the holds; conservation covers the new resource.
    let disk = run.report.devices.iter().find(|d| d.name == "disk0").unwrap();
    assert_eq!(disk.counters.get("throttled"), Some(&w.throttle_events));
    assert_eq!(disk.counters.get("throttle_stalls"), Some(&0));
    assert_eq!(
        run.conservation_line("block.throttle_events"),
        (w.throttle_events, w.throttle_events)
    );
    assert_eq!(
        run.conservation_line("block.throttled_ns"),
        (w.throttled_ns, w.throttled_ns)
    );
}

/// Separate read and write buckets in the `blk` scenario: `reader` may
/// read 4 KiB per 30 ms (`blk-read-bytes`) and write once a second, and
/// `writer` may read once a second (`blk-read-ops`). Only reads draw from
/// read buckets and only writes from write buckets: `reader`'s reads are
/// held, `writer` (which only writes) and `reader`'s write bucket never
/// hold anything.
#[test]
fn read_and_write_buckets_hold_only_their_kind_of_request() {
    let run = boot_blk(
        "rw-limited",
        vec![
            "reader:blk-read-bytes=4KiB/30ms,blk-write-ops=1/s"
                .parse()
                .unwrap(),
            "writer:blk-read-ops=1/s".parse().unwrap(),
        ],
    );

    run.assert_clean();
    let block = |path: &str| run.container(path).charges.block;
    let (w, r, f) = (block("writer"), block("reader"), block("flusher"));
    // The same exact counts as without a limit.
    assert_eq!((w.writes, w.errors, w.bytes_written), (5, 1, 4 * 4096));
    assert_eq!((r.reads, r.writes, r.bytes_read), (4, 0, 4 * 4096));
    assert_eq!(f.flushes, 1);
    // A full bucket of 4 KiB passes the first 4 KiB read; the guest reads
    // one after another, so at least one of the next three waits.
    assert!((1..=3).contains(&r.throttle_events), "{r:?}");
    assert!(r.throttled_ns > 0, "{r:?}");
    for other in [w, f, block("unattributed")] {
        assert_eq!((other.throttle_events, other.throttled_ns), (0, 0), "{other:?}");
    }
    let disk = run.report.devices.iter().find(|d| d.name == "disk0").unwrap();
    assert_eq!(disk.counters.get("throttled"), Some(&r.throttle_events));
    assert_eq!(
        run.conservation_line("block.throttle_events"),
        (r.throttle_events, r.throttle_events)
    );
}
