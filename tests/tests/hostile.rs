//! A hostile guest: garbage in the ring, bad registrations, floods of
//! declarations, a triple fault. The VMM survives, counts every mistake,
//! and its books still balance.

use resourceful_tests::{counts, run_scenario};
use vmm::vcpu::exit::VmEnd;

/// The number the guest printed after `key=`.
fn printed(console: &str, key: &str) -> u64 {
    let at = console
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("guest did not print {key}: {console}"));
    console[at + key.len() + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn garbage_in_the_ring_is_rejected_and_counted_one_by_one() {
    let run = run_scenario("garbage-ring", 1);
    run.assert_clean();
    let expected = [
        ("ring_bad_kind", 1),
        ("ring_bad_name", 3),
        ("ring_zero_id", 2),
        ("ring_duplicate_container", 1),
        ("ring_unknown_parent", 1),
        ("ring_unknown_container", 2),
        ("ring_unknown_request", 1),
        ("ring_duplicate_request", 1),
        ("ring_bad_seq", 1),
        ("tag_unknown_container", 3),
        ("tag_unknown_request", 2),
    ];
    for (name, n) in expected {
        assert_eq!(run.error(name), n, "{name}: {:?}", run.report.guest_errors);
    }
    assert_eq!(
        run.report.guest_errors.len(),
        expected.len(),
        "{:?}",
        run.report.guest_errors
    );
    // The VMM told the guest how many it rejected, skipped one included.
    assert_eq!(printed(&run.console, "rejected"), 13);
    assert_eq!(run.counts_of("unattributed"), [0, 58, 1, 3, 0]);
    assert_eq!(run.counts_of("good"), [0, 7, 0, 0, 0]);
    assert_eq!(counts(&run.request(12).charges), [0; 5]);
    assert_eq!(run.report.containers.len(), 2, "only unattributed and good exist");
    assert_eq!(run.report.declarations.containers_declared, 1);
}

#[test]
fn bad_registrations_are_refused_with_their_status_then_a_good_one_works() {
    let run = run_scenario("bad-register", 1);
    run.assert_clean();
    for (name, n) in [
        ("register_misaligned", 1),
        ("register_not_in_ram", 2),
        ("register_bad_length", 1),
        ("register_bad_header", 2),
        ("register_bad_geometry", 2),
        ("register_bad_command", 1),
    ] {
        assert_eq!(run.error(name), n, "{name}: {:?}", run.report.guest_errors);
    }
    assert_eq!(run.counts_of("unattributed"), [0, 40, 10, 28, 0]);
    assert_eq!(run.counts_of("ok"), [0, 4, 0, 0, 0]);
}

#[test]
fn a_million_containers_are_bounded_by_the_limit_and_the_rest_counted() {
    let run = run_scenario("container-flood", 1);
    run.assert_clean();
    let limit = u64::from(run.report.limits.max_containers);
    assert_eq!(printed(&run.console, "max_containers"), limit);
    assert_eq!(run.report.declarations.containers_declared, limit);
    assert_eq!(run.report.containers.len() as u64, limit + 1);
    assert_eq!(run.error("ring_container_limit"), 1_000_000 - limit);
    assert_eq!(printed(&run.console, "rejected"), 1_000_000 - limit);
    let forced = printed(&run.console, "forced_exits");
    assert_eq!(run.counts_of("unattributed"), [0, 111 + forced, 2, 3, 0]);
    assert_eq!(run.counts_of("c1"), [0, 10, 0, 0, 0]);
}

#[test]
fn a_flood_of_live_requests_is_bounded_by_the_limit() {
    let run = run_scenario("request-flood", 1);
    run.assert_clean();
    let limit = u64::from(run.report.limits.max_live_requests);
    assert_eq!(printed(&run.console, "max_live_requests"), limit);
    assert_eq!(run.report.declarations.requests_begun, limit);
    assert_eq!(run.error("ring_request_limit"), 100_000 - limit);
    let forced = printed(&run.console, "forced_exits");
    assert_eq!(run.counts_of("unattributed"), [0, 110 + forced, 2, 3, 0]);
    assert_eq!(counts(&run.request(1).charges), [0, 3, 0, 0, 0]);
    assert_eq!(run.container("r").requests.live, limit);
}

#[test]
fn a_triple_fault_still_yields_a_balanced_report() {
    let run = run_scenario("triple-fault", 1);
    assert_eq!(run.end, VmEnd::TripleFault);
    assert_eq!(run.report.vm.end, "triple_fault");
    assert!(run
        .report
        .vm
        .end_detail
        .as_deref()
        .unwrap_or("")
        .contains("triple-fault"));
    assert_eq!(run.counts_of("unattributed"), [0, 20, 1, 3, 0]);
    assert_eq!(run.counts_of("doomed"), [0, 2, 0, 0, 1]);
    run.assert_conserved();
}

/// tag-abi.md, "Bad accesses": an 8-byte access at `0xd000_0ffc` crosses the
/// accounting window's end; KVM splits it at the page boundary. The half
/// inside reaches the device as a 4-byte access at offset 0xffc (a bad
/// access: counted, a read gives all-ones); the half outside goes where its
/// address leads, here nowhere (`unhandled_io`, all-ones). Each half is an
/// exit of its own, charged like any other.
#[test]
fn an_access_straddling_the_accounting_window_is_split_and_each_half_judged() {
    let run = run_scenario("acct-straddle", 1);
    run.assert_clean();
    assert!(
        run.console.contains("acct-straddle: read all-ones"),
        "{}",
        run.console
    );
    let errors: Vec<(&str, u64)> = run
        .report
        .guest_errors
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(errors, [("device_bad_access", 2)]);
    assert_eq!(run.report.vm.unhandled_io, 2);
    let sites = &run.report.vm.unhandled_io_sites;
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(
        (
            sites[0].space.as_str(),
            sites[0].addr,
            sites[0].reads,
            sites[0].writes
        ),
        ("mmio", accounting::abi::ACCT_MMIO_BASE + 0x1000, 1, 1)
    );
    // Two MMIO writes and two MMIO reads: the store and the load, twice each.
    let c = counts(&run.container("unattributed").charges);
    assert_eq!((c[2], c[3]), (2, 2));
}

/// tag-abi.md: the slot is read once `KVM_RUN` returned, **before** the exit
/// is handled. The exit that unregisters the region is charged to the
/// container the slot named; after it, with no region, everything is
/// `unattributed`. (Read after handling, the write would be `unattributed`'s.)
#[test]
fn the_slot_is_read_before_the_exit_is_handled() {
    let run = run_scenario("slot-timing", 1);
    run.assert_clean();
    assert!(run.console.contains("slot-timing: done"), "{}", run.console);
    assert_eq!(counts(&run.container("worker").charges), [0, 0, 0, 1, 0]);
    let unattributed = counts(&run.container("unattributed").charges);
    // The REG_STATUS read and the 3 port writes came after it.
    assert_eq!(unattributed[2], 1 + 1, "register's status read and unregister's");
    assert!(unattributed[1] >= 3);
    assert!(run.report.conservation.holds);
}
