//! The connection to the VMM: `vsock:CID:PORT` (AF_VSOCK through libc) or
//! `unix:PATH`, the `hello`/`welcome` handshake, the replay of the declared
//! state, then the stream of queued frames; reconnection with exponential
//! backoff and jitter (100 ms doubling to 5 s).
//!
//! One thread runs [`run`]. It takes frames from the shared [`Outbox`]
//! without holding the lock while it writes, and watches the socket for a
//! VMM `error` or a close between batches.
//!
//! [`Outbox`]: crate::outbox::Outbox

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::agent::{
    decode_vmm, encode, AgentMessage, FrameDecoder, Held, Hello, Previous, ProtocolError, VmmMessage,
    AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

use crate::agent::Shared;
use crate::state::Refusal;

/// First reconnection delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the VMM has to answer `hello`, and to take one write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes taken from the outbox per batch of writes.
const BATCH_BYTES: usize = 256 * 1024;
/// Most entries accepted in the `held` frames of one welcome.
const MAX_HELD: usize = 1 << 20;

/// Where the VMM listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// AF_VSOCK (CID 2 is the host).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix stream socket (tests, host-side agents).
    Unix(PathBuf),
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::Vsock {
            cid: libc::VMADDR_CID_HOST,
            port: AGENT_VSOCK_PORT,
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or("expected vsock:CID:PORT, e.g. vsock:2:1024")?;
            let cid = cid
                .parse()
                .map_err(|_| format!("vsock CID {cid:?} is not a number"))?;
            let port = port
                .parse()
                .map_err(|_| format!("vsock port {port:?} is not a number"))?;
            Ok(Self::Vsock { cid, port })
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("expected unix:PATH".into());
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{s:?}: expected vsock:CID:PORT or unix:PATH"))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a connection ended or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A socket call failed.
    #[error("socket error")]
    Io(#[from] io::Error),
    /// The VMM sent something this agent cannot read.
    #[error("bad message from the VMM")]
    Protocol(#[from] ProtocolError),
    /// The VMM refused us.
    #[error("the VMM refused the agent: {0}")]
    Refused(String),
    /// The VMM speaks another protocol version.
    #[error("the VMM speaks protocol {0}, this agent {PROTOCOL_VERSION}")]
    Version(u32),
    /// The VMM closed the connection.
    #[error("the VMM closed the connection")]
    Closed,
    /// The VMM did not answer `hello` in time.
    #[error("no welcome within {IO_TIMEOUT:?}")]
    Timeout,
    /// The outbox overflowed with declarations: start over with a replay.
    #[error("outgoing buffer overflowed; reconnecting to resynchronise")]
    Resync,
    /// The VMM sent a message out of place.
    #[error("unexpected message from the VMM: {0}")]
    Unexpected(&'static str),
}

/// A connected stream socket.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Conn {
    /// Connects to `ep`.
    pub fn connect(ep: &Endpoint) -> io::Result<Self> {
        match ep {
            Endpoint::Unix(p) => Ok(Self {
                fd: OwnedFd::from(UnixStream::connect(p)?),
            }),
            Endpoint::Vsock { cid, port } => {
                // SAFETY: socket() has no memory-safety preconditions.
                let raw =
                    cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
                // SAFETY: `raw` is a fresh descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: an all-zero sockaddr_vm is valid (a plain C struct).
                let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                addr.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).unwrap_or_default();
                addr.svm_cid = *cid;
                addr.svm_port = *port;
                let len =
                    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).unwrap_or_default();
                // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that
                // outlives the call; `fd` is an open socket.
                cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
                Ok(Self { fd })
            }
        }
    }

    fn set_timeout(&self, opt: libc::c_int, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(d.subsec_micros()),
        };
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or_default();
        // SAFETY: `tv` is a valid timeval of `len` bytes for the call.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast(),
                len,
            )
        })?;
        Ok(())
    }

    /// Sets the receive and send timeouts.
    pub fn set_timeouts(&self, d: Duration) -> io::Result<()> {
        self.set_timeout(libc::SO_RCVTIMEO, d)?;
        self.set_timeout(libc::SO_SNDTIMEO, d)
    }

    /// Writes all of `bytes` (no SIGPIPE on a closed peer).
    pub fn send_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is valid for reads of its length for the call.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Reads into `buf`; `Ok(0)` is end of stream. With `wait` false it
    /// returns `WouldBlock` at once when nothing is there.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// What a VMM said at the start of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The VM's tenant.
    pub tenant: String,
    /// What it held for agents.
    pub previous: Previous,
    /// Where ids are free.
    pub next_id: u32,
    /// What it holds for agents of this boot, all `held` frames together.
    pub held: Held,
}

