//! The virtio-net device: a MAC, an RX and a TX queue, a [`NetBackend`].
//!
//! TX ([`NetDevice::process_tx`]): each chain is the 12-byte virtio-net
//! header and one frame, all device-readable. The frame is gathered (at most
//! [`MAX_FRAME_LEN`] bytes), its source MAC checked against the device's
//! (a spoofed frame is dropped), written to the backend, learned in the flow
//! table, charged to the chain's tag (explicit queue tag, else the covering
//! notification, as virtio-blk does), and only then put on the used ring.
//! On a device with per-container TX limits ([`NetDevice::set_tx_limits`]),
//! a frame whose container's bucket is empty is held (`throttle.rs`) and
//! goes through the same steps when its tokens come; later chains go past it.
//!
//! RX ([`NetDevice::process_rx`]): while the guest has posted a receive
//! chain, one frame is read from the backend into it and charged to the
//! principal of the flow it answers (the flow table), or to `None`. Without
//! a receive chain nothing is read: frames stay in the backend.

use crate::counters::NamedCounters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::warn_rl;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::flow::{FlowBindings, FlowTable};
use super::frame;
use super::tap::{NetBackend, Tap, TapError, VNET_HDR_LEN};
use super::throttle::{frame_bytes, has_room, HeldFrame, HeldRx, RxThrottle, TxThrottle};
use crate::acct::QueueTagReader;
use crate::virtio::limiter::{BlockLimitConfig, BucketError, LimitLookup};
use crate::virtio::{pending_chains, VirtioBase, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::virtio::{thread_cpu_ns, Charger, NetCharge, NetDir};

/// virtio device ID of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Feature: the configuration space holds the MAC.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Longest chain: the virtio-net header and a 65550-byte frame.
pub const MAX_FRAME_LEN: usize = 65562;
/// Offset of `num_buffers` in the virtio-net v1 header.
const NUM_BUFFERS_AT: usize = 10;

/// What went wrong setting up a network device (the VMM's mistakes).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP interface could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An `EventFd` could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to the backend.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// TX chains that were not a header and a frame (dropped).
    pub tx_malformed: u64,
    /// TX chains longer than [`MAX_FRAME_LEN`] (dropped).
    pub tx_too_long: u64,
    /// Frames whose source MAC was not the device's (dropped).
    pub tx_spoofed: u64,
    /// Frames the backend refused (dropped).
    pub tx_backend_errors: u64,
    /// TCP payload bytes sent again.
    pub tx_retransmitted_bytes: u64,
    /// TX frames a per-container limit held back before sending them.
    pub tx_throttled: u64,
    /// Times the device stopped taking TX chains because held frames
    /// reached their bound (a queue's worth, or `HELD_BYTES_MAX` bytes):
    /// then every container's frames behind wait in the ring.
    pub tx_throttle_stalls: u64,
    /// Received frames a per-container limit held back before delivering
    /// them (in the guest's buffer, off the used ring).
    pub rx_throttled: u64,
    /// Received frames a per-container limit with `net-rx-drop` dropped
    /// before they reached the guest (charged to their principal).
    pub rx_limit_dropped: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_limit_dropped_bytes: u64,
    /// Received frames dropped under overload because their principal's
    /// priority was below the device's top RX priority (charged to their
    /// principal; see [`RX_OVERLOAD_FREE_DIVISOR`]).
    pub rx_priority_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames read from the backend that answer no known flow (charged to
    /// no principal), counted when read: delivered, held or dropped.
    pub rx_unattributed: u64,
    /// RX chains that were not device-writable buffers (consumed empty).
    pub rx_malformed: u64,
    /// Frames dropped: too big for the guest's buffer, or shorter than a header.
    pub rx_dropped: u64,
    /// Backend read failures other than "nothing waiting".
    pub rx_backend_errors: u64,
    /// Failures to update the used ring or raise the interrupt, bogus avail indices.
    pub queue_errors: u64,
    /// Interrupts raised.
    pub interrupts: u64,
    /// Notifications of an inactive device or a queue out of range.
    pub ignored_notifications: u64,
}

crate::counters::named_counters!(NetStats {
    tx_frames,
    tx_bytes,
    tx_malformed,
    tx_too_long,
    tx_spoofed,
    tx_backend_errors,
    tx_retransmitted_bytes,
    tx_throttled,
    tx_throttle_stalls,
    rx_throttled,
    rx_limit_dropped,
    rx_limit_dropped_bytes,
    rx_priority_dropped,
    rx_frames,
    rx_bytes,
    rx_unattributed,
    rx_malformed,
    rx_dropped,
    rx_backend_errors,
    queue_errors,
    interrupts,
    ignored_notifications,
});

/// What one `process_tx` / `process_rx` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Chains used.
    pub chains: u64,
    /// Frames delivered (to the backend or the guest).
    pub frames: u64,
    /// Chains or frames dropped.
    pub dropped: u64,
    /// Whether an interrupt was raised.
    pub interrupted: bool,
    /// TX: chains were left for another call (batch limit).
    pub more_pending: bool,
    /// RX: stopped for want of a receive chain (wait for the RX notify).
    pub rx_stalled: bool,
}

pub use crate::virtio::DeviceState;

/// Why a TX chain is not a header and a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// More descriptors than the queue has entries.
    #[error("more descriptors than the queue size")]
    TooManyDescriptors,
    /// The chain loops or points past the table.
    #[error("chain truncated or looping")]
    Truncated,
    /// TX: a descriptor is device-writable; RX: one is device-readable.
    #[error("wrong descriptor direction")]
    Direction,
    /// TX: shorter than the header and an Ethernet header.
    #[error("shorter than the virtio-net and Ethernet headers")]
    TooShort,
    /// TX: longer than [`MAX_FRAME_LEN`].
    #[error("longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    /// A buffer lies outside guest memory.
    #[error("buffer outside guest memory")]
    OutOfMemory,
}

/// Copies a TX chain's device-readable buffers into `buf`.
fn gather(chain: DescriptorChain<&GuestMemoryMmap>, max: u16, buf: &mut Vec<u8>) -> Result<(), ChainError> {
    buf.clear();
    let mem = chain.memory();
    let mut n = 0usize;
    let mut last_has_next = false;
    for d in chain.clone() {
        n += 1;
        if n > usize::from(max) {
            return Err(ChainError::TooManyDescriptors);
        }
        last_has_next = d.has_next();
        if d.is_write_only() {
            return Err(ChainError::Direction);
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainError::TooLong)?;
        let at = buf.len();
        let end = at
            .checked_add(len)
            .filter(|&e| e <= MAX_FRAME_LEN)
            .ok_or(ChainError::TooLong)?;
        buf.resize(end, 0);
        mem.read_slice(&mut buf[at..], d.addr())
            .map_err(|_| ChainError::OutOfMemory)?;
    }
    if last_has_next {
        return Err(ChainError::Truncated);
    }
    if buf.len() < VNET_HDR_LEN + frame::ETH_HLEN {
        return Err(ChainError::TooShort);
    }
    Ok(())
}

/// The device-writable buffers of an RX chain and their total length.
fn scatter_list(
    chain: DescriptorChain<&GuestMemoryMmap>,
    max: u16,
) -> Result<(Vec<(GuestAddress, usize)>, usize), ChainError> {
    let mem = chain.memory();
    let mut bufs = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    for d in chain.clone() {
        if bufs.len() >= usize::from(max) {
            return Err(ChainError::TooManyDescriptors);
        }
        last_has_next = d.has_next();
        if !d.is_write_only() {
            return Err(ChainError::Direction);
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainError::TooLong)?;
        if len > 0 && !mem.check_range(d.addr(), len, Permissions::Write) {
            return Err(ChainError::OutOfMemory);
        }
        total = total.saturating_add(len);
        bufs.push((d.addr(), len));
    }
    if last_has_next || bufs.is_empty() {
        return Err(ChainError::Truncated);
    }
    Ok((bufs, total))
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Moves the thread CPU clock mark and returns the time since the last one.
fn lap(mark: &mut u64) -> u64 {
    let now = thread_cpu_ns();
    let spent = now.saturating_sub(*mark);
    *mark = now;
    spent
}

/// What sending one TX frame touches.
struct Tx<'a> {
    backend: &'a mut dyn NetBackend,
    stats: &'a mut NetStats,
    flows: &'a mut FlowTable,
}

