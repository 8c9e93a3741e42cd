//! The virtio-vsock device: a guest CID, three queues (RX, TX, event), and
//! the stream connections between guest ports and host Unix streams.
//!
//! TX ([`VsockDevice::process_tx`]): each chain is one packet. It is parsed
//! and checked (shape, CIDs, type, op, length), then acted on: REQUEST asks
//! the [`VsockConnector`] for a host stream, RW writes to it, SHUTDOWN, RST
//! and the credit ops update the connection. Replies (RESPONSE, RST,
//! CREDIT_UPDATE) go into a bounded control queue that RX drains first.
//!
//! RX ([`VsockDevice::process_rx`]): while the guest has posted receive
//! chains, control packets go out first, then data read from the host
//! streams that are readable, each read bounded by the guest's credit for
//! that connection (`buf_alloc - (tx_cnt - fwd_cnt)`): the device never
//! sends the guest more than it advertised and buffers nothing on the way in.
//!
//! Guest to host, data the host stream does not take at once waits in a
//! per-connection backlog. The device advertises [`CONN_BUF_ALLOC`] bytes of
//! buffer and a `fwd_cnt` that counts only bytes the host stream took, so
//! the backlog can never exceed the advertisement; a guest that sends past
//! its credit is reset.
//!
//! The host descriptors are watched by the device thread's event loop; the
//! device only says what it wants watched ([`VsockDevice::sync_watch`]).

use crate::counters::NamedCounters;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::sock::{ClaimError, SocketFile};
use accounting::warn_rl;
use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::limit::{Released, VsockLimits, Way};
use super::packet::{self, Header, PacketError, HDR_LEN, MAX_PKT_PAYLOAD};
use super::packet::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
};
use super::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{VsockConnector, HOST_CID};
use crate::acct::QueueTagReader;
use crate::virtio::limiter::{BlockLimitConfig, BucketError, LimitLookup};
use crate::virtio::{thread_cpu_ns, Charger, DeviceState, NetDir, VsockCharge};
use crate::virtio::{VirtioBase, VirtioDevice, VIRTIO_F_VERSION_1};

/// virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (host to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest to host).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (unused: see `docs/virtio.md`).
pub const EVENT_QUEUE: usize = 2;
/// Most connections per device (established or being set up).
pub const MAX_CONNECTIONS: usize = 256;
/// Most host clients that connected to the listener and have not yet
/// written their `CONNECT <port>` line.
pub const MAX_PENDING_HOST: usize = 16;
/// Receive buffer the device advertises per connection (guest to host).
pub const CONN_BUF_ALLOC: u32 = 64 * 1024;
/// Host ports of host-initiated connections start here.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// Most control packets waiting for a receive chain.
pub const MAX_CTRL: usize = 4 * MAX_CONNECTIONS + 64;
/// TX stops taking packets while this many control packets wait.
const TX_CTRL_LIMIT: usize = MAX_CTRL - 64;
/// Send a CREDIT_UPDATE once this much more has been forwarded.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// Longest `CONNECT <port>` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// Event data of the listener (queues use their index).
pub(crate) const LISTENER_TOKEN: u32 = 3;
/// Event data of host streams start here.
const FIRST_TOKEN: u32 = 16;

/// What went wrong setting up a vsock device (the VMM's mistakes).
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved: use a CID of 3 or more")]
    Cid(u64),
    /// An `EventFd` could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// The host-initiated connection socket could not be bound.
    #[error("cannot listen on {path}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Counters since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Well-formed packets taken from the TX queue.
    pub tx_packets: u64,
    /// RW payload bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// RW payload bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Connections established (guest- or host-initiated).
    pub connections_opened: u64,
    /// Guest REQUESTs the connector refused.
    pub connections_refused: u64,
    /// REQUESTs and host clients refused at [`MAX_CONNECTIONS`] or
    /// [`MAX_PENDING_HOST`].
    pub connection_limit: u64,
    /// RSTs the guest sent for a live connection.
    pub resets_from_guest: u64,
    /// RSTs the device sent the guest.
    pub resets_to_guest: u64,
    /// TX chains that were no packet (shape, direction, memory, length).
    pub malformed: u64,
    /// Packets with a source CID other than the guest's or a destination
    /// other than the host.
    pub bad_cid: u64,
    /// Packets of a type other than STREAM.
    pub bad_type: u64,
    /// Packets with an unknown op.
    pub bad_op: u64,
    /// Non-RW packets carrying a payload.
    pub bad_len: u64,
    /// Packets naming no connection they could apply to.
    pub unknown_connection: u64,
    /// RW packets past the credit the device advertised.
    pub credit_violations: u64,
    /// Host stream writes that failed (connection reset).
    pub host_write_errors: u64,
    /// Host stream reads that failed (connection reset).
    pub host_read_errors: u64,
    /// Host clients whose `CONNECT <port>` line was bad.
    pub bad_connect_lines: u64,
    /// RX chains that were not device-writable buffers of 44 bytes or more.
    pub rx_malformed: u64,
    /// Control packets dropped because the control queue was full.
    pub ctrl_dropped: u64,
    /// Failures to update the used ring or raise the interrupt, bogus avail indices.
    pub queue_errors: u64,
    /// Interrupts raised.
    pub interrupts: u64,
    /// Notifications of an inactive device.
    pub ignored_notifications: u64,
    /// Times a per-container limit held a connection's bytes (either way).
    pub throttled: u64,
}

crate::counters::named_counters!(VsockStats {
    tx_packets,
    tx_bytes,
    rx_packets,
    rx_bytes,
    connections_opened,
    connections_refused,
    connection_limit,
    resets_from_guest,
    resets_to_guest,
    malformed,
    bad_cid,
    bad_type,
    bad_op,
    bad_len,
    unknown_connection,
    credit_violations,
    host_write_errors,
    host_read_errors,
    bad_connect_lines,
    rx_malformed,
    ctrl_dropped,
    queue_errors,
    interrupts,
    ignored_notifications,
    throttled,
});

/// What one `process_*` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Chains used.
    pub chains: u64,
    /// Packets taken (TX) or delivered (RX).
    pub packets: u64,
    /// Chains consumed without a packet.
    pub dropped: u64,
    /// Whether an interrupt was raised.
    pub interrupted: bool,
    /// Work was left for another call (batch limit or backpressure).
    pub more_pending: bool,
    /// RX: stopped for want of a receive chain.
    pub rx_stalled: bool,
}

/// Registers host descriptors with the device thread's event loop.
pub trait FdWatcher {
    /// Starts watching `fd` for `set`, with `token` as its event data.
    fn add(&mut self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()>;
    /// Changes what `fd` is watched for.
    fn modify(&mut self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()>;
    /// Stops watching `fd` (before it is closed).
    fn remove(&mut self, fd: RawFd, token: u32) -> io::Result<()>;
}

/// A connection: (guest port, host port).
pub(crate) type ConnKey = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    token: u32,
    tag: Option<u64>,
    state: ConnState,
    /// The guest's receive buffer, as it last told us.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed, as it last told us.
    peer_fwd_cnt: u32,
    /// RW payload bytes sent to the guest.
    tx_cnt: u32,
    /// RW payload bytes received from the guest.
    rx_cnt: u32,
    /// Of those, bytes the host stream took.
    fwd_cnt: u32,
    /// `fwd_cnt` as last sent to the guest.
    last_fwd_sent: u32,
    /// Guest data the host stream has not taken yet (at most `CONN_BUF_ALLOC`).
    backlog: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent.
    guest_shutdown: u32,
    /// The host stream reached end of file.
    host_eof: bool,
    /// The host stream's write side was shut down.
    host_write_closed: bool,
    /// A SHUTDOWN was queued for the guest.
    shutdown_sent: bool,
    /// A CREDIT_UPDATE is queued.
    credit_update_queued: bool,
    /// Waiting in `rx_ready`.
    in_rx_ready: bool,
    /// What the event loop watches now.
    registered: Option<EventSet>,
    /// Of the backlog, the bytes at its end a limit has not let go yet
    /// (never written to the host stream before their tokens come).
    tx_unpaid: usize,
    /// Bytes to the guest a limit has let go and not read yet.
    rx_prepaid: u64,
    /// A limit holds the host stream's bytes: it is not read.
    rx_held: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, tag: Option<u64>, state: ConnState) -> Self {
        Self {
            stream,
            token,
            tag,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            backlog: VecDeque::new(),
            guest_shutdown: 0,
            host_eof: false,
            host_write_closed: false,
            shutdown_sent: false,
            credit_update_queued: false,
            in_rx_ready: false,
            registered: None,
            tx_unpaid: 0,
            rx_prepaid: 0,
            rx_held: false,
        }
    }

