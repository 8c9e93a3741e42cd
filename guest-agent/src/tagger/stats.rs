//! The kernel's own run-time statistics of the switch program (for the
//! cost bench): time spent in it and runs, counted while statistics are
//! enabled (`BPF_ENABLE_STATS`, which holds them on while its descriptor is
//! open), independent of how long the rest of a context switch takes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys as sys;

/// Turns on the kernel's BPF run-time statistics until the returned
/// descriptor is dropped (root).
pub fn enable_run_time_stats() -> io::Result<OwnedFd> {
    // SAFETY: a plain bpf() command; a non-negative result is a new fd.
    let fd = unsafe { sys::bpf_enable_stats(sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the descriptor is fresh and owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn info_len<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX)
}

impl super::Tagger {
    /// The switch program's `(run_time_ns, run_cnt)` so far, when this
    /// tagger holds its link (not pinned).
    pub fn switch_run_stats(&self) -> io::Result<(u64, u64)> {
        let link = self
            .links
            .first()
            .ok_or_else(|| io::Error::other("the switch link is pinned, not held"))?;
        let mut li = sys::bpf_link_info::default();
        let mut len = info_len::<sys::bpf_link_info>();
        // SAFETY: `li` and `len` describe a writable bpf_link_info.
        let r = unsafe { sys::bpf_link_get_info_by_fd(link.as_fd().as_raw_fd(), &mut li, &mut len) };
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r));
        }
        // SAFETY: a plain bpf() command; a non-negative result is a new fd.
        let prog = unsafe { sys::bpf_prog_get_fd_by_id(li.prog_id) };
        if prog < 0 {
            return Err(io::Error::from_raw_os_error(-prog));
        }
        // SAFETY: fresh, owned from here on.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let mut pi = sys::bpf_prog_info::default();
        let mut len = info_len::<sys::bpf_prog_info>();
        // SAFETY: `pi` and `len` describe a writable bpf_prog_info.
        let r = unsafe { sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut pi, &mut len) };
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r));
        }
        Ok((pi.run_time_ns, pi.run_cnt))
    }
}
