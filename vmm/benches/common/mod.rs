//! What the whole-process benches share: reaping a child with its resource
//! usage, and the statistics they print. Each bench uses part of it.
#![allow(dead_code)]

/// Sorted copy.
pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// Median (NaN for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Median absolute deviation.
pub fn mad(v: &[f64]) -> f64 {
    let m = median(v);
    median(&v.iter().map(|x| (x - m).abs()).collect::<Vec<_>>())
}

/// Seconds of a `timeval`.
pub fn secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Waits for child `pid` (not waited for yet) with `wait4` and returns its
/// resource usage; panics, naming `what`, unless it exited with status 0.
pub fn reap(pid: u32, what: &str) -> libc::rusage {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is the caller's unwaited child; both pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "{what}: wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what}: ended with status {status:#x}"
    );
    ru
}