/// Reads one VMM message, waiting at most until `deadline`.
fn read_message(conn: &Conn, dec: &mut FrameDecoder, deadline: Instant) -> Result<VmmMessage, LinkError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = dec.next_frame()? {
            return Ok(decode_vmm(&body)?);
        }
        if Instant::now() >= deadline {
            return Err(LinkError::Timeout);
        }
        match conn.recv(&mut buf, true) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(LinkError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `hello` and reads `welcome` and the `held` frames after it.
pub fn handshake(conn: &Conn, hello: &Hello) -> Result<Session, LinkError> {
    conn.send_all(&encode(&AgentMessage::Hello(hello.clone()))?)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut dec = FrameDecoder::new();
    let mut session = match read_message(conn, &mut dec, deadline)? {
        VmmMessage::Welcome {
            protocol,
            tenant,
            previous,
            next_id,
        } if protocol == PROTOCOL_VERSION => Session {
            tenant,
            previous,
            next_id,
            held: Held::default(),
        },
        VmmMessage::Welcome { protocol, .. } => return Err(LinkError::Version(protocol)),
        VmmMessage::Error { reason } => return Err(LinkError::Refused(reason)),
        _ => return Err(LinkError::Unexpected("something other than welcome first")),
    };
    loop {
        match read_message(conn, &mut dec, deadline)? {
            VmmMessage::Held(h) => {
                let all = &mut session.held;
                if all.len() + h.len() > MAX_HELD {
                    return Err(LinkError::Unexpected("more held state than an agent keeps"));
                }
                all.containers.extend(h.containers);
                all.requests.extend(h.requests);
                all.flows.extend(h.flows);
                if h.last {
                    all.last = true;
                    return Ok(session);
                }
            }
            VmmMessage::Error { reason } => return Err(LinkError::Refused(reason)),
            _ => return Err(LinkError::Unexpected("something other than held after welcome")),
        }
    }
}

/// Reconnection delays: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`],
/// each drawn uniformly from the upper half of the current step.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            step: BACKOFF_MIN,
            rng: crate::procfs::monotonic_ns() ^ u64::from(std::process::id()) | 1,
        }
    }
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.step / 2;
        let jitter = u32::try_from(self.rng % 1024).unwrap_or(0);
        let d = half + half * jitter / 1024;
        self.step = (self.step * 2).min(BACKOFF_MAX);
        d
    }

    /// After a successful handshake.
    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }
}

/// Applies one VMM message after the handshake; the `seq` of a `synced`.
fn on_message(shared: &Shared, m: VmmMessage) -> Result<Option<u64>, LinkError> {
    match m {
        VmmMessage::Error { reason } => Err(LinkError::Refused(reason)),
        VmmMessage::Refused {
            message,
            id,
            flow,
            reason,
        } => {
            let mut g = shared.lock();
            if g.state.refused.is_power_of_two() || g.state.refused == 0 {
                log::warn!(
                    "the VMM refused {message} {}: {reason} ({} refusals so far)",
                    id.map(|i| i.to_string()).unwrap_or_default(),
                    g.state.refused + 1
                );
            }
            g.state.on_refused(Refusal {
                message,
                id,
                flow,
                reason,
            });
            Ok(None)
        }
        VmmMessage::Synced { seq } => {
            let mut g = shared.lock();
            shared.synced(&mut g, seq);
            Ok(Some(seq))
        }
        VmmMessage::SlotsRegistered { vcpus } => {
            let mut g = shared.lock();
            if g.tagging.registered.as_ref() != Some(&vcpus) {
                log::info!("the VMM reads the tag slots of vCPUs {vcpus:?}");
            }
            g.tagging.registered = Some(vcpus);
            Ok(None)
        }
        VmmMessage::Welcome { .. } | VmmMessage::Held(_) => {
            log::debug!("ignoring a welcome or held frame after the handshake");
            Ok(None)
        }
    }
}

/// Handles VMM messages without blocking: an `error` or a close ends the
/// connection.
fn check_peer(shared: &Shared, conn: &Conn, dec: &mut FrameDecoder) -> Result<(), LinkError> {
    let mut buf = [0u8; 4096];
    loop {
        match conn.recv(&mut buf, false) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        while let Some(body) = dec.next_frame()? {
            on_message(shared, decode_vmm(&body)?)?;
        }
    }
    Ok(())
}

/// Handles VMM messages until `synced` of `seq` (at most [`IO_TIMEOUT`]).
fn await_synced(shared: &Shared, conn: &Conn, dec: &mut FrameDecoder, seq: u64) -> Result<(), LinkError> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let m = read_message(conn, dec, deadline)?;
        if on_message(shared, m)?.is_some_and(|s| s >= seq) {
            return Ok(());
        }
    }
}

