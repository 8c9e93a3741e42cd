//! The VMM needs no privilege beyond its devices (docs/limits.md,
//! "Running unprivileged"): as `nobody`, given only a `/dev/kvm` it may open
//! (and a TAP it owns, for `--net`), it runs a VM; without them it says what
//! it needs. The host is left alone: the child gets its own mount namespace
//! in which a device node owned by `nobody` is bind-mounted over
//! `/dev/kvm` (and `/dev/net/tun`), and its network namespace is a fresh one.
//!
//! Also the descriptor limit (docs/limits.md): checked before anything is
//! built, raised when it can be, refused with the figure when it cannot.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use accounting::report::Report;

/// `nobody` on Debian.
const NOBODY: libc::uid_t = 65534;

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resourceful-unpriv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    d
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// A character device node `major:minor` at `path`, mode 0600, owned by
/// `nobody`.
fn node_for_nobody(path: &Path, major: u32, minor: u32) {
    let c = cstr(path);
    // SAFETY: valid C string; mknod and chown touch only the new node.
    unsafe {
        assert_eq!(
            libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)),
            0,
            "mknod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::chown(c.as_ptr(), NOBODY, NOBODY), 0);
    }
}

/// `resourceful ARGS` as `nobody` with no supplementary groups. Each
/// `(node, target)` is bind-mounted over `target` in the child's own mount
/// namespace; `netns` names a network namespace (`ip netns`) to enter.
fn run_as_nobody(args: &[&str], binds: &[(PathBuf, &str)], netns: Option<&str>) -> Output {
    let binds: Vec<(CString, CString)> = binds
        .iter()
        .map(|(node, target)| (cstr(node), CString::new(*target).unwrap()))
        .collect();
    let netns =
        netns.map(|n| std::fs::File::open(format!("/run/netns/{n}")).expect("the network namespace exists"));
    let root = CString::new("/").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resourceful"));
    cmd.args(args);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            if let Some(ns) = &netns {
                use std::os::fd::AsRawFd;
                check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
            }
            if !binds.is_empty() {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (node, target) in &binds {
                    check(libc::mount(
                        node.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(NOBODY))?;
            check(libc::setuid(NOBODY))?;
            Ok(())
        });
    }
    cmd.output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_vm_runs_as_nobody_given_only_dev_kvm() {
    let args = [
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=multi",
        "--vcpus",
        "2",
        "--json",
    ];
    // Without /dev/kvm: the error says what to give it.
    let out = run_as_nobody(&args, &[], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot open /dev/kvm") && stderr(&out).contains("kvm group"),
        "{}",
        stderr(&out)
    );

    // With it: the VM runs, and its books balance.
    let dir = scratch_dir("kvm");
    let kvm = dir.join("kvm");
    node_for_nobody(&kvm, 10, 232);
    let out = run_as_nobody(&args, &[(kvm, "/dev/kvm")], None);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(
        (report.vm.end.as_str(), report.vm.guest_status),
        ("guest_exit", Some(0))
    );
    assert!(report.conservation.holds);
    assert!(report.totals.exits_total.count > 0);
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8) runs");
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

/// Deletes the network namespace when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn a_vm_with_a_tap_runs_as_nobody_given_the_tap_and_dev_net_tun() {
    let ns = Netns(format!("rsrc-unpriv-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    // A persistent TAP owned by nobody: opening it needs no CAP_NET_ADMIN.
    ip(&[
        "-n", &ns.0, "tuntap", "add", "dev", "rsrcu0", "mode", "tap", "user", "65534",
    ]);
    let dir = scratch_dir("tap");
    let (kvm, tun) = (dir.join("kvm"), dir.join("tun"));
    node_for_nobody(&kvm, 10, 232);
    node_for_nobody(&tun, 10, 200);
    let out = run_as_nobody(
        &[
            "run",
            "--kernel",
            "builtin:test-guest",
            "--cmdline",
            "scenario=basic",
            "--net",
            "tap=rsrcu0",
            "--json",
        ],
        &[(kvm, "/dev/kvm"), (tun, "/dev/net/tun")],
        Some(&ns.0),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{:?}\n{}", out.status, stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert!(report.conservation.holds);
    assert!(report.devices.iter().any(|d| d.name == "net0"));
}

/// Runs `resourceful ARGS` with RLIMIT_NOFILE set to `soft`/`hard`.
fn run_with_nofile(args: &[&str], soft: u64, hard: u64) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resourceful"));
    cmd.args(args);
    // SAFETY: setrlimit on a prepared struct in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.output().expect("the binary runs")
}

#[test]
fn the_descriptor_limit_is_raised_or_refused_before_the_vm_is_built() {
    let args = [
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=basic",
        "--vsock",
        "cid=3",
    ];
    // A hard limit below what a vsock device may need (its 256 connections):
    // refused at once, naming the figure and how to raise it.
    let out = run_with_nofile(&args, 64, 64);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("file descriptors") && err.contains("ulimit -Hn") && err.contains("at most 64"),
        "{err}"
    );
    // A low soft limit under a high hard one is raised: the VM runs.
    let out = run_with_nofile(&args, 64, 4096);
    assert!(out.status.success(), "{}", stderr(&out));
}
