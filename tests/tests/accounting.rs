//! Real VMs, exact charges: every exit the guest causes lands on the principal
//! it declared, and the parts add up to the whole.
//!
//! Counts are `[port_in, port_out, mmio_read, mmio_write, shutdown]`; the
//! expected values come from `docs/guest-scenarios.md`.

use accounting::resource::Provenance;
use resourceful_tests::{counts, run_scenario};

#[test]
fn basic_charges_every_exit_to_its_container_and_request() {
    let run = run_scenario("basic", 1);
    run.assert_clean();
    assert_eq!(run.counts_of("unattributed"), [0, 26, 1, 3, 0]);
    assert_eq!(run.counts_of("web"), [0, 100, 0, 0, 0]);
    assert_eq!(run.counts_of("batch"), [0, 0, 0, 250, 0]);
    assert_eq!(run.report.containers.len(), 3);
    for id in 1..=10 {
        let r = run.request(id);
        assert_eq!((r.container_path.as_str(), r.state.as_str()), ("web", "finished"));
        assert_eq!(counts(&r.charges), [0, 10, 0, 0, 0], "request {id}");
    }
    let web = run.container("web");
    assert_eq!(
        (web.requests.begun, web.requests.ended, web.requests.live),
        (10, 10, 0)
    );
    assert_eq!(counts(&web.requests.charged), [0, 100, 0, 0, 0]);
    assert_eq!(run.report.totals.exits_total.count, 126 + 253 + 1);
    assert!(
        run.report.guest_errors.is_empty(),
        "{:?}",
        run.report.guest_errors
    );
    assert_eq!(run.report.tenant, "acme");
    assert_eq!(web.provenance.exits, Provenance::Exact);
    assert_eq!(
        run.container("unattributed").provenance.exits,
        Provenance::Unattributed
    );
    assert!(run.console.contains("basic: done"));
    // Every charged exit carries host handling time.
    assert!(run.report.totals.exits_total.host_ns > 0);
}

#[test]
fn two_vcpus_share_containers_and_each_is_charged_exactly() {
    let run = run_scenario("multi", 2);
    run.assert_clean();
    assert_eq!(run.counts_of("unattributed"), [0, 26, 1, 3, 0]);
    assert_eq!(run.counts_of("web"), [0, 210, 0, 0, 0]);
    assert_eq!(run.counts_of("batch"), [0, 0, 0, 240, 0]);
    assert_eq!(run.counts_of("web/api"), [0, 0, 18, 0, 0]);
    for id in (1..=15).chain(101..=115) {
        assert_eq!(counts(&run.request(id).charges), [0, 7, 0, 0, 0], "request {id}");
    }
    assert_eq!(run.report.requests.len(), 30);
    assert_eq!(counts(&run.report.vcpus[0].charges), [0, 131, 10, 123, 0]);
    assert_eq!(counts(&run.report.vcpus[1].charges), [0, 105, 9, 120, 0]);
}

#[test]
fn demo_workload_charges_each_request_by_its_formula() {
    let run = run_scenario("demo", 2);
    run.assert_clean();
    assert_eq!(run.counts_of("unattributed"), [0, 24, 1, 3, 0]);
    assert_eq!(run.counts_of("frontend"), [0, 951 + 40, 0, 160, 0]);
    assert_eq!(run.counts_of("frontend/api"), [0, 951, 0, 80, 0]);
    assert_eq!(run.counts_of("db"), [0, 492, 80, 60, 0]);
    assert_eq!(run.counts_of("batch"), [0, 0, 0, 400, 0]);
    assert_eq!(run.report.requests.len(), 200);
    for i in 1..=200u32 {
        let r = run.request(i);
        let path = if i % 5 == 0 {
            "db"
        } else if i % 2 == 0 {
            "frontend/api"
        } else {
            "frontend"
        };
        let reads = if i % 5 == 0 { 2 } else { 0 };
        assert_eq!(r.container_path, path, "request {i}");
        assert_eq!(r.external_id, 0xde00_0000 + u64::from(i));
        assert_eq!(
            counts(&r.charges),
            [0, u64::from(i % 7 + 1) * 3, reads, u64::from(i % 4), 0],
            "request {i}"
        );
    }
    // Requests cover all of api's and db's work and frontend's minus its 40.
    assert_eq!(
        counts(&run.container("frontend").requests.charged),
        [0, 951, 0, 160, 0]
    );
    assert_eq!(run.report.totals.exits_total.count, 2458 + 703 + 81);
}