impl Tx<'_> {
    /// Writes `buf` (header and frame) to the backend and learns it in the
    /// flow table; a flow the agent bound (`bound`) is charged to that
    /// principal once the frame is written.
    fn transmit(self, buf: &[u8], bound: Option<u64>, charge: &mut NetCharge, out: &mut ProcessStats) {
        let info = frame::parse(buf.get(VNET_HDR_LEN..).unwrap_or_default());
        let start = Instant::now();
        let written = self.backend.write_frame(buf);
        charge.wall_ns = elapsed_ns(start);
        match written {
            Ok(_) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += charge.bytes;
                out.frames += 1;
                if let Some((flow, tcp)) = info.and_then(|i| Some((i.flow?, i.tcp))) {
                    if let Some(b) = bound {
                        charge.tag = Some(b);
                    }
                    charge.retransmitted_bytes = self.flows.on_tx(flow, charge.tag, tcp);
                    self.stats.tx_retransmitted_bytes += charge.retransmitted_bytes;
                }
            }
            Err(e) => {
                self.stats.tx_backend_errors += 1;
                out.dropped += 1;
                warn_rl!("virtio-net: backend write failed, frame dropped: {e}");
            }
        }
    }
}

/// A received frame waiting in `rx_buf` for a receive chain: attributed
/// and admitted by its limit once, when it was read.
#[derive(Clone, Copy, Debug)]
struct RxPending {
    /// Its length in `rx_buf`, header included.
    len: usize,
    /// When it was read from the backend.
    read_at: Instant,
    /// The principal of its flow.
    tag: Option<u64>,
    /// Its bytes, without the header.
    bytes: u64,
    /// The limit that holds (or drops) it; `None`: it passes (its tokens
    /// are taken) or no limit applies.
    limit: Option<usize>,
    /// The throttle's generation when it was admitted: `limit` names the
    /// same limit only while it stays the same.
    generation: u64,
    /// Shed under overload: its principal's priority is below the
    /// device's top RX priority (`limit` is its limit, if any; no tokens
    /// were taken).
    shed: bool,
}

/// The guest's RX queue is overloaded when at most a quarter of it
/// (`size / RX_OVERLOAD_FREE_DIVISOR`, at least one) is posted and free:
/// then a device with RX priorities sheds the frames of principals below
/// its top priority before they take a buffer, while the top priority has
/// traffic (a frame of it read within [`RX_TOP_WINDOW`]).
pub const RX_OVERLOAD_FREE_DIVISOR: u16 = 4;

/// How recent a top-priority frame must be for lower ones to be shed
/// under overload: with no top-priority traffic nothing is shed.
pub const RX_TOP_WINDOW: Duration = Duration::from_millis(100);

/// Attributes a frame just read (`frame`, after the virtio-net header) and
/// asks its limit, if any, whether it passes: once per frame, so its
/// tokens are taken once. Where some RX limit sets a priority, a frame of
/// the top priority is noted in `top_seen`, and one below it is shed
/// instead (no tokens taken) when the guest's queue is `overloaded` and
/// the top priority had a frame within [`RX_TOP_WINDOW`].
fn admit_rx(
    frame: &[u8],
    bindings: Option<&dyn FlowBindings>,
    flows: &mut FlowTable,
    stats: &mut NetStats,
    throttle: Option<&mut RxThrottle>,
    overloaded: bool,
    top_seen: &mut Option<Instant>,
) -> RxPending {
    let info = frame::parse(frame);
    // The agent's binding of the flow this frame answers first, then the
    // owner learned from tagged TX.
    let tag = info.and_then(|i| i.flow).and_then(|f| {
        let bound = bindings.and_then(|b| b.bound(&f.reversed()));
        bound.or_else(|| flows.owner_of_reply(&f))
    });
    if tag.is_none() {
        stats.rx_unattributed += 1;
    }
    let bytes = u64::try_from(frame.len()).unwrap_or(u64::MAX);
    let (limit, generation, shed) = match throttle {
        Some(t) => {
            let mut shed_under = None;
            if let Some(top) = t.top_priority() {
                let (k, p) = t.priority_of(tag);
                if p >= top {
                    *top_seen = Some(Instant::now());
                } else if overloaded && top_seen.is_some_and(|at| at.elapsed() <= RX_TOP_WINDOW) {
                    shed_under = Some(k);
                }
            }
            match shed_under {
                Some(k) => (k, t.generation(), true),
                None => (t.admit(tag, bytes), t.generation(), false),
            }
        }
        None => (None, 0, false),
    };
    RxPending {
        len: frame.len() + VNET_HDR_LEN,
        read_at: Instant::now(),
        tag,
        bytes,
        limit,
        generation,
        shed,
    }
}

/// A virtio-net device on a [`NetBackend`].
pub struct NetDevice {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    base: VirtioBase,
    stats: NetStats,
    flows: FlowTable,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// A frame read from the backend into `rx_buf` but not yet delivered.
    rx_pending: Option<RxPending>,
    /// When a frame of the top RX priority was last read ([`admit_rx`]).
    rx_top_seen: Option<Instant>,
    queue_tags: Option<(QueueTagReader, u32)>,
    bindings: Option<Arc<dyn FlowBindings>>,
    /// Per-container TX limits and the frames they hold (`None`: no limit
    /// on this device, and nothing on the TX path looks).
    tx_throttle: Option<TxThrottle>,
    /// Per-container RX limits and the received frames they hold.
    rx_throttle: Option<RxThrottle>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("mac", &self.mac)
            .field("state", &self.base.state)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Longest wait for an opened TAP to be running (the kernel applies the
/// carrier that opening raises within about a second).
pub const TAP_RUNNING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl NetDevice {
    /// A device on TAP `name` (opened or created) with MAC `mac`.
    /// Waits up to [`TAP_RUNNING_WAIT`] for the kernel to have the TAP
    /// running, so replies to the guest's first frames are not dropped.
    pub fn open_tap(name: &str, mac: [u8; 6]) -> Result<Self, NetError> {
        let tap = Tap::open(name)?;
        if !tap.wait_running(TAP_RUNNING_WAIT) {
            log::warn!(
                "TAP {name} is not running yet (down, or its carrier not applied within {TAP_RUNNING_WAIT:?}): frames to the guest are dropped by the host until it is (`ip link set {name} up`)"
            );
        }
        Self::new(Box::new(tap), mac)
    }

    /// A device on `backend` with MAC `mac`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Result<Self, NetError> {
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);
        Ok(Self {
            backend,
            mac,
            base: VirtioBase::new(features, &[QUEUE_SIZE; 2]).map_err(NetError::EventFd)?,
            stats: NetStats::default(),
            flows: FlowTable::default(),
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            rx_top_seen: None,
            queue_tags: None,
            bindings: None,
            tx_throttle: None,
            rx_throttle: None,
        })
    }

    /// The device's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Flows evicted from the flow table so far.
    pub fn flow_evictions(&self) -> u64 {
        self.flows.evictions()
    }

    /// The device's state.
    pub fn state(&self) -> &DeviceState {
        &self.base.state
    }

    /// Features the driver accepted at activation.
    pub fn acked_features(&self) -> u64 {
        self.base.acked_features
    }

