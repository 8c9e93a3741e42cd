//! The readers against the fixture trees under tests/fixtures (hostile
//! files included).

mod common;

use accounting::agent::MAX_CGROUPS;
use common::{fixture, TempDir};
use guest_agent::cgroup;
use guest_agent::procfs::{ProcReader, Units};

const UNITS: Units = Units {
    clk_tck: 100,
    page_size: 4096,
};

#[test]
fn a_scan_lists_good_processes_and_counts_the_rest() {
    let mut r = ProcReader::new(fixture("proc"), UNITS);
    let (ps, stats) = r.scan().unwrap();
    let pids: Vec<u32> = ps.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [1, 42, 88, 99]);
    assert_eq!(stats.vanished, 1, "pid 100 has no stat");
    assert_eq!(stats.unreadable, 1, "pid 77's stat is truncated");
    assert_eq!(stats.omitted, 0);

    let init = &ps[0];
    assert_eq!(
        (init.comm.as_str(), init.ppid, init.cgroup.as_str()),
        ("init", 0, "/init.scope")
    );
    assert_eq!(init.usage.user_ns, 1_000_000_000);
    assert_eq!(init.usage.system_ns, 500_000_000);
    assert_eq!(
        (init.usage.voluntary_switches, init.usage.involuntary_switches),
        (10, 2)
    );
    assert_eq!((init.read_bytes, init.write_bytes), (4096, 8192));
    assert_eq!(init.rss_bytes, 300 * 4096);
    assert!(init.threads.is_empty(), "a one-thread process lists no thread");
    assert_eq!(init.threads_omitted, 0);
}

#[test]
fn a_hostile_comm_and_threads_are_read() {
    let mut r = ProcReader::new(fixture("proc"), UNITS);
    let p = r.process(42).unwrap();
    assert_eq!(p.comm, "a) (b");
    assert_eq!(p.cgroup, "/system.slice/web.service");
    assert_eq!(p.usage.user_ns, 2_500_000_000);
    let tids: Vec<(u32, &str)> = p.threads.iter().map(|t| (t.tid, t.comm.as_str())).collect();
    assert_eq!(tids, [(42, "a) (b"), (43, "worker 1")]);
    assert_eq!(p.threads[1].usage.user_ns, 500_000_000);
    // Switches are summed over the threads, not the leader's `status`.
    assert_eq!(
        (p.usage.voluntary_switches, p.usage.involuntary_switches),
        (12, 14)
    );
    assert_eq!(p.threads_omitted, 0);
}

#[test]
fn missing_io_and_fields_read_as_zero() {
    let mut r = ProcReader::new(fixture("proc"), UNITS);
    let db = r.process(88).unwrap();
    assert_eq!((db.read_bytes, db.write_bytes), (0, 0));
    assert_eq!(db.cgroup, "/system.slice/db.service");
    let quiet = r.process(99).unwrap();
    assert_eq!(
        (quiet.usage.voluntary_switches, quiet.usage.involuntary_switches),
        (0, 0)
    );
    assert!(quiet.threads.is_empty(), "no task directory: no thread listed");
}

#[test]
fn threads_can_be_left_unlisted() {
    let mut r = ProcReader::new(fixture("proc"), UNITS);
    r.list_threads = false;
    let p = r.process(42).unwrap();
    assert!(p.threads.is_empty());
    assert_eq!(p.threads_omitted, 2);
    assert_eq!(p.usage.voluntary_switches, 12);
}

#[test]
fn the_cgroup_fixture_walks_breadth_first() {
    let (gs, stats) = cgroup::walk(&fixture("cgroup"), MAX_CGROUPS).unwrap();
    let paths: Vec<&str> = gs.iter().map(|g| g.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/",
            "/system.slice",
            "/user.slice",
            "/system.slice/db.service",
            "/system.slice/web.service"
        ]
    );
    assert_eq!(stats, cgroup::CgroupStats::default());
    let root = &gs[0];
    assert_eq!(
        (root.cpu_usage_us, root.cpu_user_us, root.cpu_system_us),
        (9000, 6000, 3000)
    );
    assert_eq!(
        (
            root.io_read_bytes,
            root.io_write_bytes,
            root.io_read_ops,
            root.io_write_ops
        ),
        (1100, 2200, 11, 22)
    );
    assert_eq!(root.memory_current, None);
    let cpu = root.cpu_pressure.unwrap();
    assert_eq!(
        (cpu.some_avg10, cpu.some_total_us, cpu.full_total_us),
        (1.0, 42, 0)
    );
    assert_eq!(root.io_pressure.unwrap().full_total_us, 500);
    let sys = &gs[1];
    assert_eq!((sys.cpu_nr_throttled, sys.cpu_throttled_us), (3, 77));
    assert_eq!(sys.memory_current, Some(1_048_576));
    assert_eq!(sys.cpu_pressure, None);
    let user = &gs[2];
    assert_eq!(user.cpu_usage_us, 12, "a truncated cpu.stat keeps what it has");
    let db = &gs[3];
    assert_eq!(db.memory_current, None, "\"max\" is not a number");
    let web = &gs[4];
    assert_eq!(web.memory_pressure, None, "garbage pressure reads as absent");
}

#[test]
fn the_walk_stops_at_its_bound_and_counts() {
    let d = TempDir::new("walk");
    for a in 0..5 {
        for b in 0..5 {
            std::fs::create_dir_all(d.join(&format!("g{a}/h{b}"))).unwrap();
        }
    }
    let (gs, stats) = cgroup::walk(&d.0, 8).unwrap();
    assert_eq!(gs.len(), 8);
    assert_eq!(stats.omitted, 31 - 8);
    // Breadth-first: the root, every top-level cgroup, then g0's children.
    assert_eq!(gs[5].path, "/g4");
    assert_eq!(gs[6].path, "/g0/h0");
    // A name the protocol cannot carry is skipped and counted.
    std::fs::create_dir(d.join("bad\nname")).unwrap();
    let (gs, stats) = cgroup::walk(&d.0, MAX_CGROUPS).unwrap();
    assert_eq!(gs.len(), 31);
    assert_eq!(stats.omitted, 1);
}

#[test]
fn a_missing_root_is_an_error_not_a_panic() {
    assert!(cgroup::walk(&fixture("nope"), 10).is_err());
    assert!(ProcReader::new(fixture("nope"), UNITS).scan().is_err());
}
