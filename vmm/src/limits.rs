//! The VMM's own bounds: how many threads and file descriptors a VM of a
//! given configuration can use at most, whatever its guest, agents and API
//! clients do (`docs/limits.md` has the whole table, memory included).
//!
//! The descriptor bound is checked before anything is built: a soft
//! `RLIMIT_NOFILE` below it is raised (up to the hard limit), and a hard
//! limit below it is refused with the figure, rather than failing with
//! `EMFILE` in the middle of a run.

use devices::virtio::vsock;

use crate::config::VmConfig;

/// Descriptors open whatever the configuration: stdio, `/dev/kvm`, the VM,
/// the console, the two legacy interrupt eventfds, the device loop's epoll
/// and its eventfd, the report file, `/proc` reads, and headroom.
pub const FIXED_FDS: u64 = 32;
/// Per vCPU: its fd and its KVM statistics fd.
pub const FDS_PER_VCPU: u64 = 2;
/// Per disk: the image file, the interrupt eventfd, one queue eventfd.
pub const FDS_PER_DISK: u64 = 3;
/// Per network interface: the TAP, the interrupt eventfd, two queue eventfds.
pub const FDS_PER_NET: u64 = 4;
/// Per disk, network interface or vsock device with per-container limits (or that may
/// get them: with `--api-sock`): the release timer, the live-change wake
/// and the API's duplicate of the wake.
pub const LIMIT_FDS_PER_DEVICE: u64 = 3;
/// The vsock device besides its connections: the interrupt eventfd, three
/// queue eventfds and the host listener.
pub const VSOCK_FDS: u64 = 5;
/// The API server besides its connections: the listener, the runtime's
/// epoll and waker.
pub const API_FDS: u64 = 3;
/// The metrics listener (`--metrics-addr`) besides its connections, on
/// the API server's thread and runtime.
pub const METRICS_FDS: u64 = 1;
/// The agent hub besides its connections: the listener and its waker.
pub const AGENT_FDS: u64 = 2;

/// Most file descriptors a VM of `config` holds at once.
pub fn fd_bound(config: &VmConfig) -> u64 {
    let n = |v: usize| v as u64;
    let mut fds = FIXED_FDS
        + FDS_PER_VCPU * u64::from(config.vcpus)
        + FDS_PER_DISK * n(config.disks.len())
        + FDS_PER_NET * n(config.nets.len());
    if config.api_sock.is_some() || !config.container_limits.is_empty() {
        let vsocks = usize::from(config.vsock.is_some());
        fds += LIMIT_FDS_PER_DEVICE * n(config.disks.len() + config.nets.len() + vsocks);
    }
    if config.vsock.is_some() {
        fds += VSOCK_FDS + n(vsock::MAX_CONNECTIONS) + n(vsock::MAX_PENDING_HOST);
    }
    if config.api_sock.is_some() || config.metrics_addr.is_some() {
        fds += API_FDS;
    }
    if config.api_sock.is_some() {
        fds += n(crate::api::MAX_CONNECTIONS);
    }
    if config.metrics_addr.is_some() {
        fds += METRICS_FDS + n(crate::api::MAX_METRICS_CONNECTIONS);
    }
    // Agent connections come through vsock port 1024 or `--agent-sock`:
    // each holds its stream and a clone to shut it down.
    fds += AGENT_FDS + 2 * n(crate::agent::MAX_CONNECTIONS);
    fds
}

/// Most threads a VM of `config` runs at once: the main thread, one per
/// vCPU, the sampler, the device loop, the API server, the agent hub's
/// accept thread and one per agent connection.
pub fn thread_bound(config: &VmConfig) -> usize {
    1 + usize::from(config.vcpus)
        + usize::from(config.accounting)
        + usize::from(!config.disks.is_empty() || !config.nets.is_empty() || config.vsock.is_some())
        + usize::from(config.api_sock.is_some() || config.metrics_addr.is_some())
        + usize::from(config.agent_sock.is_some())
        + crate::agent::MAX_CONNECTIONS
}

/// Why the descriptor limit cannot be met.
#[derive(Debug, thiserror::Error)]
#[error(
    "this VM may need up to {needed} file descriptors ({vcpus} vCPUs, {disks} disks, {nets} network interfaces{vsock}{api}) \
     but RLIMIT_NOFILE allows at most {hard}: raise the hard limit (`ulimit -Hn {needed}` as root, or LimitNOFILE= in a systemd unit), \
     or use fewer vCPUs or devices"
)]
pub struct FdLimitError {
    /// The bound.
    pub needed: u64,
    /// The hard limit.
    pub hard: u64,
    vcpus: u8,
    disks: usize,
    nets: usize,
    vsock: &'static str,
    api: &'static str,
}

/// Makes sure this process may open [`fd_bound`] descriptors: raises the
/// soft limit if it is lower (never lowers it), refuses if the hard limit
/// is lower. Returns the soft limit now in force.
pub fn ensure_fd_limit(config: &VmConfig) -> Result<u64, FdLimitError> {
    let needed = fd_bound(config);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        // Not knowing the limit is no reason to refuse to run.
        return Ok(needed);
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    if lim.rlim_max < needed {
        return Err(FdLimitError {
            needed,
            hard: lim.rlim_max,
            vcpus: config.vcpus,
            disks: config.disks.len(),
            nets: config.nets.len(),
            vsock: if config.vsock.is_some() { ", vsock" } else { "" },
            api: if config.api_sock.is_some() {
                ", the API"
            } else {
                ""
            },
        });
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up
    // to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        log::warn!(
            "cannot raise RLIMIT_NOFILE from {} to {needed}: {}",
            lim.rlim_cur,
            std::io::Error::last_os_error()
        );
        return Ok(lim.rlim_cur);
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Builtin, DiskConfig, KernelSource, VsockConfig};

    #[test]
    fn the_bounds_grow_with_what_the_vm_is_given() {
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        c.vcpus = 1;
        let base = fd_bound(&c);
        assert_eq!(base, FIXED_FDS + 2 + AGENT_FDS + 16);
        c.vcpus = 4;
        assert_eq!(fd_bound(&c), base + 6);
        c.disks.push(DiskConfig {
            path: "/d".into(),
            read_only: false,
        });
        c.vsock = Some(VsockConfig { cid: 3, uds: None });
        c.api_sock = Some("/a".into());
        // With the API the disk and the vsock device may get limits: their
        // timers and wakes.
        assert_eq!(fd_bound(&c), base + 6 + 3 + 3 + 3 + 5 + 256 + 16 + 3 + 64);
        assert_eq!(thread_bound(&c), 1 + 4 + 1 + 1 + 1 + 8);
        // Metrics share the API's thread and runtime.
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(
            fd_bound(&c),
            base + 6 + 3 + 3 + 3 + 5 + 256 + 16 + 3 + 64 + 1 + 16
        );
        assert_eq!(thread_bound(&c), 1 + 4 + 1 + 1 + 1 + 8);
        c.api_sock = None;
        assert_eq!(fd_bound(&c), base + 6 + 3 + 5 + 256 + 16 + 3 + 1 + 16);
        c.container_limits = vec!["a:blk-ops=1/s".parse().unwrap()];
        // Any limit counts every limitable device (a bound, not a census).
        assert_eq!(fd_bound(&c), base + 6 + 3 + 3 + 3 + 5 + 256 + 16 + 3 + 1 + 16);
    }
}
