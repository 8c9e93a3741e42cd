//! Guest CPU limits (docs/limits-per-container.md, "Guest CPU") in real
//! VMs running the `cpucap` guest: set live through `/v1/limits`, refused
//! in bad forms, the tenant limit, and a held vCPU stopping with its VM.

use std::path::Path;
use std::time::Duration;

use resourceful_tests::{api_json, boot, config, scratch_dir, wait_for, Run};
use serde_json::Value;
use vmm::api::client;
use vmm::vcpu::exit::VmEnd;

/// The VMs of this binary run one at a time: their shares are measured
/// in run time, and VMs of the same test binary competing for the host's
/// cores only add noise.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_vm() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn call(sock: &Path, method: &str, target: &str, body: Option<&str>) -> (u16, Value) {
    let r = client::request(sock, method, target, body).expect("a request over the API socket");
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {target}: {e}: {}", r.body));
    (r.status, v)
}

/// `guest_run_ns` and `cpu.throttled_ns` of container `path` now.
fn cpu_of(sock: &Path, path: &str) -> (u64, u64) {
    let all = api_json(sock, "/v1/containers?limit=1000");
    let Some(c) = all.as_array().unwrap().iter().find(|c| c["path"] == path) else {
        return (0, 0);
    };
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    (
        n(&c["charges"]["guest_run_ns"]),
        n(&c["charges"]["cpu"]["throttled_ns"]),
    )
}

fn hog(vcpus: u8, limits: &[&str], time_limit_ms: u64) -> Run {
    let _one = one_vm();
    let mut cfg = config("cpucap mode=hog", vcpus);
    cfg.container_limits = limits
        .iter()
        .map(|l| l.parse().expect("a valid --limit"))
        .collect();
    cfg.time_limit_ms = Some(time_limit_ms);
    let run = boot(cfg);
    assert_eq!(run.end, VmEnd::TimeLimit, "console:\n{}", run.console);
    run.assert_conserved();
    run
}

/// A CPU limit set live on a container that spins: refused forms answer
/// 400 naming the expected form and change nothing; the accepted one
/// shows its share and the `cpu` limiter's state, and from then on the
/// container is held (and only it).
#[test]
fn a_cpu_limit_set_live_holds_the_container_and_bad_forms_are_refused() {
    let _one = one_vm();
    let dir = scratch_dir("cpu-live");
    let sock = dir.join("api.sock");
    let mut cfg = config("cpucap mode=hog", 2);
    cfg.api_sock = Some(sock.clone());
    cfg.time_limit_ms = Some(3_000);
    let vm = std::thread::spawn(move || boot(cfg));
    wait_for("the API socket", &vm, || sock.exists().then_some(()));
    wait_for("cap-a to run", &vm, || {
        (cpu_of(&sock, "cap-a").0 > 0).then_some(())
    });
    assert_eq!(cpu_of(&sock, "cap-a").1, 0, "not held while unlimited");

    for (body, why) in [
        (r#"{"cpu": "20%"}"#, "PERCENT%/PERIOD"),
        (r#"{"cpu": "0%/100ms"}"#, "out of range"),
        (r#"{"cpu": "20%/5ms"}"#, "out of range"),
        (r#"{"cpu": "20.5%/100ms"}"#, "whole percent"),
        (r#"{"cpu": "20%/100ms", "cpu": "10%/100ms"}"#, "given twice"),
    ] {
        let (status, v) = call(&sock, "PUT", "/v1/limits/cap-a", Some(body));
        assert_eq!(status, 400, "{body}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(why) && e.contains("cpu"), "{body}: {e}");
    }
    let (_, v) = call(&sock, "GET", "/v1/limits", None);
    assert_eq!(
        v["limits"],
        serde_json::json!([]),
        "refused changes change nothing"
    );

    let (status, v) = call(&sock, "PUT", "/v1/limits/cap-a", Some(r#"{"cpu": "10%/100ms"}"#));
    assert_eq!(status, 200, "{v}");
    let (_, v) = call(&sock, "GET", "/v1/limits/cap-a", None);
    assert_eq!(
        v["cpu"],
        serde_json::json!({"percent": 10, "period_ms": 100}),
        "{v}"
    );
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{v}");
    assert_eq!(devices[0]["device"], "cpu");
    assert!(devices[0]["ops_tokens"].as_u64().unwrap() <= 10_000_000, "{v}");
    let held = wait_for("cap-a to be held", &vm, || {
        let (_, held) = cpu_of(&sock, "cap-a");
        (held > 0).then_some(held)
    });
    assert!(held > 0);
    // Removed: the hold in progress is lifted at the next tick (and
    // charged then); no hold follows.
    let (status, _) = call(&sock, "DELETE", "/v1/limits/cap-a", None);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let (run0, held0) = cpu_of(&sock, "cap-a");
    std::thread::sleep(Duration::from_millis(500));
    let (run1, held1) = cpu_of(&sock, "cap-a");
    assert_eq!(held1, held0, "no hold after the limit was removed");
    assert!(run1 > run0, "cap-a runs again");
    let run = vm.join().expect("the VM thread");
    assert_eq!(run.end, VmEnd::TimeLimit, "{}", run.console);
    run.assert_conserved();
    let (a, b) = (run.container("cap-a"), run.container("cap-b"));
    assert!(a.charges.cpu.throttle_events > 0 && a.charges.cpu.throttled_ns > 0);
    assert_eq!(b.charges.cpu, Default::default());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A limit on the tenant holds every vCPU: two vCPUs spinning for two
/// containers get 50 % of one vCPU together (± a generous margin), and both
/// containers are charged holds.
#[test]
fn the_tenant_cpu_limit_caps_the_whole_vm() {
    let run = hog(2, &["tenant:cpu=50%/100ms"], 3_000);
    let wall = run.report.vm.wall_ns as f64;
    let total = run.report.totals.guest_run_ns as f64 / wall;
    eprintln!("run {total:.3} of the wall time");
    // Unlimited, two spinning vCPUs run up to 2. Generous: on a loaded
    // host a vCPU thread waiting for a core is charged run time (it is
    // inside KVM_RUN), and the debt left at the end of a short run is not
    // paid back (one run measured 0.674).
    assert!((0.35..=0.8).contains(&total), "the VM ran {total:.3} vCPUs");
    for c in ["cap-a", "cap-b"] {
        assert!(run.container(c).charges.cpu.throttled_ns > 0, "{c} held");
    }
}

/// A vCPU held for a long time (1 % of 10 s: 100 ms of run time, then a
/// hold of about 10 s) stops with its VM: the VM's 1 s time limit ends it
/// on time, and the hold is charged up to the stop.
#[test]
fn a_held_vcpu_stops_with_the_vm() {
    let run = hog(1, &["cap-a:cpu=1%/10s"], 1_000);
    let wall = Duration::from_nanos(run.report.vm.wall_ns);
    assert!(
        wall < Duration::from_millis(1_500),
        "the VM took {wall:?} to stop"
    );
    let a = run.container("cap-a");
    assert!(a.charges.guest_run_ns < 300_000_000, "{:?}", a.charges);
    assert!(a.charges.cpu.throttled_ns > 500_000_000, "{:?}", a.charges.cpu);
}
