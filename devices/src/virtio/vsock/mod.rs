//! virtio-vsock (device type 19): stream sockets between the guest and host
//! Unix sockets, every packet charged to a principal.
//!
//! The host side works the way Firecracker's "hybrid vsock" does: there is
//! no host vsock stack. A guest connect to port P is forwarded to a host
//! Unix stream that a [`VsockConnector`] hands out ([`UdsConnector`]: the
//! socket `PATH_P` of `--vsock cid=N,uds=PATH`, or the VMM's agent server
//! for [`AGENT_PORT`]). A host program may also connect to the guest: it
//! connects to `PATH`, writes `CONNECT <port>\n`, and once the guest accepts
//! reads `OK <hostport>\n`; then the stream is the connection.
//!
//! - `packet.rs`: the 44-byte header and the parsing of chains.
//! - `device.rs`: the device, its connections, credit, TX and RX.
//! - `limit.rs`: per-container limits (`vsock-bytes`), held through credit.
//! - `event_handler.rs`: the event-loop wiring. Every connection's host fd
//!   is watched by the same device thread as the other virtio devices.
//!
//! Charging: a TX packet goes to the principal of the vCPU whose
//! QueueNotify covered its chain (or the chain's explicit queue tag), as
//! virtio-net does. A connection belongs to the principal that opened it
//! (the guest's REQUEST) or accepted it (the guest's RESPONSE to a
//! host-initiated REQUEST); every packet the device sends the guest on it,
//! data or control, is charged to that principal.

mod device;
mod event_handler;
mod limit;
pub mod packet;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub use device::{
    FdWatcher, ProcessStats, VsockDevice, VsockError, VsockStats, CONN_BUF_ALLOC, EVENT_QUEUE,
    FIRST_HOST_PORT, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_CTRL, MAX_PENDING_HOST, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE, VIRTIO_ID_VSOCK,
};
pub use event_handler::VsockHandler;

/// The CID of the host (virtio 1.2: `VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0, 1 and 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The port on which the VMM serves the guest agent.
pub const AGENT_PORT: u32 = 1024;

/// Hands out the host end of a guest-initiated connection to `port`.
pub trait VsockConnector: Send {
    /// A connected stream for `port`; an error refuses the guest (RST).
    /// It must not block for long: it runs on the device thread.
    fn connect(&self, port: u32) -> io::Result<UnixStream>;
}

/// Serves the agent port: hands out one end of a fresh stream pair.
pub type AgentConnect = Box<dyn Fn() -> io::Result<UnixStream> + Send>;

/// The default connector: [`AGENT_PORT`] to the agent server, when one is
/// given; any other port P to the Unix socket `PATH_P`, when `uds=PATH` is
/// set; everything else refused.
pub struct UdsConnector {
    uds: Option<PathBuf>,
    agent: Option<AgentConnect>,
}

impl std::fmt::Debug for UdsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdsConnector")
            .field("uds", &self.uds)
            .field("agent", &self.agent.is_some())
            .finish()
    }
}

impl UdsConnector {
    /// A connector over `uds` (`PATH_P` per port) and `agent` (port 1024).
    pub fn new(uds: Option<PathBuf>, agent: Option<AgentConnect>) -> Self {
        Self { uds, agent }
    }

    /// The socket a guest connect to `port` is forwarded to.
    pub fn port_path(uds: &Path, port: u32) -> PathBuf {
        let mut s = uds.as_os_str().to_owned();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }
}

impl VsockConnector for UdsConnector {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        if port == AGENT_PORT {
            if let Some(agent) = &self.agent {
                return agent();
            }
        }
        match &self.uds {
            Some(uds) => connect_nonblocking(&Self::port_path(uds, port)),
            None => Err(io::ErrorKind::ConnectionRefused.into()),
        }
    }
}

/// Connects a non-blocking Unix stream to `path`. A listener whose backlog
/// is full answers `WouldBlock` at once instead of stalling the device thread.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).map_err(io::Error::other)?;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).map_err(io::Error::other)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `fd` is open.
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_forwards_ports_to_path_underscore_port_and_1024_to_the_agent() {
        let dir = std::env::temp_dir().join(format!("rsrc-vsock-conn-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("v.sock");
        let l = std::os::unix::net::UnixListener::bind(UdsConnector::port_path(&uds, 52)).unwrap();
        let agent: AgentConnect = Box::new(|| UnixStream::pair().map(|(a, _b)| a));
        let c = UdsConnector::new(Some(uds.clone()), Some(agent));

        assert!(c.connect(52).is_ok());
        assert!(l.accept().is_ok());
        assert!(c.connect(AGENT_PORT).is_ok());
        assert!(c.connect(53).is_err());
        assert!(UdsConnector::new(None, None).connect(52).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