#[test]
fn guest_run_time_is_sampled_to_the_current_container_and_conserved() {
    let mut cfg = resourceful_tests::config("spin", 1);
    cfg.cmdline = Some("scenario=spin spin_iters=100000000".into());
    let run = resourceful_tests::boot(cfg);
    run.assert_clean();
    let a = run.container("cpu-a").charges.guest_run_ns;
    let b = run.container("cpu-b").charges.guest_run_ns;
    let total = run.report.totals.guest_run_ns;
    // The guest spends L iterations in cpu-a, then L/4 in cpu-b: 4/5 and 1/5.
    let share = a as f64 / (a + b) as f64;
    assert!(
        (0.65..=0.92).contains(&share),
        "cpu-a share {share:.3} (a={a} b={b})"
    );
    assert!(
        a + b > total / 2,
        "the loops dominate run time: a+b={} total={total}",
        a + b
    );
    assert_eq!(run.report.vcpus[0].charges.guest_run_ns, total);
    // A polling guest never halts, and its one vCPU starts running at once:
    // nothing is left out of its run time.
    assert_eq!(run.report.vm.guest_run_source, "kvm_run_minus_halts");
    assert_eq!(
        (run.report.vm.vcpu_halted_ns, run.report.vm.vcpu_unstarted_ns),
        (0, 0)
    );
    assert!(
        total <= run.report.vm.wall_ns,
        "run {total} ns within wall {} ns",
        run.report.vm.wall_ns
    );
    assert_eq!(run.container("cpu-a").provenance.guest_run, Provenance::Sampled);
    assert_eq!(run.counts_of("cpu-a"), [0; 5]);
    assert_eq!(run.counts_of("cpu-b"), [0; 5]);
}

#[test]
fn guest_exit_status_is_propagated() {
    let run = run_scenario("exit-code", 1);
    assert_eq!(run.end, vmm::vcpu::exit::VmEnd::GuestExit(7));
    assert_eq!(run.report.vm.guest_status, Some(7));
    assert_eq!(run.counts_of("unattributed"), [0, 1, 0, 0, 0]);
    run.assert_conserved();
}

#[test]
fn accounting_off_charges_nothing_but_runs_the_same_guest() {
    let mut cfg = resourceful_tests::config("basic", 1);
    cfg.accounting = false;
    let run = resourceful_tests::boot(cfg);
    assert_eq!(run.end, vmm::vcpu::exit::VmEnd::GuestExit(0));
    assert_eq!(run.report.totals.exits_total.count, 0);
    assert!(!run.report.vm.accounting);
    assert_eq!(
        run.report.vm.guest_run_source, "",
        "nothing measured, no source claimed"
    );
}

/// The workload of the exit-path scaling benchmark: every vCPU makes its
/// port writes under its own container (even vCPUs `cpu-a`, odd `cpu-b`).
#[test]
fn every_vcpu_s_exits_are_charged_to_its_container_under_contention() {
    let run = run_scenario("exits exits=1000", 4);
    run.assert_clean();
    assert_eq!(counts(&run.container("cpu-a").charges), [0, 2000, 0, 0, 0]);
    assert_eq!(counts(&run.container("cpu-b").charges), [0, 2000, 0, 0, 0]);
    for v in &run.report.vcpus {
        assert!(v.charges.exits_total.count >= 1000, "vCPU {}", v.id);
    }
    assert!(run.report.conservation.holds);
}