    /// The backend's pollable descriptor, if it has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.raw_fd()
    }

    /// Lets TX frames carry explicit tags: the guest's queue tag tables of
    /// virtio device `device_index` (table of queue [`TX_QUEUE`]).
    pub fn set_queue_tags(&mut self, reader: QueueTagReader, device_index: u32) {
        self.queue_tags = Some((reader, device_index));
    }

    /// Lets the guest agent's flow bindings decide who TX and RX frames of
    /// a bound flow are charged to.
    pub fn set_flow_bindings(&mut self, bindings: Arc<dyn FlowBindings>) {
        self.bindings = Some(bindings);
    }

    fn raise_interrupt(&mut self, tag: Option<u64>, out: &mut ProcessStats, charger: &mut dyn Charger) {
        if self.base.signal_used(tag, charger, "virtio-net") {
            self.stats.interrupts += 1;
            out.interrupted = true;
        } else {
            self.stats.queue_errors += 1;
        }
    }

    /// [`pending_chains`], counting a bogus avail index.
    fn pending(queue: &Queue, mem: &GuestMemoryMmap, stats: &mut NetStats) -> Option<u16> {
        let pending = pending_chains(queue, mem, "virtio-net");
        stats.queue_errors += u64::from(pending.is_none());
        pending
    }

    /// Puts TX frames under per-container limits: `lookup` names, per
    /// frame, which of `limits` (if any) its tag falls under. A frame whose
    /// limit has no tokens is held until they refill (see
    /// [`Self::next_tx_release`]).
    pub fn set_tx_limits(
        &mut self,
        limits: &[BlockLimitConfig],
        lookup: Box<dyn LimitLookup>,
    ) -> Result<(), BucketError> {
        self.tx_throttle = Some(TxThrottle::new(limits, lookup)?);
        Ok(())
    }

    /// Puts received frames under per-container limits (`net-rx-*`): a
    /// frame attributed to a container whose limit has no tokens stays in
    /// the guest's buffer, off the used ring, until they refill (see
    /// [`Self::release_rx`]); the queue goes on past it.
    pub fn set_rx_limits(
        &mut self,
        limits: &[BlockLimitConfig],
        lookup: Box<dyn LimitLookup>,
    ) -> Result<(), BucketError> {
        self.rx_throttle = Some(RxThrottle::new(limits, lookup)?);
        Ok(())
    }

    /// Received frames held back by a limit right now.
    pub fn rx_throttled_now(&self) -> usize {
        self.rx_throttle.as_ref().map_or(0, RxThrottle::held)
    }

    /// How long until the first held frame, TX or RX, may go (`None`: none
    /// held).
    pub fn next_release(&mut self) -> Option<Duration> {
        let rx = self.rx_throttle.as_mut().and_then(RxThrottle::next_wait);
        match (self.next_tx_release(), rx) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Delivers the held received frames whose tokens are there (each
    /// container's in the order they came), charged with their wait, and
    /// interrupts the guest if it asks.
    pub fn release_rx(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let mut out = ProcessStats::default();
        let DeviceState::Activated { mem, queues } = &mut self.base.state else {
            return out;
        };
        let (Some(queue), Some(t)) = (queues.get_mut(RX_QUEUE), self.rx_throttle.as_mut()) else {
            return out;
        };
        let mut last_tag = None;
        let mut cpu_mark = thread_cpu_ns();
        while let Some(h) = t.pop_ready() {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += h.bytes;
            out.frames += 1;
            out.chains += 1;
            last_tag = h.tag;
            let host_ns = lap(&mut cpu_mark).saturating_add(h.host_ns);
            charger.charge_net(&NetCharge {
                throttled_ns: Some(t.now().saturating_sub(h.at_ns)),
                ..NetCharge::rx_frame(h.tag, h.bytes, host_ns, elapsed_ns(h.read_at))
            });
            if let Err(e) = queue.add_used(&*mem, h.head, h.used_len) {
                self.stats.queue_errors += 1;
                warn_rl!("virtio-net: used ring update failed: {e}");
            }
        }
        let notify = out.chains > 0 && queue.needs_notification(mem).unwrap_or(true);
        if notify {
            self.raise_interrupt(last_tag, &mut out, charger);
        }
        out
    }

    /// TX frames held back by a limit right now.
    pub fn tx_throttled_now(&self) -> usize {
        self.tx_throttle.as_ref().map_or(0, TxThrottle::held)
    }

    /// How long until the first held TX frame may go (`None`: none held).
    pub fn next_tx_release(&mut self) -> Option<Duration> {
        self.tx_throttle.as_mut().and_then(TxThrottle::next_wait)
    }

    /// Sends the held TX frames whose tokens are there, then the notified
    /// TX chains, charging each to its tag. A frame whose container's limit
    /// has no tokens (or whose limit already holds frames) is held; the
    /// queue goes on past it.
    pub fn process_tx(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let mut out = ProcessStats::default();
        let notifier = self.base.notifiers[TX_QUEUE].clone();
        let DeviceState::Activated { mem, queues } = &mut self.base.state else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        let Some(queue) = queues.get_mut(TX_QUEUE) else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        let mut last_tag = None;
        let mut cpu_mark = thread_cpu_ns();
        if let Some(t) = self.tx_throttle.as_mut() {
            while let Some(h) = t.pop_ready() {
                let mut charge = NetCharge {
                    tag: h.tag,
                    dir: NetDir::Tx,
                    frames: 1,
                    bytes: h.frame_bytes(),
                    host_ns: 0,
                    wall_ns: 0,
                    retransmitted_bytes: 0,
                    spoofed: false,
                    attributed_by_flow: false,
                    throttled_ns: Some(t.now().saturating_sub(h.at_ns)),
                    dropped: false,
                };
                let tx = Tx {
                    backend: self.backend.as_mut(),
                    stats: &mut self.stats,
                    flows: &mut self.flows,
                };
                tx.transmit(&h.buf, h.bound, &mut charge, &mut out);
                charge.host_ns = lap(&mut cpu_mark).saturating_add(h.host_ns);
                charger.charge_net(&charge);
                if let Err(e) = queue.add_used(&*mem, h.head, 0) {
                    self.stats.queue_errors += 1;
                    warn_rl!("virtio-net: used ring update failed: {e}");
                }
                out.chains += 1;
                last_tag = charge.tag;
            }
        }
        let mut blocked = false;
        let mut popped = 0u64;
        'tx: {
            if Self::pending(queue, mem, &mut self.stats).is_none() {
                break 'tx;
            }
            // Each chain goes to the first notification made after the guest
            // published it; a chain not yet notified waits for its own.
            while let Some(notification) = notifier.covering(queue.next_avail()) {
                // Hold at most a queue's worth (and HELD_BYTES_MAX): past it
                // the chains wait in the guest's ring, not in VMM memory.
                if self
                    .tx_throttle
                    .as_ref()
                    .is_some_and(|t| !has_room(t, queue.size()))
                {
                    self.stats.tx_throttle_stalls += 1;
                    blocked = true;
                    break;
                }
                let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let explicit =
                    (self.queue_tags.as_mut()).and_then(|(r, dev)| r.chain_tag(*dev, TX_QUEUE, head));
                let tag = explicit.or(notification.tag);
                let mut charge = NetCharge {
                    tag,
                    dir: NetDir::Tx,
                    frames: 0,
                    bytes: 0,
                    host_ns: 0,
                    wall_ns: 0,
                    retransmitted_bytes: 0,
                    spoofed: false,
                    attributed_by_flow: false,
                    throttled_ns: None,
                    dropped: false,
                };
                let mut held = false;
                match gather(chain, queue.size(), &mut self.tx_buf) {
                    Err(e) => {
                        if e == ChainError::TooLong {
                            self.stats.tx_too_long += 1;
                        } else {
                            self.stats.tx_malformed += 1;
                        }
                        out.dropped += 1;
                        warn_rl!("virtio-net: TX chain at head {head} dropped: {e}");
                    }
                    Ok(()) => {
                        charge.frames = 1;
                        charge.bytes = frame_bytes(&self.tx_buf);
                        let info = frame::parse(&self.tx_buf[VNET_HDR_LEN..]);
                        if info.as_ref().is_none_or(|i| i.src_mac != self.mac) {
                            self.stats.tx_spoofed += 1;
                            out.dropped += 1;
                            charge.spoofed = true;
                            warn_rl!("virtio-net: TX frame with a foreign source MAC dropped");
                        } else {
                            // A flow the guest agent bound is charged to its
                            // principal unless the frame carried an explicit tag.
                            let bound = match (explicit, info.and_then(|i| i.flow), self.bindings.as_ref()) {
                                (None, Some(flow), Some(b)) => b.bound(&flow),
                                _ => None,
                            };
                            let limit = (self.tx_throttle.as_mut())
                                .and_then(|t| t.admit(bound.or(tag), charge.bytes).map(|k| (t, k)));
                            if let Some((t, k)) = limit {
                                // Its work so far is charged when it is sent.
                                // The copy is its own work too.
                                let buf = self.tx_buf.clone();
                                let host_ns = lap(&mut cpu_mark);
                                let at_ns = t.now();
                                t.hold(
                                    k,
                                    HeldFrame {
                                        head,
                                        tag,
                                        bound,
                                        at_ns,
                                        host_ns,
                                        buf,
                                    },
                                );
                                self.stats.tx_throttled += 1;
                                held = true;
                            } else {
                                let tx = Tx {
                                    backend: self.backend.as_mut(),
                                    stats: &mut self.stats,
                                    flows: &mut self.flows,
                                };
                                tx.transmit(&self.tx_buf, bound, &mut charge, &mut out);
                            }
                        }
                    }
                }
                if !held {
                    // Charge before the used element is published: once the
                    // guest sees it, it may end the request.
                    charge.host_ns = lap(&mut cpu_mark);
                    charger.charge_net(&charge);
                    if let Err(e) = queue.add_used(&*mem, head, 0) {
                        self.stats.queue_errors += 1;
                        warn_rl!("virtio-net: used ring update failed: {e}");
                    }
                    out.chains += 1;
                    last_tag = charge.tag;
                }
                notifier.retire(queue.next_avail(), false);
                if popped >= u64::from(queue.size()) {
                    out.more_pending = queue
                        .avail_idx(mem, Ordering::Acquire)
                        .is_ok_and(|i| i.0 != queue.next_avail());
                    break;
                }
            }
            if out.more_pending {
                notifier.wake();
            } else if !blocked {
                notifier.retire(queue.next_avail(), true);
            }
        }
        let notify = out.chains > 0 && queue.needs_notification(mem).unwrap_or(true);
        if notify {
            self.raise_interrupt(last_tag, &mut out, charger);
        }
        out
    }

    /// Delivers backend frames into the guest's receive chains while both
    /// last, charging each to the principal of its flow.
    ///
    /// On a device where some RX limit drops (`net-rx-drop`), each frame is
    /// attributed and admitted as soon as it is read, before it takes a
    /// receive chain: a frame over a dropping limit is dropped there (the
    /// guest never sees it) and charged as dropped to its principal. Such a
    /// device also reads the backend when the guest has no receive chain,
    /// so that droppable frames do not keep the others waiting in the TAP:
    /// it stops at the first frame that needs a chain (kept pending).
    pub fn process_rx(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let mut out = ProcessStats::default();
        // RX work is charged by flow, not by who posted the buffers.
        let _ = self.base.notifiers[RX_QUEUE].take();
        let DeviceState::Activated { mem, queues } = &mut self.base.state else {
            self.stats.ignored_notifications += 1;
            out.rx_stalled = true;
            return out;
        };
        let Some(queue) = queues.get_mut(RX_QUEUE) else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        // Frames may be dropped before they take a buffer: over a dropping
        // limit, or shed under overload by priority.
        let drops = self
            .rx_throttle
            .as_mut()
            .is_some_and(|t| t.any_drops() || t.top_priority().is_some());
        let overload_free = (queue.size() / RX_OVERLOAD_FREE_DIVISOR).max(1);
        let mut last_tag = None;
        let mut cpu_mark = thread_cpu_ns();
        // Chains whose frame a limit holds (not counted in out.chains:
        // they are not used yet).
        let mut held_now = 0u64;
        loop {
            if out.chains + out.dropped + held_now >= u64::from(queue.size()) {
                // Let other devices have the loop; the backend stays readable.
                break;
            }
            let Some(avail) = Self::pending(queue, mem, &mut self.stats) else {
                break;
            };
            if avail == 0 && !(drops && self.rx_pending.is_none()) {
                out.rx_stalled = true;
                break;
            }
            let p = match self.rx_pending {
                Some(p) => p,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN + frame::ETH_HLEN => {
                        self.stats.rx_dropped += 1;
                        out.dropped += 1;
                        continue;
                    }
                    Ok(len) => {
                        let p = admit_rx(
                            &self.rx_buf[VNET_HDR_LEN..len],
                            self.bindings.as_deref(),
                            &mut self.flows,
                            &mut self.stats,
                            self.rx_throttle.as_mut(),
                            avail <= overload_free,
                            &mut self.rx_top_seen,
                        );
                        self.rx_pending = Some(p);
                        p
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.stats.rx_backend_errors += 1;
                        warn_rl!("virtio-net: backend read failed: {e}");
                        break;
                    }
                },
            };
            let RxPending {
                len,
                read_at,
                tag,
                bytes,
                mut limit,
                generation,
                shed,
            } = p;
            // A live change since it was admitted (it waited for a buffer):
            // its limit's index may name another limit now; ask again (a
            // frame that passed keeps its pass).
            if let (Some(t), Some(_), false) = (self.rx_throttle.as_mut(), limit, shed) {
                if t.generation() != generation {
                    limit = t.admit(tag, bytes);
                    let generation = t.generation();
                    self.rx_pending = Some(RxPending {
                        limit,
                        generation,
                        ..p
                    });
                }
            }
            let over_dropping = limit.is_some_and(|k| self.rx_throttle.as_ref().is_some_and(|t| t.drops(k)));
            if shed || over_dropping {
                // Shed under overload, or over a dropping limit: never
                // written to the guest.
                if let (Some(k), Some(t)) = (limit, self.rx_throttle.as_mut()) {
                    t.count_drop(k);
                }
                self.rx_pending = None;
                if shed {
                    self.stats.rx_priority_dropped += 1;
                } else {
                    self.stats.rx_limit_dropped += 1;
                    self.stats.rx_limit_dropped_bytes += bytes;
                }
                out.dropped += 1;
                charger.charge_net(&NetCharge {
                    dropped: true,
                    ..NetCharge::rx_frame(tag, bytes, lap(&mut cpu_mark), elapsed_ns(read_at))
                });
                continue;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                out.rx_stalled = true;
                break;
            };
            let head = chain.head_index();
            out.chains += 1;
            let used_len = match scatter_list(chain, queue.size()) {
                Err(e) => {
                    // The frame stays pending for the next chain.
                    self.stats.rx_malformed += 1;
                    out.dropped += 1;
                    warn_rl!("virtio-net: RX chain at head {head} consumed empty: {e}");
                    0
                }
                Ok((_, cap)) if cap < len => {
                    self.stats.rx_dropped += 1;
                    out.dropped += 1;
                    self.rx_pending = None;
                    warn_rl!("virtio-net: RX frame of {len} bytes dropped: the guest's buffer holds {cap}");
                    0
                }
                Ok((bufs, _)) => {
                    let frame = &mut self.rx_buf[..len];
                    frame[..VNET_HDR_LEN].fill(0);
                    frame[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&1u16.to_le_bytes());
                    let mut done = 0usize;
                    let mut ok = true;
                    for (addr, n) in bufs {
                        if done >= len {
                            break;
                        }
                        let k = n.min(len - done);
                        ok &= mem.write_slice(&frame[done..done + k], addr).is_ok();
                        done += k;
                    }
                    self.rx_pending = None;
                    if !ok {
                        self.stats.queue_errors += 1;
                        out.dropped += 1;
                        0
                    } else {
                        // Over its container's RX limit: the frame stays in
                        // the guest's buffer, off the used ring, until its
                        // tokens come (release_rx); the queue goes on.
                        if let (Some(k), Some(t)) = (limit, self.rx_throttle.as_mut()) {
                            let at_ns = t.now();
                            t.hold(
                                k,
                                HeldRx {
                                    head,
                                    used_len: u32::try_from(len).unwrap_or(u32::MAX),
                                    tag,
                                    bytes,
                                    at_ns,
                                    read_at,
                                    host_ns: lap(&mut cpu_mark),
                                },
                            );
                            self.stats.rx_throttled += 1;
                            out.chains -= 1;
                            held_now += 1;
                            continue;
                        }
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += bytes;
                        out.frames += 1;
                        last_tag = tag;
                        charger.charge_net(&NetCharge::rx_frame(
                            tag,
                            bytes,
                            lap(&mut cpu_mark),
                            elapsed_ns(read_at),
                        ));
                        u32::try_from(len).unwrap_or(u32::MAX)
                    }
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, used_len) {
                self.stats.queue_errors += 1;
                warn_rl!("virtio-net: used ring update failed: {e}");
            }
        }
        let notify = out.chains > 0 && queue.needs_notification(mem).unwrap_or(true);
        if notify {
            self.raise_interrupt(last_tag, &mut out, charger);
        }
        out
    }

    /// The configuration space: the MAC.
    fn config(&self) -> [u8; 6] {
        self.mac
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
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

    /// Held TX frames belong to the queue the driver just dropped: they are
    /// forgotten (never put on a later queue's used ring), the buckets kept.
    fn reset(&mut self) {
        if let Some(t) = self.rx_throttle.as_mut() {
            t.forget_held();
        }
        if let Some(t) = self.tx_throttle.as_mut() {
            t.forget_held();
        }
        self.base.reset();
        self.rx_pending = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::frame::tests::{ipv4_frame, tcp};
    use super::super::frame::FiveTuple;
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    pub(crate) const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    pub(crate) const WRITE: u16 = 2;
    const RX_BUFS: u64 = 0x4_0000;
    const TX_BUFS: u64 = 0x6_0000;

    /// The wire on the far side of an in-memory backend.
    #[derive(Debug, Default)]
    pub(crate) struct Wire {
        pub(crate) to_guest: VecDeque<Vec<u8>>,
        pub(crate) from_guest: Vec<Vec<u8>>,
        pub(crate) fail_writes: bool,
    }

    #[derive(Clone, Debug, Default)]
    pub(crate) struct MemBackend(pub(crate) Arc<Mutex<Wire>>);

    impl NetBackend for MemBackend {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(f) = self.0.lock().unwrap().to_guest.pop_front() else {
                return Err(std::io::ErrorKind::WouldBlock.into());
            };
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Ok(n)
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            let mut w = self.0.lock().unwrap();
            if w.fail_writes {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            w.from_guest.push(frame.to_vec());
            Ok(frame.len())
        }
        fn raw_fd(&self) -> Option<RawFd> {
            None
        }
    }

    use std::os::fd::RawFd;

    /// Records every charge.
    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        pub(crate) nets: Vec<NetCharge>,
        pub(crate) interrupts: Vec<Option<u64>>,
    }

    impl Charger for Recorder {
        fn charge_block(&mut self, _c: &crate::virtio::BlockCharge) {}
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.interrupts.push(tag);
        }
        fn charge_net(&mut self, c: &NetCharge) {
            self.nets.push(*c);
        }
    }

    impl Charger for Arc<Mutex<Recorder>> {
        fn charge_block(&mut self, _c: &crate::virtio::BlockCharge) {}
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.lock().unwrap().charge_interrupt(tag);
        }
        fn charge_net(&mut self, c: &NetCharge) {
            self.lock().unwrap().charge_net(c);
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// RX queue at 0, TX queue at 0x2_0000, 16 entries each.
    pub(crate) fn queues(
        m: &GuestMemoryMmap,
    ) -> (
        MockSplitQueue<'_, GuestMemoryMmap>,
        MockSplitQueue<'_, GuestMemoryMmap>,
    ) {
        (
            MockSplitQueue::create(m, GuestAddress(0), 16),
            MockSplitQueue::create(m, GuestAddress(0x2_0000), 16),
        )
    }

    /// Publishes descriptors `descs` (address, length, flags) as one chain from index `at`.
    pub(crate) fn push_chain(q: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[(u64, u32, u16)]) {
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

    /// A virtio-net header and `frame`, as the guest sends it.
    pub(crate) fn with_header(frame: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; VNET_HDR_LEN];
        v.extend_from_slice(frame);
        v
    }

    /// Puts header + `frame` at descriptor `at` of the TX queue (two descriptors).
    pub(crate) fn push_tx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, at: u16, frame: &[u8]) {
        let addr = TX_BUFS + 0x1000 * u64::from(at);
        m.write_slice(&with_header(frame), GuestAddress(addr)).unwrap();
        let len = u32::try_from(frame.len()).unwrap();
        let hdr = u32::try_from(VNET_HDR_LEN).unwrap();
        push_chain(q, at, &[(addr, hdr, 0), (addr + u64::from(hdr), len, 0)]);
    }

    /// Posts a device-writable receive buffer of `len` bytes at descriptor `at`.
    fn push_rx(q: &MockSplitQueue<GuestMemoryMmap>, at: u16, len: u32) -> u64 {
        let addr = RX_BUFS + 0x1000 * u64::from(at);
        push_chain(q, at, &[(addr, len, WRITE)]);
        addr
    }

    pub(crate) fn used(q: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = q.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    pub(crate) fn activated(
        m: &GuestMemoryMmap,
        rx: &MockSplitQueue<GuestMemoryMmap>,
        tx: &MockSplitQueue<GuestMemoryMmap>,
    ) -> (NetDevice, MemBackend) {
        let b = MemBackend::default();
        let mut d = NetDevice::new(Box::new(b.clone()), MAC).unwrap();
        let qs = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        d.activate(m.clone(), qs, (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC))
            .unwrap();
        (d, b)
    }

    fn guest_flow() -> FiveTuple {
        tcp([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80)
    }

    #[test]
    fn tx_frame_reaches_the_backend_charged_to_the_notifier() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &guest_flow(), 1, &[9; 100]);
        push_tx(&m, &txq, 0, &f);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(5));

        let out = d.process_tx(&mut rec);

        assert_eq!(b.0.lock().unwrap().from_guest, vec![with_header(&f)]);
        assert_eq!((out.chains, out.frames, out.interrupted), (1, 1, true));
        assert_eq!(used(&txq, 0), (0, 0));
        let c = rec.nets[0];
        assert_eq!(
            (c.tag, c.dir, c.frames, c.bytes, c.spoofed, c.retransmitted_bytes),
            (Some(5), NetDir::Tx, 1, u64::try_from(f.len()).unwrap(), false, 0)
        );
        assert_eq!(rec.interrupts, vec![Some(5)]);
        assert_eq!(d.stats().tx_bytes, u64::try_from(f.len()).unwrap());
    }

    #[test]
    fn tx_chain_published_after_the_notification_waits_for_its_own() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &guest_flow(), 1, &[1; 10]);
        push_tx(&m, &txq, 0, &f);
        let (mut d, _b) = activated(&m, &rxq, &txq);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post_at(Some(1), Some(1));
        push_tx(&m, &txq, 2, &f);

        d.process_tx(&mut rec);
        d.queue_notifiers()[TX_QUEUE].post_at(Some(2), Some(2));
        d.process_tx(&mut rec);

        let tags: Vec<_> = rec.nets.iter().map(|c| c.tag).collect();
        assert_eq!(tags, vec![Some(1), Some(2)]);
    }

    #[test]
    fn an_explicit_queue_tag_outranks_the_notifier() {
        use crate::acct::{Registration, TagRegion};
        use accounting::abi::{self, tag};
        let m = mem();
        const REGION: u64 = 0x8_0000;
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&64u16.to_le_bytes());
        h[8..12].copy_from_slice(&1u32.to_le_bytes()); // one slot
        h[12..16].copy_from_slice(&64u32.to_le_bytes());
        h[48..52].copy_from_slice(&128u32.to_le_bytes()); // qtag_offset
        h[52..56].copy_from_slice(&16u32.to_le_bytes()); // qtag_entries
        h[56..60].copy_from_slice(&4u32.to_le_bytes()); // qtag_tables
        m.write_slice(&h, GuestAddress(REGION)).unwrap();
        let region = TagRegion::new(1);
        region.set(Some(Registration::new(&m, REGION, 128 + 4 * 16 * 8, 1).unwrap()));
        // Device 0, queue TX: head 2 carries tag (7, 9); head 0 none.
        let table = abi::qtag_table(0, u32::try_from(TX_QUEUE).unwrap());
        m.write_obj(
            tag(7, 9),
            GuestAddress(REGION + 128 + 8 * u64::from(table * 16 + 2)),
        )
        .unwrap();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &guest_flow(), 1, &[1; 10]);
        push_tx(&m, &txq, 0, &f);
        push_tx(&m, &txq, 2, &f);
        let (mut d, _b) = activated(&m, &rxq, &txq);
        d.set_queue_tags(region.queue_tag_reader(), 0);
        let mut rec = Recorder::default();

        d.queue_notifiers()[TX_QUEUE].post(Some(tag(1, 0)));
        d.process_tx(&mut rec);

        let tags: Vec<_> = rec.nets.iter().map(|c| c.tag).collect();
        assert_eq!(tags, vec![Some(tag(1, 0)), Some(tag(7, 9))]);
    }

    #[test]
    fn a_spoofed_frame_is_dropped_counted_and_charged() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame([0x52, 0x54, 0, 6, 6, 6], &guest_flow(), 1, &[1; 10]);
        push_tx(&m, &txq, 0, &f);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(3));

        let out = d.process_tx(&mut rec);

        assert!(b.0.lock().unwrap().from_guest.is_empty());
        assert_eq!((out.chains, out.frames, out.dropped), (1, 0, 1));
        assert_eq!(d.stats().tx_spoofed, 1);
        assert_eq!((rec.nets[0].tag, rec.nets[0].spoofed), (Some(3), true));
        assert_eq!(used(&txq, 0), (0, 0));
    }

    #[test]
    fn retransmitted_tcp_payload_is_counted() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let fl = guest_flow();
        push_tx(&m, &txq, 0, &ipv4_frame(MAC, &fl, 1000, &[1; 100])); // 1000..1100
        push_tx(&m, &txq, 2, &ipv4_frame(MAC, &fl, 1000, &[1; 100])); // all again
        push_tx(&m, &txq, 4, &ipv4_frame(MAC, &fl, 1060, &[1; 100])); // 40 again
        push_tx(&m, &txq, 6, &ipv4_frame(MAC, &fl, 1160, &[1; 10])); // new
        let (mut d, _b) = activated(&m, &rxq, &txq);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(1));

        d.process_tx(&mut rec);

        let r: Vec<_> = rec.nets.iter().map(|c| c.retransmitted_bytes).collect();
        assert_eq!(r, vec![0, 100, 40, 0]);
        assert_eq!(d.stats().tx_retransmitted_bytes, 140);
    }

    #[test]
    fn malformed_tx_chains_are_counted_and_consumed() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        // Header too short: 8 bytes only.
        push_chain(&txq, 0, &[(TX_BUFS, 8, 0)]);
        // A device-writable descriptor in a TX chain.
        push_chain(&txq, 1, &[(TX_BUFS, 12, 0), (TX_BUFS + 0x100, 64, WRITE)]);
        // Longer than MAX_FRAME_LEN: two 40000-byte reads of the same buffer.
        push_chain(&txq, 3, &[(TX_BUFS, 40_000, 0), (TX_BUFS, 40_000, 0)]);
        // Outside guest memory.
        push_chain(&txq, 5, &[(0x20_0000, 100, 0)]);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(4));

        let out = d.process_tx(&mut rec);

        assert_eq!((out.chains, out.frames, out.dropped), (4, 0, 4));
        assert_eq!((d.stats().tx_malformed, d.stats().tx_too_long), (3, 1));
        assert!(b.0.lock().unwrap().from_guest.is_empty());
        assert_eq!(txq.used().idx().load(), 4);
        assert!(rec
            .nets
            .iter()
            .all(|c| c.frames == 0 && c.bytes == 0 && c.tag == Some(4)));
    }

    #[test]
    fn a_refused_backend_write_drops_the_frame() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        push_tx(&m, &txq, 0, &ipv4_frame(MAC, &guest_flow(), 1, &[1; 10]));
        let (mut d, b) = activated(&m, &rxq, &txq);
        b.0.lock().unwrap().fail_writes = true;
        d.queue_notifiers()[TX_QUEUE].post(None);

        let out = d.process_tx(&mut Recorder::default());

        assert_eq!((out.frames, out.dropped, d.stats().tx_backend_errors), (0, 1, 1));
        assert_eq!(txq.used().idx().load(), 1);
    }

    /// Sends one frame of `flow` under `tag` so the device learns it.
    fn learn(
        d: &mut NetDevice,
        m: &GuestMemoryMmap,
        txq: &MockSplitQueue<GuestMemoryMmap>,
        flow: &FiveTuple,
        tag: u64,
    ) {
        push_tx(m, txq, 0, &ipv4_frame(MAC, flow, 1, &[1; 10]));
        d.queue_notifiers()[TX_QUEUE].post(Some(tag));
        d.process_tx(&mut Recorder::default());
    }

    #[test]
    fn rx_of_a_learned_flow_is_charged_to_its_tag() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        learn(&mut d, &m, &txq, &guest_flow(), 42);
        let reply = ipv4_frame([2, 0, 0, 0, 0, 1], &guest_flow().reversed(), 7, &[5; 200]);
        let mut from_tap = vec![0xee; VNET_HDR_LEN]; // whatever the TAP put there
        from_tap.extend_from_slice(&reply);
        b.0.lock().unwrap().to_guest.push_back(from_tap);
        let addr = push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();

        let out = d.process_rx(&mut rec);

        assert_eq!((out.chains, out.frames, out.interrupted), (1, 1, true));
        let len = VNET_HDR_LEN + reply.len();
        assert_eq!(used(&rxq, 0), (0, u32::try_from(len).unwrap()));
        let mut got = vec![0u8; len];
        m.read_slice(&mut got, GuestAddress(addr)).unwrap();
        let mut want_hdr = [0u8; VNET_HDR_LEN];
        want_hdr[NUM_BUFFERS_AT] = 1;
        assert_eq!(got[..VNET_HDR_LEN], want_hdr);
        assert_eq!(got[VNET_HDR_LEN..], reply[..]);
        let c = rec.nets[0];
        assert_eq!(
            (c.tag, c.dir, c.frames, c.bytes, c.attributed_by_flow),
            (Some(42), NetDir::Rx, 1, u64::try_from(reply.len()).unwrap(), true)
        );
        assert_eq!(rec.interrupts, vec![Some(42)]);
    }

    /// The agent's bindings, as the VMM would keep them.
    struct Bound(FiveTuple, u64);
    impl FlowBindings for Bound {
        fn bound(&self, flow: &FiveTuple) -> Option<u64> {
            (*flow == self.0).then_some(self.1)
        }
    }

    #[test]
    fn a_flow_bound_by_the_agent_is_charged_to_its_principal_both_ways() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &guest_flow(), 1, &[9; 100]);
        push_tx(&m, &txq, 0, &f);
        let (mut d, b) = activated(&m, &rxq, &txq);
        d.set_flow_bindings(Arc::new(Bound(guest_flow(), 77)));
        let mut rec = Recorder::default();
        // The kernel's vCPU was running someone else when it sent the frame.
        d.queue_notifiers()[TX_QUEUE].post(Some(5));
        d.process_tx(&mut rec);
        assert_eq!(rec.nets[0].tag, Some(77));
        assert_eq!(rec.interrupts, vec![Some(77)]);

        let reply = ipv4_frame([2, 0, 0, 0, 0, 1], &guest_flow().reversed(), 7, &[5; 20]);
        b.0.lock().unwrap().to_guest.push_back(with_header(&reply));
        push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();
        d.process_rx(&mut rec);
        assert_eq!(
            (rec.nets[0].tag, rec.nets[0].attributed_by_flow),
            (Some(77), true)
        );
    }

    #[test]
    fn rx_over_its_limit_stays_in_the_guest_buffer_and_others_pass_it() {
        use crate::virtio::limiter::{BlockLimitConfig, BucketConfig};
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let limit = BlockLimitConfig {
            path: "a".into(),
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: Duration::from_millis(100),
            }),
            bytes: None,
            ..Default::default()
        };
        d.set_rx_limits(&[limit], Box::new(Tag42)).unwrap();
        learn(&mut d, &m, &txq, &guest_flow(), 42);
        // Two replies of tag 42's flow, then a frame of an unknown flow.
        let reply = |n: u8| ipv4_frame([2, 0, 0, 0, 0, 1], &guest_flow().reversed(), 7, &[n; 50]);
        let other = ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            &tcp([10, 0, 0, 9], 22, [10, 0, 0, 2], 5000),
            0,
            &[1; 5],
        );
        for f in [reply(1), reply(2), other] {
            b.0.lock().unwrap().to_guest.push_back(with_header(&f));
        }
        for i in 0..3 {
            push_rx(&rxq, i, 2048);
        }
        let mut rec = Recorder::default();

        let out = d.process_rx(&mut rec);

        // The first reply passes a full bucket of 1; the second is held in
        // buffer 1 (off the used ring); the unattributed frame passes it.
        assert_eq!((out.chains, out.frames), (2, 2));
        assert_eq!((used(&rxq, 0).0, used(&rxq, 1).0), (0, 2));
        assert_eq!(
            (d.rx_throttled_now(), d.stats().rx_throttled, d.stats().rx_frames),
            (1, 1, 2)
        );
        assert_eq!(
            rec.nets.iter().map(|c| c.tag).collect::<Vec<_>>(),
            [Some(42), None]
        );
        assert!(rec.nets.iter().all(|c| c.throttled_ns.is_none()));
        let wait = d.next_release().expect("a held frame");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Its tokens come: delivered, charged with its wait.
        std::thread::sleep(wait);
        let out = d.release_rx(&mut rec);
        assert_eq!((out.chains, out.frames), (1, 1));
        assert_eq!(used(&rxq, 2).0, 1);
        let c = rec.nets[2];
        assert_eq!(
            (c.tag, c.dir, c.bytes),
            (Some(42), NetDir::Rx, u64::try_from(reply(2).len()).unwrap())
        );
        assert!(c.throttled_ns.is_some_and(|ns| ns > 0), "{c:?}");
        assert_eq!(
            (d.rx_throttled_now(), d.next_release(), d.stats().rx_frames),
            (0, None, 3)
        );
    }

    /// Limit 0 (one frame per hour, dropping) on tag 42's flow, learned.
    /// A lookup that puts tag 42's frames under limit 0, and no other's.
    struct Tag42;

    impl crate::virtio::limiter::LimitLookup for Tag42 {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(42)).then_some(0)
        }
    }

    fn dropping_device<'a>(
        m: &'a GuestMemoryMmap,
        rxq: &MockSplitQueue<'a, GuestMemoryMmap>,
        txq: &MockSplitQueue<'a, GuestMemoryMmap>,
    ) -> (NetDevice, MemBackend) {
        use crate::virtio::limiter::{BlockLimitConfig, BucketConfig};
        let (mut d, b) = activated(m, rxq, txq);
        let limit = BlockLimitConfig {
            path: "a".into(),
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: Duration::from_secs(3600),
            }),
            bytes: None,
            drop: true,
            ..Default::default()
        };
        d.set_rx_limits(&[limit], Box::new(Tag42)).unwrap();
        learn(&mut d, m, txq, &guest_flow(), 42);
        (d, b)
    }

    fn reply(n: u8) -> Vec<u8> {
        ipv4_frame([2, 0, 0, 0, 0, 1], &guest_flow().reversed(), 7, &[n; 50])
    }

    fn unknown_flow_frame() -> Vec<u8> {
        ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            &tcp([10, 0, 0, 9], 22, [10, 0, 0, 2], 5000),
            0,
            &[1; 5],
        )
    }

    #[test]
    fn under_overload_frames_below_the_top_priority_are_shed_while_it_has_traffic() {
        use crate::virtio::limiter::BlockLimitConfig;
        use crate::virtio::sched::SchedClass;
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        // Tag 42 at priority 7, no bucket; everyone else the default 0.
        let high = BlockLimitConfig {
            path: "high".into(),
            class: Some(SchedClass {
                priority: 7,
                share: 1,
            }),
            ..Default::default()
        };
        d.set_rx_limits(&[high], Box::new(Tag42)).unwrap();
        learn(&mut d, &m, &txq, &guest_flow(), 42);
        // Three buffers of a 16-entry queue: overloaded (at most 4 free).
        for i in 0..3 {
            push_rx(&rxq, i, 2048);
        }
        // A low frame before any top-priority traffic is not shed; once a
        // top-priority frame was read, the next low one is.
        for f in [unknown_flow_frame(), reply(1), unknown_flow_frame(), reply(2)] {
            b.0.lock().unwrap().to_guest.push_back(with_header(&f));
        }
        let mut rec = Recorder::default();
        let out = d.process_rx(&mut rec);
        assert_eq!((out.chains, out.frames, out.dropped), (3, 3, 1));
        let charged: Vec<_> = rec.nets.iter().map(|c| (c.tag, c.dropped)).collect();
        assert_eq!(
            charged,
            [(None, false), (Some(42), false), (None, true), (Some(42), false)]
        );
        assert_eq!(
            (d.stats().rx_priority_dropped, d.stats().rx_limit_dropped),
            (1, 0)
        );
        // Not overloaded (eight free): a low frame is delivered, however
        // recent the top priority's traffic.
        for i in 3..11 {
            push_rx(&rxq, i, 2048);
        }
        b.0.lock()
            .unwrap()
            .to_guest
            .push_back(with_header(&unknown_flow_frame()));
        let out = d.process_rx(&mut rec);
        assert_eq!((out.frames, out.dropped), (1, 0));
        assert_eq!(d.stats().rx_priority_dropped, 1);
    }

    #[test]
    fn rx_over_a_dropping_limit_is_dropped_before_it_takes_a_guest_buffer() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = dropping_device(&m, &rxq, &txq);
        // Three replies of tag 42's flow, then a frame of an unknown flow,
        // and only two receive buffers.
        for f in [reply(1), reply(2), reply(3), unknown_flow_frame()] {
            b.0.lock().unwrap().to_guest.push_back(with_header(&f));
        }
        for i in 0..2 {
            push_rx(&rxq, i, 2048);
        }
        let mut rec = Recorder::default();

        let out = d.process_rx(&mut rec);

        // The first reply takes the bucket's one token and buffer 0; the
        // next two are dropped without a buffer; the unknown flow's frame
        // gets buffer 1.
        assert_eq!((out.chains, out.frames, out.dropped), (2, 2, 2));
        assert_eq!((used(&rxq, 0).0, used(&rxq, 1).0), (0, 1));
        assert_eq!(rxq.used().idx().load(), 2);
        let mut got = vec![0u8; 50];
        m.read_slice(
            &mut got,
            GuestAddress(RX_BUFS + 0x1000 + u64::try_from(VNET_HDR_LEN).unwrap() + 34),
        )
        .unwrap();
        assert_ne!(
            got,
            vec![2u8; 50],
            "a dropped frame is never written to the guest"
        );
        let charged: Vec<_> = rec.nets.iter().map(|c| (c.tag, c.frames, c.dropped)).collect();
        assert_eq!(
            charged,
            [
                (Some(42), 1, false),
                (Some(42), 1, true),
                (Some(42), 1, true),
                (None, 1, false)
            ]
        );
        let bytes = u64::try_from(reply(2).len()).unwrap();
        assert!(rec.nets[1..3]
            .iter()
            .all(|c| c.bytes == bytes && c.throttled_ns.is_none()));
        let s = d.stats();
        assert_eq!(
            (
                s.rx_limit_dropped,
                s.rx_limit_dropped_bytes,
                s.rx_frames,
                s.rx_throttled
            ),
            (2, 2 * bytes, 2, 0)
        );
        assert_eq!((d.rx_throttled_now(), d.next_release()), (0, None));
        assert!(b.0.lock().unwrap().to_guest.is_empty());
    }

    #[test]
    fn without_rx_buffers_droppable_frames_are_read_off_and_the_next_one_waits() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = dropping_device(&m, &rxq, &txq);
        // Tag 42's first reply takes its token; then no buffers at all.
        b.0.lock().unwrap().to_guest.push_back(with_header(&reply(0)));
        push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();
        d.process_rx(&mut rec);
        assert!(!d.process_rx(&mut rec).rx_stalled, "an empty backend is no stall");
        // Two droppable frames, an unknown flow's, then another droppable.
        for f in [reply(1), reply(2), unknown_flow_frame(), reply(3)] {
            b.0.lock().unwrap().to_guest.push_back(with_header(&f));
        }

        let out = d.process_rx(&mut rec);

        // The two are dropped; the unknown flow's frame waits (read, kept
        // pending) for a buffer, and the frame behind it in the backend.
        assert!(out.rx_stalled);
        assert_eq!((out.chains, out.dropped), (0, 2));
        assert_eq!(b.0.lock().unwrap().to_guest.len(), 1);
        assert_eq!(d.stats().rx_limit_dropped, 2);
        // Called again without a buffer: nothing more is read.
        let out = d.process_rx(&mut rec);
        assert!(out.rx_stalled);
        assert_eq!((out.chains, out.dropped), (0, 0));
        // A buffer: the pending frame is delivered, the last one dropped.
        push_rx(&rxq, 1, 2048);
        let out = d.process_rx(&mut rec);
        assert_eq!((out.frames, out.dropped), (1, 1));
        assert_eq!(used(&rxq, 1).0, 1);
        let tags: Vec<_> = rec.nets.iter().map(|c| (c.tag, c.dropped)).collect();
        assert_eq!(
            tags,
            [
                (Some(42), false),
                (Some(42), true),
                (Some(42), true),
                (None, false),
                (Some(42), true)
            ]
        );
    }

    #[test]
    fn a_flood_of_droppable_frames_is_read_a_queue_at_a_time() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = dropping_device(&m, &rxq, &txq);
        b.0.lock()
            .unwrap()
            .to_guest
            .extend((0..100).map(|i| with_header(&reply(i))));
        // One buffer, for the first reply (its limit's one token).
        push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();

        // Then no buffers: each call reads at most a queue's worth (16)
        // and yields the loop; the backend stays readable, nothing is kept.
        let mut calls = 0;
        while !b.0.lock().unwrap().to_guest.is_empty() {
            let out = d.process_rx(&mut rec);
            assert!(out.dropped <= 16 && !out.rx_stalled, "{out:?}");
            calls += 1;
        }

        // 1 delivered + 15 dropped, then 16 a call.
        assert_eq!(calls, 7);
        assert_eq!((d.stats().rx_limit_dropped, d.stats().rx_frames), (99, 1));
        assert_eq!(rec.nets.len(), 100);
        assert!(rec.nets[1..].iter().all(|c| c.dropped && c.tag == Some(42)));
    }

    #[test]
    fn a_frame_waiting_for_a_buffer_is_admitted_again_after_a_live_change() {
        use crate::virtio::limiter::{BlockLimitConfig, BucketConfig};
        type Next = Arc<Mutex<Option<Vec<BlockLimitConfig>>>>;
        /// Tag 42 falls under the limit named `held`, tag 43 under `dropped`,
        /// in whatever table is current.
        struct Live {
            paths: Vec<String>,
            next: Next,
        }
        impl LimitLookup for Live {
            fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
                let want = match tag {
                    Some(42) => "held",
                    Some(43) => "dropped",
                    _ => return None,
                };
                self.paths.iter().position(|p| p == want)
            }
            fn changed(&mut self) -> Option<Vec<BlockLimitConfig>> {
                let new = self.next.lock().unwrap().take()?;
                self.paths = new.iter().map(|c| c.path.clone()).collect();
                Some(new)
            }
        }
        let limit = |path: &str, drop| BlockLimitConfig {
            path: path.into(),
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: Duration::from_secs(3600),
            }),
            bytes: None,
            drop,
            ..Default::default()
        };
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let next: Next = Arc::default();
        let table = vec![limit("held", false), limit("dropped", true)];
        let lookup = Live {
            paths: table.iter().map(|c| c.path.clone()).collect(),
            next: Arc::clone(&next),
        };
        d.set_rx_limits(&table, Box::new(lookup)).unwrap();
        learn(&mut d, &m, &txq, &guest_flow(), 42);
        // Tag 42's first reply takes its one token and the one buffer.
        b.0.lock().unwrap().to_guest.push_back(with_header(&reply(0)));
        push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();
        d.process_rx(&mut rec);
        // The next is read with no buffer (the device drops for tag 43):
        // its limit (index 0) would hold it; it waits for a buffer.
        b.0.lock().unwrap().to_guest.push_back(with_header(&reply(1)));
        assert!(d.process_rx(&mut rec).rx_stalled);
        // A live change: `held` is gone, index 0 is `dropped` now.
        *next.lock().unwrap() = Some(vec![limit("dropped", true)]);

        push_rx(&rxq, 1, 2048);
        let out = d.process_rx(&mut rec);

        // No limit of its own any more: delivered, neither held in nor
        // dropped by the limit that now has its old index.
        assert_eq!((out.frames, out.dropped), (1, 0));
        assert_eq!(used(&rxq, 1).0, 1);
        assert_eq!((d.rx_throttled_now(), d.stats().rx_limit_dropped), (0, 0));
        assert_eq!(
            rec.nets.iter().map(|c| (c.tag, c.dropped)).collect::<Vec<_>>(),
            [(Some(42), false), (Some(42), false)]
        );
    }

    #[test]
    fn rx_of_an_unknown_flow_is_unattributed() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        learn(&mut d, &m, &txq, &guest_flow(), 42);
        let other = tcp([10, 0, 0, 9], 22, [10, 0, 0, 2], 5000);
        b.0.lock().unwrap().to_guest.push_back(with_header(&ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            &other,
            0,
            &[1; 5],
        )));
        push_rx(&rxq, 0, 2048);
        let mut rec = Recorder::default();

        d.process_rx(&mut rec);

        assert_eq!((rec.nets[0].tag, rec.nets[0].attributed_by_flow), (None, false));
        assert_eq!(d.stats().rx_unattributed, 1);
    }

    #[test]
    fn without_rx_buffers_frames_stay_in_the_backend() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        b.0.lock().unwrap().to_guest.push_back(with_header(&ipv4_frame(
            [2, 0, 0, 0, 0, 1],
            &guest_flow(),
            0,
            &[1; 5],
        )));
        let mut rec = Recorder::default();

        let out = d.process_rx(&mut rec);

        assert!(out.rx_stalled);
        assert_eq!(b.0.lock().unwrap().to_guest.len(), 1);
        assert!(rec.nets.is_empty() && rec.interrupts.is_empty());
        // The guest posts a buffer (and notifies): now it is delivered.
        push_rx(&rxq, 0, 2048);
        let out = d.process_rx(&mut rec);
        assert_eq!(out.frames, 1);
        assert!(b.0.lock().unwrap().to_guest.is_empty());
    }

    #[test]
    fn malformed_or_small_rx_chains_never_panic() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, b) = activated(&m, &rxq, &txq);
        let frame = with_header(&ipv4_frame([2, 0, 0, 0, 0, 1], &guest_flow(), 0, &[1; 100]));
        b.0.lock().unwrap().to_guest.extend([frame.clone(), frame]);
        // A device-readable RX buffer, then one too small, then a good one.
        push_chain(&rxq, 0, &[(RX_BUFS, 2048, 0)]);
        push_rx(&rxq, 1, 20);
        push_rx(&rxq, 2, 2048);
        let mut rec = Recorder::default();

        let out = d.process_rx(&mut rec);

        // The first frame survives the malformed chain, dies on the small one;
        // the second is delivered.
        assert_eq!((out.chains, out.frames, out.dropped), (3, 1, 2));
        assert_eq!((d.stats().rx_malformed, d.stats().rx_dropped), (1, 1));
        assert_eq!((used(&rxq, 0).1, used(&rxq, 1).1), (0, 0));
        assert_eq!(rec.nets.len(), 1);
    }

    #[test]
    fn config_space_holds_the_mac_and_features_are_offered() {
        let d = NetDevice::new(Box::new(MemBackend::default()), MAC).unwrap();
        let mut mac = [0u8; 6];

        assert!(d.read_config(0, &mut mac));
        assert!(!d.read_config(4, &mut [0u8; 4]));

        assert_eq!(mac, MAC);
        assert_eq!(d.device_type(), VIRTIO_ID_NET);
        assert_eq!(
            d.avail_features(),
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC)
        );
        assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    }

    #[test]
    fn inactive_device_ignores_notifications() {
        let mut d = NetDevice::new(Box::new(MemBackend::default()), MAC).unwrap();
        d.queue_notifiers()[TX_QUEUE].post(Some(1));

        assert_eq!(d.process_tx(&mut Recorder::default()).chains, 0);
        assert!(d.process_rx(&mut Recorder::default()).rx_stalled);
        assert_eq!(d.stats().ignored_notifications, 2);
    }

    #[test]
    fn bogus_avail_index_is_refused() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        txq.avail().idx().store(100);
        let (mut d, _b) = activated(&m, &rxq, &txq);
        d.queue_notifiers()[TX_QUEUE].post(None);

        assert_eq!(d.process_tx(&mut Recorder::default()).chains, 0);
        assert_eq!(d.stats().queue_errors, 1);
    }
}
