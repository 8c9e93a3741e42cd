//! The OTLP exporter's seccomp filter (docs/sandbox.md, "otlp"): a TCP
//! socket over IPv4 or IPv6 is allowed, any other socket stops the
//! process with the documented line, and files are answered ENOENT. As in
//! `sandbox.rs`, this binary runs itself again as a child
//! (`OTLP_SANDBOX_CHILD` says what the child does; read by this file only),
//! and the child installs the real filter on a thread named `rsrc-otlp`
//! through the same `sandbox::enter` the exporter calls. Export itself
//! runs under the filter in `tests/tests/otlp.rs` and `otlp_cli.rs`.

use std::process::{Command, Output};

use vmm::sandbox::{self, Seccomp, ThreadKind, VIOLATION_STATUS};

fn in_child(what: &str) -> Output {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("OTLP_SANDBOX_CHILD", what)
        .output()
        .expect("the test binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The child's side; nothing when run as an ordinary test.
#[test]
fn child() {
    let Ok(what) = std::env::var("OTLP_SANDBOX_CHILD") else {
        return;
    };
    sandbox::install_violation_handler().expect("the SIGSYS handler");
    let t = std::thread::Builder::new()
        .name("rsrc-otlp".into())
        .spawn(move || {
            sandbox::enter(ThreadKind::Otlp, Seccomp::Trap).expect("the otlp filter installs");
            let (domain, kind) = match what.as_str() {
                "tcp4" => (libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
                "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
                "udp4" => (libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC),
                "unix" => (libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
                "file" => {
                    // SAFETY: openat(2) of a NUL-terminated constant path.
                    let rc = unsafe { libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
                    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    eprintln!("returned {rc} errno {errno}");
                    return;
                }
                other => panic!("unknown child action {other}"),
            };
            // SAFETY: socket(2) with constant arguments.
            let fd = unsafe { libc::socket(domain, kind, 0) };
            eprintln!("returned {}", i32::from(fd >= 0));
        })
        .expect("spawn");
    t.join().expect("the thread ends");
}

#[test]
fn the_exporter_may_open_tcp_sockets_only() {
    for ok in ["tcp4", "tcp6"] {
        let out = in_child(ok);
        assert!(out.status.success(), "{ok}: {}", stderr(&out));
        assert!(stderr(&out).contains("returned 1"), "{ok}: {}", stderr(&out));
    }
    for bad in ["udp4", "unix"] {
        let out = in_child(bad);
        assert_eq!(
            out.status.code(),
            Some(VIOLATION_STATUS),
            "{bad}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(
                "resourceful: seccomp: thread rsrc-otlp (otlp filter) made syscall 41, which its list does not allow; exiting with status 159\n"
            ),
            "{bad}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("returned"), "{bad}: {}", stderr(&out));
    }
    let out = in_child("file");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("returned -1 errno {}", libc::ENOENT)),
        "{}",
        stderr(&out)
    );
}
