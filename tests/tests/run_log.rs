//! Exact guest run time per request from the switch log (docs/tag-abi.md,
//! "The switch log"): the `run-log` guest spins k·N TSC cycles in request k
//! between two logged switches, with no exit in between, and prints the
//! cycles it measured; each request must be charged that time, converted
//! with the TSC rate the VMM calibrated, to within a few microseconds —
//! where sampling at 250 Hz gives a request of under 4 ms either nothing or
//! a whole sample period.

use accounting::resource::Provenance;
use resourceful_tests::{boot, config, Run};

/// What the guest printed: `(request id, cycles between its two switches)`.
fn spans(run: &Run) -> Vec<(u32, u64)> {
    run.console
        .lines()
        .filter_map(|l| l.strip_prefix("run-log: request "))
        .map(|l| {
            let (id, cycles) = l.split_once(" cycles ").expect("request line");
            (id.trim().parse().unwrap(), cycles.trim().parse().unwrap())
        })
        .collect()
}

/// The containers' run time adds up to the one vCPU's measured run time.
fn assert_run_time_conserved(run: &Run) {
    let charged: u64 = run.report.containers.iter().map(|c| c.charges.guest_run_ns).sum();
    assert_eq!(charged, run.report.vcpus[0].charges.guest_run_ns);
}

fn run_log(cycles: u64) -> Run {
    let mut cfg = config("run-log", 1);
    cfg.cmdline = Some(format!("scenario=run-log cycles={cycles}"));
    boot(cfg)
}

#[test]
fn each_request_is_charged_the_run_time_between_its_logged_switches() {
    // 1..6 units of 1.5 M cycles: about 0.5 to 3 ms each at 3 GHz, all
    // shorter than one 4 ms sample period.
    let run = run_log(1_500_000);
    run.assert_clean();
    let log = run.report.vm.run_log.expect("run_log in the report");
    if log.tsc_hz == 0 {
        // The books' clock is not the TSC here: switches cannot be placed.
        assert_eq!(log.exact_ns, 0);
        return;
    }
    assert_eq!((log.vcpus_logging, log.switches, log.lost), (1, 12, 0), "{log:?}");
    let spans = spans(&run);
    assert_eq!(
        spans.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>(),
        "{}",
        run.console
    );
    let mut report = Vec::new();
    for (id, cycles) in spans {
        let want = u64::try_from(u128::from(cycles) * 1_000_000_000 / u128::from(log.tsc_hz)).unwrap();
        let got = run.request(id).charges.guest_run_ns;
        report.push((id, want, got));
    }
    // Within 5 us of what the guest measured: the placement is exact up to
    // the conversion and the TSC offset read, not up to a sample period.
    for &(id, want, got) in &report {
        assert!(
            got.abs_diff(want) <= 5_000,
            "request {id}: charged {got} ns, ran {want} ns; all: {report:?}"
        );
        assert_eq!(
            run.request(id).charges.exits_total.count,
            0,
            "no exit in a request"
        );
    }
    let svc = run.container("svc");
    assert_eq!(svc.provenance.guest_run, Provenance::Exact);
    // The container holds exactly its requests' run time: it did nothing else.
    assert_eq!(svc.charges.guest_run_ns, report.iter().map(|r| r.2).sum::<u64>());
    // All run time is placed by the log; none is created: the principals'
    // run time adds up to the vCPU's measured run time.
    assert_eq!(log.sampled_ns, 0, "{log:?}");
    assert_run_time_conserved(&run);
    assert!(log.exact_ns <= run.report.totals.guest_run_ns);
}

#[test]
fn without_a_log_run_time_stays_sampled() {
    let mut cfg = config("spin", 1);
    cfg.cmdline = Some("scenario=spin spin_iters=20000000".into());
    let run = boot(cfg);
    run.assert_clean();
    let log = run.report.vm.run_log.expect("run_log in the report");
    assert_eq!(
        (log.vcpus_logging, log.switches, log.exact_ns, log.sampled_ns),
        (0, 0, 0, 0)
    );
    assert_eq!(run.container("cpu-a").provenance.guest_run, Provenance::Sampled);
}

#[test]
fn a_lying_log_moves_no_time_out_of_the_vcpus_run_time() {
    let mut cfg = config("run-log", 1);
    cfg.cmdline = Some("scenario=run-log cycles=500000 lie=1".into());
    let run = boot(cfg);
    run.assert_clean();
    assert!(run.console.contains("run-log: lied"), "{}", run.console);
    let log = run.report.vm.run_log.expect("run_log in the report");
    if log.tsc_hz == 0 {
        return;
    }
    // The sequence moved back and five switches overran the three entries.
    assert!(log.lost > 0, "{log:?}");
    // (Whose run time fell in the stretches that could not be placed, and
    // so which containers' provenance turns `sampled`, depends on when the
    // sampler read: not asserted.)
    assert!(log.sampled_ns > 0, "{log:?}");
    // Whatever the log said, the principals hold exactly the vCPU's
    // measured run time, and request 7 no more than the whole run.
    assert_run_time_conserved(&run);
    let vcpu = run.report.vcpus[0].charges.guest_run_ns;
    assert!(run.request(7).charges.guest_run_ns <= vcpu);
    // What the logging vCPU charged, exactly or not, is within its run time.
    assert!(log.exact_ns + log.sampled_ns <= vcpu, "{log:?}");
}