    /// Bytes the guest can take now. A guest that claims to have consumed
    /// more than it was sent gets nothing (the difference wraps past its
    /// buffer).
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn learn_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    fn readable(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.readable() && !self.in_rx_ready && !self.rx_held {
            set |= EventSet::IN;
        }
        if self.backlog.len() > self.tx_unpaid {
            set |= EventSet::OUT;
        }
        set
    }
}

/// A host client of the listener that has not named its port yet.
#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    registered: Option<EventSet>,
}

/// A control packet waiting for a receive chain.
#[derive(Clone, Copy, Debug)]
struct Ctrl {
    key: ConnKey,
    op: u16,
    flags: u32,
    tag: Option<u64>,
}

/// What one TX packet did, for its charge.
#[derive(Clone, Copy, Debug, Default)]
struct TxEffect {
    bytes: u64,
    connections: u64,
    resets: u64,
}

/// A virtio-vsock device.
pub struct VsockDevice {
    cid: u64,
    base: VirtioBase,
    connector: Box<dyn VsockConnector>,
    listener: Option<(UnixListener, SocketFile)>,
    conns: HashMap<ConnKey, Conn>,
    by_token: HashMap<u32, ConnKey>,
    pending: HashMap<u32, PendingHost>,
    /// Streams to stop watching, then close: (token, stream, watched).
    closed: Vec<(u32, UnixStream, bool)>,
    ctrl: VecDeque<Ctrl>,
    rx_ready: VecDeque<ConnKey>,
    next_token: u32,
    next_host_port: u32,
    stats: VsockStats,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    queue_tags: Option<(QueueTagReader, u32)>,
    /// Per-container limits (`None`: no `--limit` with vsock keys).
    limits: Option<VsockLimits>,
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("cid", &self.cid)
            .field("state", &self.base.state)
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn lap(mark: &mut u64) -> u64 {
    let now = thread_cpu_ns();
    let spent = now.saturating_sub(*mark);
    *mark = now;
    spent
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Takes `path` for host-initiated connections (`crate::sock::claim`: a
/// stale socket file is replaced, a live one or any other file refused).
fn bind_listener(path: &Path) -> Result<(UnixListener, SocketFile), VsockError> {
    let err = |source| VsockError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let (l, file) = crate::sock::claim(path).map_err(|e| {
        err(match e {
            ClaimError::InUse(_) => {
                io::Error::new(io::ErrorKind::AddrInUse, "another process serves this socket")
            }
            ClaimError::NotASocket(_) => {
                io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a socket")
            }
            ClaimError::Io { what, source, .. } => io::Error::new(source.kind(), format!("{what}: {source}")),
        })
    })?;
    if let Err(e) = l.set_nonblocking(true) {
        file.remove();
        return Err(err(e));
    }
    Ok((l, file))
}

impl VsockDevice {
    /// A device for guest `cid` whose guest connects go through
    /// `connector`; with `listen`, host programs may connect to the guest
    /// through that Unix socket.
    pub fn new(
        cid: u64,
        connector: Box<dyn VsockConnector>,
        listen: Option<&Path>,
    ) -> Result<Self, VsockError> {
        if cid < super::MIN_GUEST_CID || cid > u64::from(u32::MAX) {
            return Err(VsockError::Cid(cid));
        }
        let listener = listen.map(bind_listener).transpose()?;
        Ok(Self {
            cid,
            base: VirtioBase::new(1 << VIRTIO_F_VERSION_1, &[QUEUE_SIZE; 3]).map_err(VsockError::EventFd)?,
            connector,
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            closed: Vec::new(),
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            stats: VsockStats::default(),
            tx_buf: Vec::with_capacity(HDR_LEN + MAX_PKT_PAYLOAD),
            rx_buf: vec![0; MAX_PKT_PAYLOAD],
            queue_tags: None,
            limits: None,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Counters so far.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// Live connections (established or being set up).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The device's state.
    pub fn state(&self) -> &DeviceState {
        &self.base.state
    }

    /// The listener's descriptor, if host-initiated connections are on.
    pub fn listener_fd(&self) -> Option<RawFd> {
        self.listener.as_ref().map(|(l, _)| l.as_raw_fd())
    }

    /// Lets TX packets carry explicit tags: the guest's queue tag tables of
    /// virtio device `device_index` (table of queue [`TX_QUEUE`]).
    pub fn set_queue_tags(&mut self, reader: QueueTagReader, device_index: u32) {
        self.queue_tags = Some((reader, device_index));
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_TOKEN);
            let used = self.by_token.contains_key(&t)
                || self.pending.contains_key(&t)
                || self.closed.iter().any(|(c, ..)| *c == t);
            if !used {
                return t;
            }
        }
    }

    /// Queues a control packet; false (counted) when the queue is full.
    fn push_ctrl(&mut self, key: ConnKey, op: u16, flags: u32, tag: Option<u64>) -> bool {
        if self.ctrl.len() >= MAX_CTRL {
            self.stats.ctrl_dropped += 1;
            warn_rl!("virtio-vsock: control queue full, op {op} for {key:?} dropped");
            return false;
        }
        self.ctrl.push_back(Ctrl { key, op, flags, tag });
        true
    }

    /// Queues a CREDIT_UPDATE for `key` unless one is waiting already.
    fn queue_credit_update(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get(&key) else { return };
        if c.credit_update_queued {
            return;
        }
        let tag = c.tag;
        let queued = self.push_ctrl(key, OP_CREDIT_UPDATE, 0, tag);
        if let Some(c) = self.conns.get_mut(&key) {
            c.credit_update_queued = queued;
        }
    }

    /// Sends the guest an RST for `key` (never in answer to an RST).
    fn rst(&mut self, key: ConnKey, tag: Option<u64>) {
        let _ = self.push_ctrl(key, OP_RST, 0, tag);
    }

    /// Forgets connection `key`; its stream is closed after the event loop
    /// stops watching it.
    fn drop_conn(&mut self, key: ConnKey) -> Option<Option<u64>> {
        let c = self.conns.remove(&key)?;
        self.by_token.remove(&c.token);
        if let Some(l) = self.limits.as_mut() {
            l.forget(key);
        }
        if c.in_rx_ready {
            self.rx_ready.retain(|k| *k != key);
        }
        self.closed.push((c.token, c.stream, c.registered.is_some()));
        Some(c.tag)
    }

    /// Drops `key` and resets it towards the guest; 1 if it existed.
    fn reset_conn(&mut self, key: ConnKey, tag: Option<u64>) -> u64 {
        let owner = self.drop_conn(key);
        self.rst(key, owner.flatten().or(tag));
        u64::from(owner.is_some())
    }

    /// Queues a CREDIT_UPDATE when the guest's view of our free space lags
    /// what the host stream has taken by the threshold.
    fn maybe_credit_update(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get(&key) else { return };
        if c.fwd_cnt.wrapping_sub(c.last_fwd_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.queue_credit_update(key);
        }
    }

    /// Writes what the host stream takes of the backlog; `Err` on a write error.
    /// Only the bytes a limit let go (the backlog's paid head) are written.
    fn drain_backlog(c: &mut Conn) -> io::Result<()> {
        while c.backlog.len() > c.tx_unpaid {
            let paid = c.backlog.len() - c.tx_unpaid;
            let (a, _) = c.backlog.as_slices();
            match (&c.stream).write(&a[..a.len().min(paid)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.backlog.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(len_u32(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes guest data to the host stream; what it does not take waits.
    fn write_host(c: &mut Conn, mut data: &[u8]) -> io::Result<()> {
        while c.backlog.is_empty() && !data.is_empty() {
            match (&c.stream).write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(len_u32(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.backlog.extend(data);
        Ok(())
    }

    /// After guest data moved: shut the host write side once the guest said
    /// SEND and the backlog is empty; close for good after both flags.
    fn after_forward(&mut self, key: ConnKey) -> u64 {
        let Some(c) = self.conns.get_mut(&key) else {
            return 0;
        };
        if !c.backlog.is_empty() {
            return 0;
        }
        if c.guest_shutdown & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
            return self.reset_conn(key, None);
        }
        if c.guest_shutdown & SHUTDOWN_SEND != 0 && !c.host_write_closed {
            c.host_write_closed = true;
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        self.maybe_credit_update(key);
        0
    }

    /// Acts on one well-formed-looking packet from the guest.
    fn on_guest_packet(&mut self, h: &Header, payload: &[u8], tag: Option<u64>) -> TxEffect {
        let mut fx = TxEffect::default();
        let key = (h.src_port, h.dst_port);
        let answer_rst = h.op != OP_RST;
        // Header checks that need no connection.
        let bad = if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            self.stats.bad_cid += 1;
            Some("wrong CID")
        } else if h.type_ != TYPE_STREAM {
            self.stats.bad_type += 1;
            Some("type is not STREAM")
        } else if h.len != 0 && h.op != OP_RW {
            self.stats.bad_len += 1;
            Some("payload on a non-RW packet")
        } else if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op) {
            self.stats.bad_op += 1;
            Some("unknown op")
        } else {
            None
        };
        if let Some(why) = bad {
            warn_rl!(
                "virtio-vsock: bad packet (op {}, {}:{} -> {}:{}): {why}",
                h.op,
                h.src_cid,
                h.src_port,
                h.dst_cid,
                h.dst_port
            );
            if answer_rst {
                self.reset_conn(key, tag);
            } else {
                self.drop_conn(key);
            }
            return fx;
        }
        match h.op {
            OP_REQUEST => self.on_request(h, key, tag, &mut fx),
            OP_RESPONSE => {
                let connecting = self
                    .conns
                    .get(&key)
                    .is_some_and(|c| c.state == ConnState::Connecting);
                if !connecting {
                    self.unknown(h, key, tag);
                    return fx;
                }
                let line = format!("OK {}\n", h.dst_port);
                let Some(c) = self.conns.get_mut(&key) else {
                    return fx;
                };
                c.learn_credit(h);
                c.state = ConnState::Established;
                c.tag = tag;
                let wrote = (&c.stream).write(line.as_bytes());
                match wrote {
                    Ok(n) if n == line.len() => {
                        fx.connections = 1;
                        self.stats.connections_opened += 1;
                    }
                    _ => {
                        self.stats.host_write_errors += 1;
                        self.reset_conn(key, tag);
                    }
                }
            }
            OP_RST => {
                // Never answered: an RST for no connection is dropped.
                let live = self.drop_conn(key).is_some();
                if live {
                    self.stats.resets_from_guest += 1;
                    fx.resets = 1;
                }
            }
            OP_SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.unknown(h, key, tag);
                    return fx;
                };
                c.learn_credit(h);
                c.guest_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_forward(key);
            }
            OP_RW => {
                let ok = self.conns.get(&key).is_some_and(|c| {
                    c.state == ConnState::Established && c.guest_shutdown & SHUTDOWN_SEND == 0
                });
                if !ok {
                    self.unknown(h, key, tag);
                    return fx;
                }
                let Some(c) = self.conns.get_mut(&key) else {
                    return fx;
                };
                c.learn_credit(h);
                if c.backlog.len().saturating_add(payload.len()) > CONN_BUF_ALLOC as usize {
                    self.stats.credit_violations += 1;
                    warn_rl!("virtio-vsock: guest sent past its credit on {key:?}; reset");
                    self.reset_conn(key, tag);
                    return fx;
                }
                c.rx_cnt = c.rx_cnt.wrapping_add(len_u32(payload.len()));
                fx.bytes = len_u64(payload.len());
                self.stats.tx_bytes += fx.bytes;
                if let (Some(l), true) = (self.limits.as_mut(), fx.bytes > 0) {
                    // Behind its own unpaid bytes, or over its limit: it
                    // waits unpaid in the backlog (module `limit`).
                    let held = c.tx_unpaid > 0 || !l.pass_or_hold(key, c.tag, Way::ToHost, fx.bytes);
                    if held {
                        self.stats.throttled += u64::from(c.tx_unpaid == 0);
                        c.backlog.extend(payload);
                        c.tx_unpaid += payload.len();
                        return fx;
                    }
                }
                if let Err(e) = Self::write_host(c, payload) {
                    self.stats.host_write_errors += 1;
                    warn_rl!("virtio-vsock: host stream write failed on {key:?}: {e}; reset");
                    self.reset_conn(key, tag);
                    return fx;
                }
                self.after_forward(key);
            }
            OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.unknown(h, key, tag);
                    return fx;
                };
                c.learn_credit(h);
                if h.op == OP_CREDIT_REQUEST {
                    self.queue_credit_update(key);
                }
            }
            _ => {}
        }
        fx
    }

    fn unknown(&mut self, h: &Header, key: ConnKey, tag: Option<u64>) {
        self.stats.unknown_connection += 1;
        warn_rl!(
            "virtio-vsock: op {} for no usable connection {}:{}; reset",
            h.op,
            h.src_port,
            h.dst_port
        );
        self.reset_conn(key, tag);
    }

    fn on_request(&mut self, h: &Header, key: ConnKey, tag: Option<u64>, fx: &mut TxEffect) {
        if self.conns.contains_key(&key) {
            self.unknown(h, key, tag);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.connection_limit += 1;
            warn_rl!(
                "virtio-vsock: {MAX_CONNECTIONS} connections open; REQUEST to port {} refused",
                h.dst_port
            );
            self.rst(key, tag);
            return;
        }
        let stream = self
            .connector
            .connect(h.dst_port)
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        match stream {
            Ok(stream) => {
                let token = self.alloc_token();
                let mut c = Conn::new(stream, token, tag, ConnState::Established);
                c.learn_credit(h);
                self.conns.insert(key, c);
                self.by_token.insert(token, key);
                self.push_ctrl(key, OP_RESPONSE, 0, tag);
                self.stats.connections_opened += 1;
                fx.connections = 1;
            }
            Err(e) => {
                self.stats.connections_refused += 1;
                warn_rl!("virtio-vsock: connect to host port {} refused: {e}", h.dst_port);
                self.rst(key, tag);
            }
        }
    }

    fn raise_interrupt(&mut self, tag: Option<u64>, out: &mut ProcessStats, charger: &mut dyn Charger) {
        if self.base.signal_used(tag, charger, "virtio-vsock") {
            self.stats.interrupts += 1;
            out.interrupted = true;
        } else {
            self.stats.queue_errors += 1;
        }
    }

    /// [`pending_chains`], counting a bogus avail index.
    fn pending_chains(queue: &Queue, mem: &GuestMemoryMmap, stats: &mut VsockStats) -> Option<u16> {
        let pending = crate::virtio::pending_chains(queue, mem, "virtio-vsock");
        stats.queue_errors += u64::from(pending.is_none());
        pending
    }

    /// Runs `f` with guest memory and the queues taken out of the state;
    /// `None` when the device is inactive (counted).
    fn with_queues<R>(
        &mut self,
        f: impl FnOnce(&mut Self, &GuestMemoryMmap, &mut [Queue]) -> R,
    ) -> Option<R> {
        let DeviceState::Activated { mem, mut queues } =
            std::mem::replace(&mut self.base.state, DeviceState::Inactive)
        else {
            self.stats.ignored_notifications += 1;
            return None;
        };
        let r = f(self, &mem, &mut queues);
        self.base.state = DeviceState::Activated { mem, queues };
        Some(r)
    }

    /// Takes the notified TX packets, charging each to its tag.
    pub fn process_tx(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let notifier = self.base.notifiers[TX_QUEUE].clone();
        self.with_queues(|d, mem, queues| {
            let mut out = ProcessStats::default();
            let Some(queue) = queues.get_mut(TX_QUEUE) else {
                return out;
            };
            if Self::pending_chains(queue, mem, &mut d.stats).is_none() {
                return out;
            }
            let mut buf = std::mem::take(&mut d.tx_buf);
            let mut last_tag = None;
            let mut cpu_mark = thread_cpu_ns();
            while let Some(notification) = notifier.covering(queue.next_avail()) {
                if d.ctrl.len() >= TX_CTRL_LIMIT {
                    // Replies wait for receive chains: take no more until
                    // RX drains them (it wakes TX then).
                    out.more_pending = true;
                    break;
                }
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let explicit = (d.queue_tags.as_mut()).and_then(|(r, dev)| r.chain_tag(*dev, TX_QUEUE, head));
                let tag = explicit.or(notification.tag);
                let mut charge = VsockCharge {
                    tag,
                    dir: NetDir::Tx,
                    packets: 0,
                    bytes: 0,
                    host_ns: 0,
                    connections: 0,
                    resets: 0,
                    throttle_events: 0,
                    throttled_ns: 0,
                };
                match packet::parse_tx(chain, queue.size(), &mut buf) {
                    Ok(h) => {
                        d.stats.tx_packets += 1;
                        out.packets += 1;
                        charge.packets = 1;
                        let fx = d.on_guest_packet(&h, &buf[HDR_LEN..], tag);
                        charge.bytes = fx.bytes;
                        charge.connections = fx.connections;
                        charge.resets = fx.resets;
                    }
                    Err((e, hdr)) => {
                        d.stats.malformed += 1;
                        out.dropped += 1;
                        warn_rl!("virtio-vsock: TX chain at head {head} is no packet: {e}");
                        // Name the connection when the header was readable.
                        let lengthy = matches!(e, PacketError::TooLong | PacketError::LenBeyondChain);
                        if let Some(h) = hdr.filter(|h| h.op != OP_RST && lengthy && h.src_cid == d.cid) {
                            d.reset_conn((h.src_port, h.dst_port), tag);
                        }
                    }
                }
                // Charge before the used element is published.
                charge.host_ns = lap(&mut cpu_mark);
                charger.charge_vsock(&charge);
                if let Err(e) = queue.add_used(mem, head, 0) {
                    d.stats.queue_errors += 1;
                    warn_rl!("virtio-vsock: used ring update failed: {e}");
                }
                out.chains += 1;
                last_tag = tag;
                notifier.retire(queue.next_avail(), false);
                if out.chains >= u64::from(queue.size()) {
                    out.more_pending = queue
                        .avail_idx(mem, Ordering::Acquire)
                        .is_ok_and(|i| i.0 != queue.next_avail());
                    if out.more_pending {
                        notifier.wake();
                    }
                    break;
                }
            }
            if !out.more_pending {
                notifier.retire(queue.next_avail(), true);
            }
            d.tx_buf = buf;
            if out.chains > 0 && queue.needs_notification(mem).unwrap_or(true) {
                d.raise_interrupt(last_tag, &mut out, charger);
            }
            out
        })
        .unwrap_or_default()
    }

    /// The header of a packet from the host side of `key`, with our credit.
    fn host_header(&mut self, key: ConnKey, op: u16, flags: u32, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&key) {
            Some(c) => {
                c.last_fwd_sent = c.fwd_cnt;
                (CONN_BUF_ALLOC, c.fwd_cnt)
            }
            None => (0, 0),
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.1,
            dst_port: key.0,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Delivers control packets, then host data, into the guest's receive
    /// chains while both last.
    pub fn process_rx(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let _ = self.base.notifiers[RX_QUEUE].take();
        let rx_notifier = self.base.notifiers[RX_QUEUE].clone();
        let tx_notifier = self.base.notifiers[TX_QUEUE].clone();
        let ctrl_before = self.ctrl.len();
        let out = self
            .with_queues(|d, mem, queues| {
                let mut out = ProcessStats::default();
                let Some(queue) = queues.get_mut(RX_QUEUE) else {
                    return out;
                };
                let mut last_tag = None;
                let mut cpu_mark = thread_cpu_ns();
                let mut data = std::mem::take(&mut d.rx_buf);
                loop {
                    if d.ctrl.is_empty() && d.rx_ready.is_empty() {
                        break;
                    }
                    if out.chains >= u64::from(queue.size()) {
                        // Let other devices have the loop; come back.
                        out.more_pending = true;
                        rx_notifier.wake();
                        break;
                    }
                    let Some(avail) = Self::pending_chains(queue, mem, &mut d.stats) else {
                        break;
                    };
                    if avail == 0 {
                        out.rx_stalled = true;
                        break;
                    }
                    let Some(chain) = queue.pop_descriptor_chain(mem) else {
                        out.rx_stalled = true;
                        break;
                    };
                    let head = chain.head_index();
                    let (bufs, cap) = match packet::rx_buffers(chain, queue.size()) {
                        Ok(b) => b,
                        Err(e) => {
                            d.stats.rx_malformed += 1;
                            out.dropped += 1;
                            out.chains += 1;
                            warn_rl!("virtio-vsock: RX chain at head {head} consumed empty: {e}");
                            if let Err(e) = queue.add_used(mem, head, 0) {
                                d.stats.queue_errors += 1;
                                warn_rl!("virtio-vsock: used ring update failed: {e}");
                            }
                            continue;
                        }
                    };
                    let mut charge = VsockCharge {
                        tag: None,
                        dir: NetDir::Rx,
                        packets: 1,
                        bytes: 0,
                        host_ns: 0,
                        connections: 0,
                        resets: 0,
                        throttle_events: 0,
                        throttled_ns: 0,
                    };
                    let pkt: Option<(Header, usize)> = if let Some(c) = d.ctrl.pop_front() {
                        let live = d.conns.contains_key(&c.key);
                        if !live && c.op != OP_RST {
                            // Its connection went away meanwhile.
                            queue.go_to_previous_position();
                            continue;
                        }
                        if c.op == OP_CREDIT_UPDATE {
                            if let Some(conn) = d.conns.get_mut(&c.key) {
                                conn.credit_update_queued = false;
                            }
                        }
                        if c.op == OP_RST {
                            d.stats.resets_to_guest += 1;
                            charge.resets = 1;
                        }
                        charge.tag = c.tag;
                        Some((d.host_header(c.key, c.op, c.flags, 0), 0))
                    } else {
                        d.read_host(cap, &mut data, &mut charge)
                    };
                    let Some((h, n)) = pkt else {
                        queue.go_to_previous_position();
                        continue;
                    };
                    let ok = packet::scatter(mem, &bufs, &[&h.encode(), &data[..n]]);
                    let used = if ok {
                        d.stats.rx_packets += 1;
                        d.stats.rx_bytes += len_u64(n);
                        out.packets += 1;
                        len_u32(HDR_LEN + n)
                    } else {
                        d.stats.queue_errors += 1;
                        out.dropped += 1;
                        charge.packets = 0;
                        charge.bytes = 0;
                        0
                    };
                    charge.host_ns = lap(&mut cpu_mark);
                    charger.charge_vsock(&charge);
                    last_tag = charge.tag;
                    if let Err(e) = queue.add_used(mem, head, used) {
                        d.stats.queue_errors += 1;
                        warn_rl!("virtio-vsock: used ring update failed: {e}");
                    }
                    out.chains += 1;
                }
                d.rx_buf = data;
                if out.chains > 0 && queue.needs_notification(mem).unwrap_or(true) {
                    d.raise_interrupt(last_tag, &mut out, charger);
                }
                out
            })
            .unwrap_or(ProcessStats {
                rx_stalled: true,
                ..ProcessStats::default()
            });
        if ctrl_before >= TX_CTRL_LIMIT && self.ctrl.len() < TX_CTRL_LIMIT {
            // TX stopped for want of room for its replies: resume it.
            tx_notifier.wake();
        }
        out
    }

    /// Reads the next ready connection's data into `data` (at most what the
    /// chain of `cap` bytes and the guest's credit allow). `None`: nothing
    /// to send on this chain (the loop goes on with the next candidate).
    fn read_host(
        &mut self,
        cap: usize,
        data: &mut [u8],
        charge: &mut VsockCharge,
    ) -> Option<(Header, usize)> {
        let key = self.rx_ready.pop_front()?;
        let c = self.conns.get_mut(&key)?;
        c.in_rx_ready = false;
        if !c.readable() || c.rx_held {
            return None;
        }
        let room = (cap - HDR_LEN).min(data.len());
        let n = room.min(usize::try_from(c.peer_credit()).unwrap_or(usize::MAX));
        if n == 0 {
            return None;
        }
        let tag = c.tag;
        let n = match self.limits.as_mut() {
            None => n,
            Some(l) => match Self::paid_read_len(l, key, c, &mut data[..n]) {
                Ok(n) => n,
                Err(()) => {
                    self.stats.throttled += 1;
                    return None;
                }
            },
        };
        let got = (&c.stream).read(&mut data[..n]);
        if let (Ok(k), true) = (&got, self.limits.is_some()) {
            c.rx_prepaid = c.rx_prepaid.saturating_sub(len_u64(*k));
        }
        match got {
            Ok(0) => {
                c.host_eof = true;
                if !c.shutdown_sent {
                    let sent = self.push_ctrl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, tag);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.shutdown_sent = sent;
                    }
                }
                None
            }
            Ok(k) => {
                c.tx_cnt = c.tx_cnt.wrapping_add(len_u32(k));
                // There may be more: round robin with the other ready ones.
                c.in_rx_ready = true;
                self.rx_ready.push_back(key);
                charge.tag = tag;
                charge.bytes = len_u64(k);
                Some((self.host_header(key, OP_RW, 0, len_u32(k)), k))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => None,
            Err(e) => {
                self.stats.host_read_errors += 1;
                warn_rl!("virtio-vsock: host stream read failed on {key:?}: {e}; reset");
                self.reset_conn(key, tag);
                None
            }
        }
    }

    /// A host descriptor with event data `token` reported `set`; the caller
    /// then runs [`Self::process_rx`] and [`Self::sync_watch`]. Host work
    /// done here (draining a backlog) is charged to the connection's owner.
    pub fn on_host_event(&mut self, token: u32, set: EventSet, charger: &mut dyn Charger) {
        let mut cpu_mark = thread_cpu_ns();
        if token == LISTENER_TOKEN {
            self.accept_host();
            return;
        }
        if self.pending.contains_key(&token) {
            self.read_connect_line(token);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else { return };
        let tag = c.tag;
        if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) && !c.backlog.is_empty() {
            let before = c.fwd_cnt;
            let r = Self::drain_backlog(c);
            let moved = c.fwd_cnt != before;
            let resets = match r {
                Ok(()) => self.after_forward(key),
                Err(e) => {
                    self.stats.host_write_errors += 1;
                    warn_rl!("virtio-vsock: host stream write failed on {key:?}: {e}; reset");
                    self.reset_conn(key, tag)
                }
            };
            if moved || resets > 0 {
                charger.charge_vsock(&VsockCharge {
                    tag,
                    dir: NetDir::Tx,
                    packets: 0,
                    bytes: 0,
                    host_ns: lap(&mut cpu_mark),
                    connections: 0,
                    resets: 0,
                    throttle_events: 0,
                    throttled_ns: 0,
                });
            }
        }
        if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
            if let Some(c) = self.conns.get_mut(&key) {
                if !c.in_rx_ready {
                    c.in_rx_ready = true;
                    self.rx_ready.push_back(key);
                }
            }
        }
    }

    fn accept_host(&mut self) {
        let Some((listener, _)) = &self.listener else {
            return;
        };
        let mut accepted = Vec::new();
        for _ in 0..MAX_PENDING_HOST {
            match listener.accept() {
                Ok((s, _)) => accepted.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn_rl!("virtio-vsock: accept failed: {e}");
                    break;
                }
            }
        }
        for stream in accepted {
            let full = self.pending.len() >= MAX_PENDING_HOST || self.conns.len() >= MAX_CONNECTIONS;
            if full
                || !matches!(self.base.state, DeviceState::Activated { .. })
                || stream.set_nonblocking(true).is_err()
            {
                self.stats.connection_limit += u64::from(full);
                drop(stream);
                continue;
            }
            let token = self.alloc_token();
            self.pending.insert(
                token,
                PendingHost {
                    stream,
                    line: Vec::new(),
                    registered: None,
                },
            );
        }
    }

    /// Reads a host client's `CONNECT <port>\n` a byte at a time, so that
    /// nothing after the line is taken from the stream.
    fn read_connect_line(&mut self, token: u32) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match (&p.stream).read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => {
                    let line = std::str::from_utf8(&p.line).unwrap_or("");
                    break line
                        .trim_end_matches('\r')
                        .strip_prefix("CONNECT ")
                        .and_then(|s| s.trim().parse::<u32>().ok());
                }
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let Some(port) = port else {
            self.stats.bad_connect_lines += 1;
            warn_rl!("virtio-vsock: a host client sent no valid `CONNECT <port>` line");
            self.closed.push((token, p.stream, p.registered.is_some()));
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.connection_limit += 1;
            self.closed.push((token, p.stream, p.registered.is_some()));
            return;
        }
        let host_port = loop {
            let hp = self.next_host_port;
            self.next_host_port = self.next_host_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, hp)) {
                break hp;
            }
        };
        let key = (port, host_port);
        // The stream keeps its token; it is not watched until the guest answers.
        let mut c = Conn::new(p.stream, token, None, ConnState::Connecting);
        c.registered = p.registered;
        self.conns.insert(key, c);
        self.by_token.insert(token, key);
        self.push_ctrl(key, OP_REQUEST, 0, None);
    }

    /// How many bytes of `c`'s host stream may be read into `buf` now
    /// under its limit: those a limit already let go, else those waiting
    /// there (peeked, not taken) when their tokens are there. `Err`: none
    /// (the limit holds them: the stream is not read, nor watched for
    /// input, until [`Self::release_held`]).
    fn paid_read_len(l: &mut VsockLimits, key: ConnKey, c: &mut Conn, buf: &mut [u8]) -> Result<usize, ()> {
        if c.rx_prepaid > 0 {
            return Ok(buf.len().min(usize::try_from(c.rx_prepaid).unwrap_or(usize::MAX)));
        }
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the fd
        // is the connection's own open stream; MSG_PEEK leaves the data there.
        let got = unsafe {
            libc::recv(
                c.stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // End of file or an error: the read that follows sees it again.
        let Some(k) = usize::try_from(got).ok().filter(|&k| k > 0) else {
            return Ok(buf.len());
        };
        if l.pass_or_hold(key, c.tag, Way::ToGuest, len_u64(k)) {
            c.rx_prepaid = len_u64(k);
            return Ok(k);
        }
        c.rx_held = true;
        Err(())
    }

    /// Puts per-container limits on the device (`--limit PATH:vsock-bytes=...`,
    /// module `limit`); `lookup` tells which limit a connection's owner falls under.
    pub fn set_limits(
        &mut self,
        limits: &[BlockLimitConfig],
        lookup: Box<dyn LimitLookup>,
    ) -> Result<(), BucketError> {
        self.limits = Some(VsockLimits::new(limits, lookup)?);
        Ok(())
    }

    /// Connections' bytes a limit holds now (each way counted apart).
    pub fn throttled_now(&self) -> usize {
        self.limits.as_ref().map_or(0, VsockLimits::held)
    }

    /// Time until the first held bytes may go (`None`: nothing held).
    pub fn next_release(&mut self) -> Option<std::time::Duration> {
        self.limits.as_mut().and_then(VsockLimits::next_wait)
    }

    /// Lets go the held bytes whose tokens are there now: bytes to the
    /// host are written (the rest of the connection's unpaid bytes take
    /// their turn), a held host stream is read again (the caller then runs
    /// [`Self::process_rx`] and [`Self::sync_watch`]). Each is charged to
    /// the connection's owner as one throttle event with the time it was held.
    pub fn release_held(&mut self, charger: &mut dyn Charger) {
        let mut cpu_mark = thread_cpu_ns();
        while let Some(Released { held, throttled_ns }) =
            self.limits.as_mut().and_then(VsockLimits::pop_ready)
        {
            let key = held.key;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let tag = c.tag;
            let dir = match held.way {
                Way::ToHost => {
                    c.tx_unpaid = c
                        .tx_unpaid
                        .saturating_sub(usize::try_from(held.bytes).unwrap_or(usize::MAX));
                    self.forward_paid(key);
                    NetDir::Tx
                }
                Way::ToGuest => {
                    c.rx_held = false;
                    c.rx_prepaid = c.rx_prepaid.saturating_add(held.bytes);
                    if !c.in_rx_ready {
                        c.in_rx_ready = true;
                        self.rx_ready.push_back(key);
                    }
                    NetDir::Rx
                }
            };
            charger.charge_vsock(&VsockCharge {
                tag,
                dir,
                packets: 0,
                bytes: 0,
                host_ns: lap(&mut cpu_mark),
                connections: 0,
                resets: 0,
                throttle_events: 1,
                throttled_ns,
            });
        }
    }

    /// After some of `key`'s unpaid bytes were let go: the rest asks its
    /// limit again (held again, or paid now), and what is paid is written.
    fn forward_paid(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if let (Some(l), true) = (self.limits.as_mut(), c.tx_unpaid > 0) {
            if l.pass_or_hold(key, c.tag, Way::ToHost, len_u64(c.tx_unpaid)) {
                c.tx_unpaid = 0;
            } else {
                self.stats.throttled += 1;
            }
        }
        let tag = c.tag;
        match Self::drain_backlog(c) {
            Ok(()) => {
                self.after_forward(key);
            }
            Err(e) => {
                self.stats.host_write_errors += 1;
                warn_rl!("virtio-vsock: host stream write failed on {key:?}: {e}; reset");
                self.reset_conn(key, tag);
            }
        }
    }

    /// Brings the event loop's watch list in line with what each host
    /// stream waits for, and closes the streams of finished connections.
    pub fn sync_watch(&mut self, w: &mut dyn FdWatcher) {
        for (token, stream, watched) in self.closed.drain(..) {
            if watched {
                if let Err(e) = w.remove(stream.as_raw_fd(), token) {
                    warn_rl!("virtio-vsock: cannot unwatch a closed stream: {e}");
                }
            }
        }
        for c in self.conns.values_mut() {
            let want = c.interest();
            apply_watch(w, c.stream.as_raw_fd(), c.token, &mut c.registered, want);
        }
        for (token, p) in self.pending.iter_mut() {
            apply_watch(w, p.stream.as_raw_fd(), *token, &mut p.registered, EventSet::IN);
        }
    }

    /// Whether there is RX work the guest's buffers could take.
    pub fn rx_work(&self) -> bool {
        !self.ctrl.is_empty() || !self.rx_ready.is_empty()
    }

    /// The configuration space: the guest CID, 64-bit little-endian.
    fn config(&self) -> [u8; 8] {
        self.cid.to_le_bytes()
    }
}

fn apply_watch(w: &mut dyn FdWatcher, fd: RawFd, token: u32, reg: &mut Option<EventSet>, want: EventSet) {
    let r = match (*reg, want.is_empty()) {
        (None, true) => return,
        (Some(_), true) => w.remove(fd, token).map(|()| None),
        (None, false) => w.add(fd, token, want).map(|()| Some(want)),
        (Some(have), false) if have != want => w.modify(fd, token, want).map(|()| Some(want)),
        (Some(_), false) => return,
    };
    match r {
        Ok(now) => *reg = now,
        Err(e) => warn_rl!("virtio-vsock: cannot change the watch of a host stream: {e}"),
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats.named()
    }

    fn base(&self) -> &VirtioBase {
        &self.base
    }

    fn base_mut(&mut self) -> &mut VirtioBase {
        &mut self.base
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        crate::virtio::read_config(&self.config(), offset, data)
    }

    fn reset(&mut self) {
        self.base.reset();
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.drop_conn(k);
        }
        for (token, p) in self.pending.drain() {
            self.closed.push((token, p.stream, p.registered.is_some()));
        }
        self.ctrl.clear();
        self.rx_ready.clear();
        if let Some(l) = self.limits.as_mut() {
            l.forget_all();
        }
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        if let Some((_, file)) = &self.listener {
            file.remove();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::BlockCharge;
    use std::sync::Arc;
    use std::sync::Mutex;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) const CID: u64 = 3;
    const WRITE: u16 = 2;
    const TX_BUFS: u64 = 0x4_0000;
    const RX_BUFS: u64 = 0x8_0000;
    const RX_STRIDE: u64 = 0x2000;

    /// Records every charge.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        pub(crate) vsocks: Vec<VsockCharge>,
        pub(crate) interrupts: Vec<Option<u64>>,
    }

    impl Charger for Recorder {
        fn charge_block(&mut self, _c: &BlockCharge) {}
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.interrupts.push(tag);
        }
        fn charge_vsock(&mut self, c: &VsockCharge) {
            self.vsocks.push(*c);
        }
    }

    impl Charger for Arc<Mutex<Recorder>> {
        fn charge_block(&mut self, _c: &BlockCharge) {}
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.lock().unwrap().charge_interrupt(tag);
        }
        fn charge_vsock(&mut self, c: &VsockCharge) {
            self.lock().unwrap().charge_vsock(c);
        }
    }

    /// Hands out one end of a stream pair per connect, keeping the other.
    #[derive(Clone, Default)]
    pub(crate) struct PairConnector {
        pub(crate) peers: Arc<Mutex<Vec<(u32, UnixStream)>>>,
    }

    impl VsockConnector for PairConnector {
        fn connect(&self, port: u32) -> io::Result<UnixStream> {
            if port >= 9000 {
                return Err(io::ErrorKind::ConnectionRefused.into());
            }
            let (a, b) = UnixStream::pair()?;
            self.peers.lock().unwrap().push((port, b));
            Ok(a)
        }
    }

    impl PairConnector {
        pub(crate) fn peer(&self, i: usize) -> UnixStream {
            self.peers.lock().unwrap()[i].1.try_clone().unwrap()
        }
    }

    /// Records watch changes.
    #[derive(Default)]
    pub(crate) struct Watches {
        pub(crate) now: HashMap<u32, EventSet>,
    }

    impl FdWatcher for Watches {
        fn add(&mut self, _fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
            assert!(self.now.insert(token, set).is_none(), "token {token} added twice");
            Ok(())
        }
        fn modify(&mut self, _fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
            assert!(
                self.now.insert(token, set).is_some(),
                "token {token} modified unwatched"
            );
            Ok(())
        }
        fn remove(&mut self, _fd: RawFd, token: u32) -> io::Result<()> {
            assert!(
                self.now.remove(&token).is_some(),
                "token {token} removed unwatched"
            );
            Ok(())
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    type Mq<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

    /// RX, TX and event queues of 16 entries.
    pub(crate) fn queues(m: &GuestMemoryMmap) -> (Mq<'_>, Mq<'_>, Mq<'_>) {
        (
            MockSplitQueue::create(m, GuestAddress(0), 16),
            MockSplitQueue::create(m, GuestAddress(0x1_0000), 16),
            MockSplitQueue::create(m, GuestAddress(0x2_0000), 16),
        )
    }

    fn push_chain(q: &Mq<'_>, at: u16, descs: &[(u64, u32, u16)]) {
        let n = descs.len();
        let raw: Vec<RawDescriptor> = (at..)
            .zip(descs.iter().enumerate())
            .map(|(i, (k, &(addr, len, flags)))| {
                let (flags, next) = if k + 1 < n { (flags | 1, i + 1) } else { (flags, 0) };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        q.add_desc_chains(&raw, at).unwrap();
    }

    /// A header from the guest (CID 3) to the host.
    pub(crate) fn hdr(
        op: u16,
        src_port: u32,
        dst_port: u32,
        len: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Publishes header + payload as TX packet `slot` (descriptors 2*slot, 2*slot+1).
    pub(crate) fn push_tx(m: &GuestMemoryMmap, q: &Mq<'_>, slot: u16, h: &Header, payload: &[u8]) {
        let addr = TX_BUFS + 0x1000 * u64::from(slot);
        m.write_slice(&h.encode(), GuestAddress(addr)).unwrap();
        m.write_slice(payload, GuestAddress(addr + 64)).unwrap();
        let hl = u32::try_from(HDR_LEN).unwrap();
        if payload.is_empty() {
            push_chain(q, 2 * slot, &[(addr, hl, 0)]);
        } else {
            let pl = u32::try_from(payload.len()).unwrap();
            push_chain(q, 2 * slot, &[(addr, hl, 0), (addr + 64, pl, 0)]);
        }
    }

    /// Posts a device-writable receive buffer of `len` bytes at descriptor `at`.
    pub(crate) fn push_rx(q: &Mq<'_>, at: u16, len: u32) {
        push_chain(q, at, &[(RX_BUFS + RX_STRIDE * u64::from(at), len, WRITE)]);
    }

    /// The host stream token of connection `key`.
    pub(crate) fn token_of(d: &VsockDevice, key: ConnKey) -> u32 {
        d.conns[&key].token
    }

    /// The packet in used element `i` of the RX queue.
    pub(crate) fn read_rx(m: &GuestMemoryMmap, q: &Mq<'_>, i: usize) -> (Header, Vec<u8>) {
        let e = q.used().ring().ref_at(i).unwrap().load();
        let mut b = vec![0u8; usize::try_from(e.len()).unwrap()];
        m.read_slice(&mut b, GuestAddress(RX_BUFS + RX_STRIDE * u64::from(e.id())))
            .unwrap();
        let h = Header::decode(&b).unwrap();
        (h, b[HDR_LEN..].to_vec())
    }

    pub(crate) fn used_idx(q: &Mq<'_>) -> u16 {
        q.used().idx().load()
    }

    pub(crate) fn activated(
        m: &GuestMemoryMmap,
        rx: &Mq<'_>,
        tx: &Mq<'_>,
        ev: &Mq<'_>,
        connector: Box<dyn VsockConnector>,
    ) -> VsockDevice {
        let mut d = VsockDevice::new(CID, connector, None).unwrap();
        let qs = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        d.activate(m.clone(), qs, 1 << VIRTIO_F_VERSION_1).unwrap();
        d
    }

    /// A device whose guest port 40 is connected to host port 1024 (tag 7).
    pub(crate) fn connected<'a>(
        m: &'a GuestMemoryMmap,
        qs: &(Mq<'a>, Mq<'a>, Mq<'a>),
        guest_buf: u32,
    ) -> (VsockDevice, PairConnector, Recorder) {
        let conn = PairConnector::default();
        let mut d = activated(m, &qs.0, &qs.1, &qs.2, Box::new(conn.clone()));
        push_tx(m, &qs.1, 0, &hdr(OP_REQUEST, 40, 1024, 0, guest_buf, 0), &[]);
        push_rx(&qs.0, 0, 4096);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.process_rx(&mut rec);
        (d, conn, rec)
    }

    #[test]
    fn request_is_answered_with_a_response_and_charged_to_the_notifier() {
        let m = mem();
        let qs = queues(&m);

        let (d, conn, rec) = connected(&m, &qs, 4096);

        let (h, payload) = read_rx(&m, &qs.0, 0);
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.type_),
            (OP_RESPONSE, HOST_CID, CID, 1024, 40, TYPE_STREAM)
        );
        assert_eq!((h.buf_alloc, h.fwd_cnt, payload.len()), (CONN_BUF_ALLOC, 0, 0));
        assert_eq!(conn.peers.lock().unwrap()[0].0, 1024);
        assert_eq!(d.connections(), 1);
        let got: Vec<_> = rec
            .vsocks
            .iter()
            .map(|c| (c.tag, c.dir, c.packets, c.connections))
            .collect();
        assert_eq!(
            got,
            vec![(Some(7), NetDir::Tx, 1, 1), (Some(7), NetDir::Rx, 1, 0)]
        );
        assert_eq!(rec.interrupts, vec![Some(7), Some(7)]);
        assert_eq!(used_idx(&qs.1), 1);
    }

    #[test]
    fn data_flows_both_ways_and_rx_is_charged_to_the_connection_owner() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let mut peer = conn.peer(0);
        push_tx(&m, &qs.1, 1, &hdr(OP_RW, 40, 1024, 3, 4096, 0), b"abc");
        push_rx(&qs.0, 1, 4096);
        let mut rec = Recorder::default();

        // Another principal notifies the TX: the data is charged to it,
        // what comes back to the connection's owner.
        d.queue_notifiers()[TX_QUEUE].post(Some(8));
        d.process_tx(&mut rec);
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).unwrap();
        peer.write_all(b"reply!!").unwrap();
        let token = d.conns[&(40, 1024)].token;
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);

        assert_eq!(&got, b"abc");
        let (h, payload) = read_rx(&m, &qs.0, 1);
        assert_eq!((h.op, h.len, payload.as_slice()), (OP_RW, 7, &b"reply!!"[..]));
        assert_eq!(h.fwd_cnt, 3);
        let got: Vec<_> = rec
            .vsocks
            .iter()
            .map(|c| (c.tag, c.dir, c.packets, c.bytes))
            .collect();
        assert_eq!(
            got,
            vec![(Some(8), NetDir::Tx, 1, 3), (Some(7), NetDir::Rx, 1, 7)]
        );
        let s = d.stats();
        assert_eq!((s.tx_bytes, s.rx_bytes, s.rx_packets), (3, 7, 2));
    }

    #[test]
    fn the_device_never_sends_past_the_guest_credit_and_resumes_on_credit_update() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 8);
        let mut peer = conn.peer(0);
        for i in 1..6 {
            push_rx(&qs.0, i, 4096);
        }
        let mut rec = Recorder::default();
        let mut w = Watches::default();
        peer.write_all(&[1u8; 20]).unwrap();
        let token = d.conns[&(40, 1024)].token;

        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);
        // Out of credit: the stream is not watched and nothing more is read.
        assert_eq!(read_rx(&m, &qs.0, 1).0.len, 8);
        assert_eq!(used_idx(&qs.0), 2);
        assert!(!w.now.contains_key(&token));
        d.process_rx(&mut rec);
        assert_eq!(used_idx(&qs.0), 2);

        // The guest consumed 8: the stream is watched again.
        push_tx(&m, &qs.1, 1, &hdr(OP_CREDIT_UPDATE, 40, 1024, 0, 8, 8), &[]);
        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.sync_watch(&mut w);
        assert_eq!(w.now.get(&token), Some(&EventSet::IN));
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);
        assert_eq!(read_rx(&m, &qs.0, 2).0.len, 8);
        assert_eq!(used_idx(&qs.0), 3);

        // A CREDIT_REQUEST is answered with our credit.
        push_tx(&m, &qs.1, 2, &hdr(OP_CREDIT_REQUEST, 40, 1024, 0, 8, 16), &[]);
        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);
        let ops: Vec<u16> = (3..used_idx(&qs.0))
            .map(|i| read_rx(&m, &qs.0, usize::from(i)).0.op)
            .collect();
        assert!(ops.contains(&OP_CREDIT_UPDATE), "{ops:?}");
        let total: u32 = (1..used_idx(&qs.0))
            .map(|i| read_rx(&m, &qs.0, usize::from(i)).0)
            .filter(|h| h.op == OP_RW)
            .map(|h| h.len)
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn guest_shutdown_of_both_directions_closes_the_host_stream_and_is_answered_with_rst() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let mut peer = conn.peer(0);
        let mut sd = hdr(OP_SHUTDOWN, 40, 1024, 0, 4096, 0);
        sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        push_tx(&m, &qs.1, 1, &sd, &[]);
        push_rx(&qs.0, 1, 4096);
        let mut rec = Recorder::default();
        let mut w = Watches::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);

        assert_eq!(read_rx(&m, &qs.0, 1).0.op, OP_RST);
        assert_eq!(d.connections(), 0);
        let mut b = [0u8; 1];
        assert_eq!(peer.read(&mut b).unwrap(), 0, "the host sees end of file");
        assert_eq!(rec.vsocks.iter().map(|c| c.resets).sum::<u64>(), 1);
    }

    #[test]
    fn host_end_of_file_sends_shutdown_and_a_half_close_reaches_the_host() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let mut peer = conn.peer(0);
        let mut sd = hdr(OP_SHUTDOWN, 40, 1024, 0, 4096, 0);
        sd.flags = SHUTDOWN_SEND;
        push_tx(&m, &qs.1, 1, &sd, &[]);
        push_rx(&qs.0, 1, 4096);
        let mut rec = Recorder::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        let mut b = [0u8; 1];
        assert_eq!(peer.read(&mut b).unwrap(), 0);
        drop(peer);
        conn.peers.lock().unwrap().clear();
        let token = d.conns[&(40, 1024)].token;
        d.on_host_event(token, EventSet::IN | EventSet::HANG_UP, &mut rec);
        d.process_rx(&mut rec);

        let (h, _) = read_rx(&m, &qs.0, 1);
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
        assert_eq!(d.connections(), 1, "the guest's RST ends it");
    }

    #[test]
    fn a_guest_rst_drops_the_connection_and_closes_the_host_stream() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let mut peer = conn.peer(0);
        push_tx(&m, &qs.1, 1, &hdr(OP_RST, 40, 1024, 0, 0, 0), &[]);
        let mut rec = Recorder::default();
        let mut w = Watches::default();
        d.sync_watch(&mut w);
        assert_eq!(w.now.len(), 1);

        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.sync_watch(&mut w);

        assert_eq!(d.connections(), 0);
        assert!(w.now.is_empty(), "unwatched before it is closed");
        let mut b = [0u8; 1];
        assert_eq!(peer.read(&mut b).unwrap(), 0);
        assert_eq!((d.stats().resets_from_guest, rec.vsocks[0].resets), (1, 1));
        assert_eq!(used_idx(&qs.0), 1, "no answer to an RST");
    }

    #[test]
    fn a_request_to_a_refused_port_gets_rst() {
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        let mut d = activated(&m, &rxq, &txq, &evq, Box::new(PairConnector::default()));
        push_tx(&m, &txq, 0, &hdr(OP_REQUEST, 41, 9999, 0, 4096, 0), &[]);
        push_rx(&rxq, 0, 4096);
        let mut rec = Recorder::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(5));
        d.process_tx(&mut rec);
        d.process_rx(&mut rec);

        let (h, _) = read_rx(&m, &rxq, 0);
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 9999, 41));
        assert_eq!((d.stats().connections_refused, d.connections()), (1, 0));
        assert!(rec.vsocks.iter().all(|c| c.tag == Some(5)));
    }

    #[test]
    fn malformed_packets_are_counted_consumed_and_answered_when_they_name_a_peer() {
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        let mut d = activated(&m, &rxq, &txq, &evq, Box::new(PairConnector::default()));
        // Chain too short for a header.
        push_chain(&txq, 0, &[(TX_BUFS, 20, 0)]);
        // Wrong type.
        let mut t = hdr(OP_REQUEST, 1, 2, 0, 0, 0);
        t.type_ = 2;
        push_tx(&m, &txq, 1, &t, &[]);
        // Wrong source CID.
        let mut c = hdr(OP_REQUEST, 1, 3, 0, 0, 0);
        c.src_cid = 9;
        push_tx(&m, &txq, 2, &c, &[]);
        // Unknown op.
        push_tx(&m, &txq, 3, &hdr(42, 1, 4, 0, 0, 0), &[]);
        // RW on no connection.
        push_tx(&m, &txq, 4, &hdr(OP_RW, 1, 5, 2, 0, 0), b"xy");
        // len beyond the chain, and over 64 KiB.
        push_tx(&m, &txq, 5, &hdr(OP_RW, 1, 6, 100, 0, 0), b"xy");
        push_tx(&m, &txq, 6, &hdr(OP_RW, 1, 7, 70_000, 0, 0), b"xy");
        // A payload on a REQUEST.
        push_tx(&m, &txq, 7, &hdr(OP_REQUEST, 1, 8, 2, 0, 0), b"xy");
        for i in 0..8 {
            push_rx(&rxq, i, 4096);
        }
        let mut rec = Recorder::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(1));
        let out = d.process_tx(&mut rec);
        d.process_rx(&mut rec);

        assert_eq!((out.chains, out.dropped), (8, 3));
        let s = d.stats();
        assert_eq!(
            (
                s.malformed,
                s.bad_type,
                s.bad_cid,
                s.bad_op,
                s.unknown_connection,
                s.bad_len
            ),
            (3, 1, 1, 1, 1, 1)
        );
        let rsts: Vec<u32> = (0..used_idx(&rxq))
            .map(|i| read_rx(&m, &rxq, usize::from(i)).0.src_port)
            .collect();
        assert_eq!(rsts, vec![2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(used_idx(&txq), 8);
        assert_eq!(d.connections(), 0);
    }

    #[test]
    fn data_past_the_advertised_credit_resets_the_connection() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let _peer = conn.peer(0);
        // Fill the backlog by pretending the host took nothing.
        let key = (40, 1024);
        d.conns
            .get_mut(&key)
            .unwrap()
            .backlog
            .extend(std::iter::repeat_n(0u8, 65_535));
        push_tx(&m, &qs.1, 1, &hdr(OP_RW, 40, 1024, 2, 4096, 0), b"xy");
        push_rx(&qs.0, 1, 4096);
        let mut rec = Recorder::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        d.process_rx(&mut rec);

        assert_eq!(d.stats().credit_violations, 1);
        assert_eq!(d.connections(), 0);
        assert_eq!(read_rx(&m, &qs.0, 1).0.op, OP_RST);
    }

    #[test]
    fn requests_beyond_the_connection_limit_are_refused() {
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        let mut d = activated(&m, &rxq, &txq, &evq, Box::new(PairConnector::default()));
        let mut opened = 0;
        for port in 0..=u32::try_from(MAX_CONNECTIONS).unwrap() {
            opened += d
                .on_guest_packet(&hdr(OP_REQUEST, port, 1024, 0, 0, 0), &[], None)
                .connections;
        }
        assert_eq!(opened, u64::try_from(MAX_CONNECTIONS).unwrap());
        assert_eq!(
            (d.connections(), d.stats().connection_limit),
            (MAX_CONNECTIONS, 1)
        );
        assert!(d.ctrl.len() <= MAX_CTRL);
    }

    #[test]
    fn a_host_client_connects_to_a_guest_port_and_gets_ok_on_response() {
        let dir = std::env::temp_dir().join(format!("rsrc-vsock-host-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("v.sock");
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        let mut d = VsockDevice::new(CID, Box::new(PairConnector::default()), Some(&path)).unwrap();
        let qs = vec![
            rxq.create_queue().unwrap(),
            txq.create_queue().unwrap(),
            evq.create_queue().unwrap(),
        ];
        d.activate(m.clone(), qs, 1 << VIRTIO_F_VERSION_1).unwrap();
        push_rx(&rxq, 0, 4096);
        push_rx(&rxq, 1, 4096);
        let mut rec = Recorder::default();
        let mut w = Watches::default();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 7000\nearly").unwrap();

        d.on_host_event(LISTENER_TOKEN, EventSet::IN, &mut rec);
        d.sync_watch(&mut w);
        let token = *w.now.keys().next().unwrap();
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);
        let (req, _) = read_rx(&m, &rxq, 0);
        assert_eq!(
            (req.op, req.dst_port, req.src_port),
            (OP_REQUEST, 7000, FIRST_HOST_PORT)
        );
        assert!(w.now.is_empty(), "not watched until the guest answers");
        // The guest accepts, under tag 4.
        push_tx(
            &m,
            &txq,
            0,
            &hdr(OP_RESPONSE, 7000, FIRST_HOST_PORT, 0, 4096, 0),
            &[],
        );
        d.queue_notifiers()[TX_QUEUE].post(Some(4));
        d.process_tx(&mut rec);
        d.sync_watch(&mut w);
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);

        let mut line = [0u8; 14];
        client.read_exact(&mut line).unwrap();
        assert_eq!(&line, format!("OK {FIRST_HOST_PORT}\n").as_bytes());
        let (h, payload) = read_rx(&m, &rxq, 1);
        assert_eq!((h.op, payload.as_slice()), (OP_RW, &b"early"[..]));
        let rx: Vec<_> = rec
            .vsocks
            .iter()
            .filter(|c| c.dir == NetDir::Rx)
            .map(|c| c.tag)
            .collect();
        assert_eq!(rx, vec![None, Some(4)]);
        let opened: Vec<_> = rec
            .vsocks
            .iter()
            .filter(|c| c.connections > 0)
            .map(|c| c.tag)
            .collect();
        assert_eq!(opened, vec![Some(4)]);
        drop(d);
        assert!(!path.exists(), "the listener's socket goes with the device");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_space_holds_the_cid_and_reserved_cids_are_refused() {
        let d = VsockDevice::new(CID, Box::new(PairConnector::default()), None).unwrap();
        let mut cid = [0u8; 8];
        assert!(d.read_config(0, &mut cid));
        assert_eq!(u64::from_le_bytes(cid), CID);
        assert!(!d.read_config(8, &mut [0u8; 4]));
        assert_eq!(d.device_type(), VIRTIO_ID_VSOCK);
        assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE; 3]);
        assert!(VsockDevice::new(2, Box::new(PairConnector::default()), None).is_err());
    }

    #[test]
    fn inactive_device_ignores_notifications_and_reset_drops_connections() {
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        let mut peer = conn.peer(0);
        let mut w = Watches::default();
        d.sync_watch(&mut w);

        d.reset();
        d.sync_watch(&mut w);

        assert!(w.now.is_empty());
        assert_eq!(d.connections(), 0);
        let mut b = [0u8; 1];
        assert_eq!(peer.read(&mut b).unwrap(), 0);
        assert_eq!(d.process_tx(&mut Recorder::default()).chains, 0);
        assert!(d.stats().ignored_notifications >= 1);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_packets_never_panic_and_every_chain_is_used(
            pkts in proptest::collection::vec(
                (0u16..10, 0u16..3, prop_oneof![Just(CID), Just(HOST_CID), any::<u64>()],
                 prop_oneof![Just(HOST_CID), Just(CID), any::<u64>()],
                 0u32..4, prop_oneof![Just(1024u32), Just(9999), 0u32..4],
                 prop_oneof![0u32..8, any::<u32>()], any::<u32>(), any::<u32>(), any::<u32>(),
                 proptest::collection::vec(any::<u8>(), 0..16)),
                1..8),
        ) {
            let m = mem();
            let (rxq, txq, evq) = queues(&m);
            let mut d = activated(&m, &rxq, &txq, &evq, Box::new(PairConnector::default()));
            for (i, p) in pkts.iter().enumerate() {
                let (op, ty, src, dst, sp, dp, len, flags, ba, fc, payload) = p;
                let h = Header {
                    src_cid: *src, dst_cid: *dst, src_port: *sp, dst_port: *dp, len: *len,
                    type_: *ty, op: *op, flags: *flags, buf_alloc: *ba, fwd_cnt: *fc,
                };
                push_tx(&m, &txq, u16::try_from(i).unwrap(), &h, payload);
                push_rx(&rxq, u16::try_from(i).unwrap(), 4096);
            }
            let mut rec = Recorder::default();
            d.queue_notifiers()[TX_QUEUE].post(Some(1));
            d.process_tx(&mut rec);
            d.process_rx(&mut rec);
            prop_assert_eq!(usize::from(used_idx(&txq)), pkts.len());
            prop_assert!(d.connections() <= pkts.len());
        }
    }
}
