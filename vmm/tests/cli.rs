//! The `resourceful` binary as a user runs it: real VMs, real processes.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use accounting::report::Report;

fn resourceful(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("resourceful-cli-{}-{name}", std::process::id()))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_json_is_the_only_thing_on_stdout_and_balances() {
    let out = resourceful(&["demo", "--vms", "1", "--json", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("stdout is one JSON report");
    assert_eq!(report.schema, "resourceful.report/v1");
    assert_eq!((report.tenant.as_str(), report.vm.vcpus), ("acme", 2));
    assert!(report.conservation.holds);
    assert_eq!(report.requests.len(), 200);
    // The console went to stderr.
    assert!(stderr(&out).contains("demo: done"));
}

#[test]
fn demo_table_names_every_container() {
    let out = resourceful(&["demo", "--vms", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "unattributed",
        "frontend",
        "frontend/api",
        "db",
        "batch",
        "tenant total",
        "conservation: holds",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
}

#[test]
fn guest_status_becomes_the_exit_code() {
    let out = resourceful(&[
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=exit-code",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}

#[test]
fn a_guest_given_by_path_boots_and_report_json_is_written() {
    let path = scratch("basic.json");
    let out = resourceful(&[
        "run",
        "--kernel",
        images::TEST_GUEST_PATH,
        "--cmdline",
        "scenario=basic",
        "--report-json",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(report.container("web").unwrap().charges.exits_total.count, 100);
    assert_eq!(report.vm.kernel, images::TEST_GUEST_PATH);
}

#[test]
fn a_triple_fault_exits_nonzero_with_a_clear_message_and_still_reports() {
    let path = scratch("tf.json");
    let out = resourceful(&[
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=triple-fault",
        "--report-json",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("triple-faulted"), "{}", stderr(&out));
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(report.vm.end, "triple_fault");
    assert!(report.conservation.holds);
}

#[test]
fn the_linux_protocol_elf_path_runs_a_plain_cpl0_elf() {
    let out = resourceful(&["run", "--kernel", "builtin:exit-cpl0", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.vm.boot, "linux");
    assert_eq!(stderr(&out), "ok\n");
    // "ok\n" is three port writes, the exit one more; all unattributed: a
    // plain ELF declares nothing.
    assert_eq!(report.totals.exits_total.count, 4);
    assert_eq!(
        report
            .container("unattributed")
            .unwrap()
            .charges
            .exits_total
            .count,
        4
    );
}

/// The guest of the Firecracker comparison (`vmm/benches/vs_firecracker.rs`)
/// makes exactly its count of port writes plus the i8042 reset, and the
/// books' clock is named in the report.
#[test]
fn the_exit_loop_guest_makes_exactly_its_exits_and_resets() {
    let path = scratch("exit-loop");
    std::fs::write(&path, images::exit_loop(1000)).unwrap();
    let out = resourceful(&["run", "--kernel", path.to_str().unwrap(), "--json"]);
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.vm.end, "reset");
    let exits = report.totals.exits_of(accounting::resource::ExitReason::PortOut);
    assert_eq!((exits.count, report.totals.exits_total.count), (1001, 1001));
    assert!(["tsc", "monotonic"].contains(&report.vm.clock_source.as_str()));
    assert!(report.conservation.holds);
}

#[test]
fn user_mistakes_name_the_flag_to_fix() {
    let out = resourceful(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--kernel"), "{}", stderr(&out));

    let not_a_kernel = scratch("not-a-kernel");
    std::fs::write(&not_a_kernel, b"just some text, not a kernel").unwrap();
    let out = resourceful(&["run", "--kernel", not_a_kernel.to_str().unwrap()]);
    let _ = std::fs::remove_file(&not_a_kernel);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bzImage") && stderr(&out).contains("--kernel"),
        "{}",
        stderr(&out)
    );

    let out = resourceful(&["demo", "--vms", "1", "--tenant", "no spaces please"]);
    assert!(stderr(&out).contains("--tenant"), "{}", stderr(&out));
    let out = resourceful(&["demo", "--vms", "1", "--vcpus", "0"]);
    assert!(stderr(&out).contains("--vcpus"), "{}", stderr(&out));
    let out = resourceful(&["demo", "--vms", "1", "--mem-mib", "1"]);
    assert!(stderr(&out).contains("--mem-mib"), "{}", stderr(&out));
    let out = resourceful(&["run", "--kernel", "builtin:nope"]);
    assert!(stderr(&out).contains("builtin:test-guest"), "{}", stderr(&out));
    for bad in ["web", "web:blk-ops=0/s", "web:blk-ops=5/h", "web:iops=5/s"] {
        let out = resourceful(&["demo", "--vms", "1", "--limit", bad]);
        assert_ne!(out.status.code(), Some(0), "{bad}");
        let e = stderr(&out);
        assert!(e.contains("--limit") && e.contains("blk-ops=RATE"), "{bad}: {e}");
    }
    let out = resourceful(&[
        "demo",
        "--vms",
        "1",
        "--limit",
        "a:blk-ops=1/s",
        "--limit",
        "a:blk-ops=2/s",
    ]);
    assert!(stderr(&out).contains("given twice"), "{}", stderr(&out));
}

#[test]
fn a_limits_file_is_read_and_its_mistakes_name_the_file_line_and_form() {
    let file = scratch("limits.json");
    let f = file.to_str().unwrap();
    // A mistake on line 2: the file, the line and the expected form.
    std::fs::write(
        &file,
        "{\"limits\": [\n  {\"container\": \"a\", \"blk-ops\": \"0/s\"}]}",
    )
    .unwrap();
    let out = resourceful(&["demo", "--vms", "1", "--limits", f]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("--limits {f}: limit a: blk-ops")) && e.contains("line 2"),
        "{e}"
    );
    assert!(e.contains(r#"expected {"limits": [{"container": "PATH""#), "{e}");
    // A path both in the file and a flag is refused; a missing file is named.
    std::fs::write(&file, r#"{"limits": [{"container": "api", "blk-ops": "1/s"}]}"#).unwrap();
    let out = resourceful(&["demo", "--vms", "1", "--limits", f, "--limit", "api:blk-ops=2/s"]);
    assert!(stderr(&out).contains("also given as --limit"), "{}", stderr(&out));
    let out = resourceful(&["demo", "--vms", "1", "--limits", "/nonexistent/limits.json"]);
    assert!(
        stderr(&out).contains("--limits /nonexistent/limits.json: cannot open"),
        "{}",
        stderr(&out)
    );
    // A valid file: the VM runs (the demo does no I/O the limits hold).
    std::fs::write(
        &file,
        r#"{"limits": [{"container": "api", "blk-ops": "1/s"}, {"container": "tenant", "net-rx-frames": "10/s"}]}"#,
    )
    .unwrap();
    let out = resourceful(&["demo", "--vms", "1", "--json", "--limits", f]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigterm_stops_a_busy_guest_and_the_report_is_still_written() {
    let path = scratch("sig.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args([
            "run",
            "--kernel",
            "builtin:test-guest",
            "--cmdline",
            "scenario=spin spin_iters=100000000000",
        ])
        .args(["--report-json", path.to_str().unwrap(), "--console", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the VMM took too long to stop"
    );
    assert_eq!(status.code(), Some(1));
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(report.vm.end, "signal");
    assert!(report.conservation.holds);
    // The guest was spinning in cpu-a when stopped: its run time is there.
    assert!(report.container("cpu-a").unwrap().charges.guest_run_ns > 0);
}

#[test]
fn demo_duration_keeps_going_and_top_shows_it_live() {
    let sock = scratch("top.sock");
    let _ = std::fs::remove_file(&sock);
    let sock_s = sock.to_str().unwrap();
    let demo = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args([
            "demo",
            "--vms",
            "1",
            "--duration",
            // Long enough that a loaded machine still fits the socket's
            // appearance, two frames of top and 200 requests in (3 s did
            // not always, with builds running beside the tests).
            "6",
            "--json",
            "--api-sock",
            sock_s,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let top = resourceful(&["top", "--api-sock", sock_s, "-n", "2", "--interval", "0.5"]);
    assert!(top.status.success(), "{}", stderr(&top));
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    // Two frames (not a terminal: separated, not cleared), the second with
    // rates; the busy demo containers show non-zero exit rates.
    assert_eq!(text.matches("resourceful top").count(), 2, "{text}");
    assert!(text.contains("rates over the last interval"), "{text}");
    let second = text.rsplit("resourceful top").next().unwrap();
    let api_row = second
        .lines()
        .find(|l| l.starts_with("frontend/api "))
        .unwrap_or_else(|| panic!("frontend/api row in {second}"));
    let exits_per_s: f64 = api_row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(exits_per_s > 0.0, "{api_row}");
    assert!(second.contains("REQUEST"), "{second}");

    let out = demo.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout).expect("stdout is one JSON report");
    assert_eq!(report.vm.end, "time_limit");
    assert!(report.conservation.holds);
    // A warning about a guest's tag goes with a counted guest error: the
    // demo makes none, so it logs none (the sampler's stale reads of a
    // request that just ended are neither).
    let log = String::from_utf8_lossy(&out.stderr);
    let counted: u64 = report.guest_errors.values().sum();
    assert_eq!(
        (counted, log.matches("is invalid").count()),
        (0, 0),
        "{:?}\n{log}",
        report.guest_errors
    );
    // More than one round of the 200-request workload ran.
    assert!(
        report.declarations.requests_begun > 200,
        "{}",
        report.declarations.requests_begun
    );
    assert!(!sock.exists());

    // With the VM gone, top says so and how to fix it.
    let gone = resourceful(&["top", "--api-sock", sock_s, "-n", "1"]);
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("--api-sock"), "{}", stderr(&gone));
    let bad = resourceful(&["demo", "--vms", "1", "--duration", "0"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--duration"), "{}", stderr(&bad));
}

#[test]
fn a_guest_cannot_flood_the_log_through_broken_queues() {
    // 20,000 available entries with an out-of-range head, each notified,
    // then an available index far ahead of the queue: whatever the device
    // and virtio-queue say about it, the log stays a few bursts long (the
    // VMM's own lines through `warn_rl!`, the crates' through the limiting
    // logger: vmm/src/logging.rs, unit-tested there).
    let disk = scratch("bad-head.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let json = scratch("bad-head.json");
    let out = resourceful(&[
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=blk-bad-head",
        "--disk",
        disk.to_str().unwrap(),
        "--report-json",
        json.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("blk-bad-head: done"),
        "{err}"
    );
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&disk);
    assert_eq!(report.vm.guest_status, Some(0));
    assert!(
        err.lines().count() <= 60,
        "{} log lines:\n{err}",
        err.lines().count()
    );
    assert!(report.conservation.holds);
    // What was cut from the log is counted where a user can read it: every
    // notify reached the transport; the chains the device could not use
    // are counted as malformed (none had a status byte: all dropped) or as
    // queue errors.
    let disk = report.devices.iter().find(|d| d.name == "disk0").unwrap();
    let c = |k: &str| disk.counters[k];
    assert_eq!(c("transport.notifications"), 20_001);
    assert_eq!(c("dropped"), c("malformed"));
    assert!(c("malformed") + c("queue_errors") > 0, "{:?}", disk.counters);
    assert_eq!((c("bytes_read"), c("bytes_written")), (0, 0));
}

/// Runs `resourceful` with `args`, stdout and stderr into scratch files,
/// and returns its status, its peak resident set (bytes, from `wait4`),
/// and what it printed on stdout and stderr.
fn resourceful_measured(name: &str, args: &[&str]) -> (std::process::ExitStatus, u64, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let (out_path, err_path) = (scratch(&format!("{name}.out")), scratch(&format!("{name}.err")));
    // Reaped by `wait4` below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("the binary runs");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for yet; both pointers are
    // valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let read = |p: &PathBuf| {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        s
    };
    (
        std::process::ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap() * 1024,
        read(&out_path),
        read(&err_path),
    )
}

/// The report is written as it is built (docs/report.md, "Memory"): with
/// 200,000 retained requests, writing it costs the process almost nothing
/// beyond its peak when the VM ended, which the report states. (Building
/// it whole in memory cost ~1.8 KB a request: the process peak was
/// ~9 times the stated one.)
#[test]
fn a_report_of_200000_requests_is_streamed_and_states_the_real_peak() {
    let json = scratch("churn.report.json");
    let (status, process_peak, stdout, stderr) = resourceful_measured(
        "churn",
        &[
            "run",
            "--kernel",
            "builtin:test-guest",
            "--cmdline",
            "scenario=request-churn requests=200000",
            "--retained-requests",
            "200000",
            "--report-json",
            json.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stdout.contains("request-churn: done"), "{stdout}");
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(report.requests.len(), 200_000);
    assert!(report.requests.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(report.container("r").unwrap().requests.retained, 200_000);
    // One port write in every 1,000th request.
    let charged = report
        .requests
        .iter()
        .filter(|r| r.charges.exits_total.count == 1)
        .count();
    assert_eq!(charged, 200);
    assert!(report.conservation.holds);
    let stated = report.vm.vmm_peak_rss_bytes;
    assert!(stated > 0 && stated <= process_peak, "{stated} > {process_peak}");
    let extra = process_peak - stated;
    assert!(
        extra <= 4 << 20,
        "writing the report raised the peak by {extra} bytes (stated {stated}, real {process_peak})"
    );
}
