//! The seccomp sandbox (docs/sandbox.md), proved two ways.
//!
//! No guest input should make a VMM thread step outside its list, so the
//! violation path is tested on the mechanism itself: this test binary runs
//! itself again as a child process (`SANDBOX_CHILD` selects what the child
//! does; the variable is read by this test file only, never by the VMM),
//! and the child installs the real vCPU filter on a thread named like a
//! vCPU thread, through the same [`sandbox::enter`] the VMM calls, then
//! makes a syscall. The parent checks how the child ended: the documented
//! status and stderr line, or the errno the lists promise. The CLI tests
//! then check that a real run reports its filters on, and `--no-seccomp`
//! off (JSON and table) with a warning.

use std::process::{Command, Output};

use accounting::report::Report;
use vmm::sandbox::{self, Seccomp, ThreadKind, VIOLATION_STATUS};

/// Runs `what` in a child process (the [`child`] test of this binary).
fn in_child(what: &str) -> Output {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("SANDBOX_CHILD", what)
        .output()
        .expect("the test binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The child's side: on a thread named `rsrc-vcpu0`, installs the vCPU
/// filter as the VMM does and makes the syscall `what` names. Does nothing
/// when run as an ordinary test.
#[test]
fn child() {
    let Ok(what) = std::env::var("SANDBOX_CHILD") else {
        return;
    };
    sandbox::install_violation_handler().expect("the SIGSYS handler");
    let t = std::thread::Builder::new()
        .name("rsrc-vcpu0".into())
        .spawn(move || {
            sandbox::enter(ThreadKind::Vcpu, Seccomp::Trap).expect("the vCPU filter installs");
            let rc = make(&what);
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            eprintln!("returned {rc} errno {errno}");
        })
        .expect("spawn");
    t.join().expect("the thread ends");
}

/// Makes the syscall `what` names; its return value.
fn make(what: &str) -> i64 {
    match what {
        // Allowed: a write to stderr.
        // SAFETY: write(2) from a live buffer of 11 bytes.
        "write" => unsafe { libc::write(2, b"still here\n".as_ptr().cast(), 11) as i64 },
        // Not on the list at all.
        // SAFETY: socket(2) with constant arguments.
        "socket" => unsafe { i64::from(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) },
        // On the list, but only with KVM's vCPU requests.
        // SAFETY: TIOCGWINSZ writes 8 bytes into a live 8-byte buffer.
        "ioctl" => unsafe { i64::from(libc::ioctl(2, libc::TIOCGWINSZ, [0u16; 4].as_mut_ptr())) },
        // Answered ENOENT: a vCPU thread opens no files.
        // SAFETY: openat(2) of a NUL-terminated constant path.
        "openat" => unsafe {
            i64::from(libc::openat(
                libc::AT_FDCWD,
                c"/etc/passwd".as_ptr(),
                libc::O_RDONLY,
            ))
        },
        other => panic!("unknown child action {other}"),
    }
}

#[test]
fn a_vcpu_thread_that_opens_a_socket_is_stopped_and_named() {
    let out = in_child("socket");
    assert_eq!(out.status.code(), Some(VIOLATION_STATUS), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "resourceful: seccomp: thread rsrc-vcpu0 (vcpu filter) made syscall 41, which its list does not allow; exiting with status 159\n"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("returned"),
        "the syscall returned: {}",
        stderr(&out)
    );
}

#[test]
fn a_vcpu_thread_ioctl_outside_kvm_is_stopped() {
    let out = in_child("ioctl");
    assert_eq!(out.status.code(), Some(VIOLATION_STATUS), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("thread rsrc-vcpu0 (vcpu filter) made syscall 16,"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_vcpu_thread_may_write_and_cannot_open_files() {
    let out = in_child("write");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still here\nreturned 11 errno"),
        "{}",
        stderr(&out)
    );
    let out = in_child("openat");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("returned -1 errno {}", libc::ENOENT)),
        "{}",
        stderr(&out)
    );
}

fn resourceful(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn a_run_reports_its_filters_on_and_no_seccomp_off_with_a_warning() {
    let on = resourceful(&["demo", "--vms", "1", "--json", "--vcpus", "1"]);
    assert!(on.status.success(), "{}", stderr(&on));
    let report: Report = serde_json::from_slice(&on.stdout).expect("one JSON report");
    assert_eq!(report.vm.seccomp, "on");
    assert!(!stderr(&on).contains("WARNING"), "{}", stderr(&on));

    let off = resourceful(&["demo", "--vms", "1", "--json", "--vcpus", "1", "--no-seccomp"]);
    assert!(off.status.success(), "{}", stderr(&off));
    let report: Report = serde_json::from_slice(&off.stdout).expect("one JSON report");
    assert_eq!(report.vm.seccomp, "off");
    assert!(stderr(&off).contains("WARNING: --no-seccomp"), "{}", stderr(&off));
    let table = resourceful(&["demo", "--vms", "1", "--vcpus", "1", "--no-seccomp"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(
        stdout.contains("\nseccomp: off (this run had no sandbox)\n"),
        "{stdout}"
    );
}

#[test]
fn a_run_stopped_continued_and_interrupted_ends_cleanly() {
    // SIGSTOP/SIGCONT resumes interrupted sleeps through restart_syscall,
    // and SIGINT's handler may run on any thread: the lists allow both.
    let child = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args([
            "demo",
            "--vms",
            "1",
            "--duration",
            "30",
            "--json",
            "--console",
            "/dev/null",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    std::thread::sleep(std::time::Duration::from_millis(700));
    for (sig, pause) in [(libc::SIGSTOP, 300), (libc::SIGCONT, 300), (libc::SIGINT, 0)] {
        // SAFETY: kill(2) of our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(pause));
    }
    let out = child.wait_with_output().expect("the run ends");
    // A signal is an abnormal end for the CLI (status 1), with its report.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("seccomp"), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(
        (report.vm.end.as_str(), report.vm.seccomp.as_str()),
        ("signal", "on")
    );
}