/// Streams the outbox until the connection fails or the agent stops. When
/// everything queued is written and a local client waits for the VMM, a
/// `sync` follows and its `synced` (and any refusal before it) is read.
fn pump(shared: &Shared, conn: &Conn) -> Result<(), LinkError> {
    let mut dec = FrameDecoder::new();
    let mut sync_sent = 0u64;
    loop {
        check_peer(shared, conn, &mut dec)?;
        let (batch, sync) = {
            let mut g = shared.lock();
            if shared.stopping() {
                // An unpinned tagger's map is freed with this process: its
                // pages go back to the guest kernel, so the VMM must stop
                // reading them (a pinned one goes on tagging).
                let unpinned = g.tagging.tagger.as_ref().is_some_and(|t| !t.pinned());
                drop(g);
                if unpinned {
                    let _ = conn.send_all(&encode(&AgentMessage::UnregisterSlots {})?);
                }
                return Ok(());
            }
            if g.outbox.take_resync() {
                return Err(LinkError::Resync);
            }
            if g.outbox.is_empty() && g.sync_wanted <= sync_sent {
                g = shared.wait_link(g, Duration::from_millis(200));
            }
            let batch = g.outbox.pop_batch(BATCH_BYTES);
            let sync = (g.outbox.is_empty() && g.sync_wanted > sync_sent).then_some(g.sync_wanted);
            (batch, sync)
        };
        for (i, f) in batch.iter().enumerate() {
            if let Err(e) = conn.send_all(&f.bytes) {
                shared.lock().outbox.lost(&batch[i..]);
                return Err(e.into());
            }
        }
        if let Some(seq) = sync {
            conn.send_all(&encode(&AgentMessage::Sync { seq })?)?;
            sync_sent = seq;
            await_synced(shared, conn, &mut dec, seq)?;
        }
    }
}

/// An error and its sources, for a log line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The link thread: connect, handshake, replay, stream; again on failure.
pub fn run(shared: Arc<Shared>, ep: Endpoint, hello: Hello) {
    let mut backoff = Backoff::default();
    let mut sessions = 0u64;
    let mut quiet = false;
    while !shared.stopping() {
        let attempt = Conn::connect(&ep)
            .map_err(LinkError::from)
            .and_then(|c| c.set_timeouts(IO_TIMEOUT).map(|()| c).map_err(LinkError::from))
            .and_then(|c| handshake(&c, &hello).map(|t| (c, t)));
        let (conn, session) = match attempt {
            Ok(x) => x,
            Err(e) => {
                let e = chain(&e);
                if quiet {
                    log::debug!("cannot reach the VMM at {ep}: {e}");
                } else {
                    log::warn!("cannot reach the VMM at {ep}: {e} (retrying with backoff)");
                    quiet = true;
                }
                shared.sleep(backoff.next_delay());
                continue;
            }
        };
        log::info!(
            "connected to the VMM at {ep} (tenant {:?}; it held {} containers, {} requests, {} flows for agents: {:?})",
            session.tenant,
            session.held.containers.len(),
            session.held.requests.len(),
            session.held.flows.len(),
            session.previous
        );
        backoff.reset();
        quiet = false;
        {
            let mut g = shared.lock();
            let mut replay: Vec<Vec<u8>> = g
                .state
                .on_connect(&session.held, session.next_id)
                .iter()
                .filter_map(|m| encode(m).ok())
                .collect();
            // Every connection says where the slots are (the same pages
            // again after an agent restart: no change at the VMM), and the
            // tag maps follow the ids the replay may have changed.
            g.tagging.registered = None;
            if let Some(m) = g.tagging.registration() {
                replay.extend(encode(&m).ok());
                replay.extend(encode(&crate::tagger::Tagger::clock_sync()).ok());
            }
            g.sync_tags();
            g.outbox.on_connect(replay, sessions > 0);
        }
        sessions += 1;
        let end = pump(&shared, &conn);
        {
            let mut g = shared.lock();
            g.outbox.on_disconnect();
        }
        match end {
            Ok(()) => break,
            Err(e) => log::warn!("connection to the VMM lost: {}", chain(&e)),
        }
        shared.sleep(backoff.next_delay());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!("vsock:2:1024".parse(), Ok(Endpoint::default()));
        assert_eq!("unix:/tmp/x".parse(), Ok(Endpoint::Unix("/tmp/x".into())));
        for bad in [
            "vsock:2",
            "vsock:a:1",
            "unix:",
            "tcp:1.2.3.4:5",
            "vsock:2:99999999999",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        assert_eq!(Endpoint::default().to_string(), "vsock:2:1024");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX && d >= BACKOFF_MIN / 2);
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn vsock_connect_to_nowhere_fails_cleanly() {
        // CID 1 is the local loopback CID; nothing listens on this port.
        let r = Conn::connect(&Endpoint::Vsock { cid: 1, port: 0xdead });
        assert!(r.is_err());
    }
}
