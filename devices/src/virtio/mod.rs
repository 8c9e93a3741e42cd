//! Virtio devices whose requests carry tags.
//!
//! - [`mmio`]: the virtio-mmio transport (virtio 1.x, modern only), generic
//!   over [`VirtioDevice`]; it sits on the MMIO [`Bus`](crate::Bus).
//! - [`block`]: virtio-blk on a raw file, processed on the device event loop.
//! - [`limiter`]: per-container token buckets (virtio-blk, virtio-net TX).
//! - [`net`]: virtio-net on a TAP interface (library only: not wired yet).
//! - [`vsock`]: virtio-vsock stream sockets to host Unix sockets.
//!
//! # How requests are tagged
//!
//! A queue notification (a guest write to `QueueNotify`) is made by a vCPU,
//! and that vCPU has a current tag (its slot in the tag region). The VMM's
//! vCPU thread calls [`mmio::set_current_tag`] with the exiting vCPU's tag
//! (a thread-local) before it calls `Bus::write`; the transport drops
//! the notification, with that tag, in the queue's [`QueueNotifier`]
//! mailbox and signals its `EventFd`. The device's event loop takes the
//! mailbox and charges every request of the batch it then processes to that
//! tag, through a [`Charger`] the VMM implements. The interrupt raised after
//! the batch is charged to the tag of the batch's last request.
//!
//! The mailbox keeps only the latest notification of each queue (its tag, its
//! time) and a saturating count: a hostile guest that notifies in a loop costs
//! no memory. Later, an explicit per-descriptor tag table in the tag region
//! (negotiated by a feature bit) will take precedence over the notifier tag.

pub mod block;
pub mod limit_timer;
pub mod limiter;
pub mod mmio;
pub mod net;
pub mod sched;
#[cfg(test)]
mod sched_tests;
pub mod shared_tenant;
pub(crate) mod throttle;
pub mod vsock;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use mmio::{MmioTransport, MMIO_LEN};

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready; the device may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Feature bit: virtio 1.x (modern) device, required by this transport.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// InterruptStatus bit: a used buffer was added to a queue.
pub const INTERRUPT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INTERRUPT_CONFIG: u32 = 2;

/// What went wrong when the transport activated a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The device got a different number of queues than it declared.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device declared.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// A queue the device needs was not made ready by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The device is already active.
    #[error("device already activated")]
    AlreadyActive,
}

/// A device's state: inactive until the driver sets DRIVER_OK; then it owns
/// guest memory and its queues.
#[derive(Debug)]
pub enum DeviceState {
    /// No queues yet (or reset).
    Inactive,
    /// The driver set DRIVER_OK.
    Activated {
        /// Guest memory.
        mem: GuestMemoryMmap,
        /// The queues, validated by the transport.
        queues: Vec<Queue>,
    },
}

impl DeviceState {
    /// Activates with `queues` after the checks every device makes: not
    /// already active, as many queues as the device declared (`expected`),
    /// every one ready.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        expected: usize,
    ) -> Result<(), ActivateError> {
        if matches!(self, Self::Activated { .. }) {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        *self = Self::Activated { mem, queues };
        Ok(())
    }
}

/// Copies `data.len()` bytes of a device's configuration space `config`
/// from `offset`; false (nothing copied) when the access does not fit.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) -> bool {
    let src = usize::try_from(offset)
        .ok()
        .and_then(|o| config.get(o..o.checked_add(data.len())?));
    match src {
        Some(src) => {
            data.copy_from_slice(src);
            true
        }
        None => false,
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block).
    fn device_type(&self) -> u32;
    /// The state every device keeps the same way.
    fn base(&self) -> &VirtioBase;
    /// The same, to change.
    fn base_mut(&mut self) -> &mut VirtioBase;
    /// Reads the configuration space at `offset`; `false` if out of range.
    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool;
    /// The features the device offers (bit 32 is VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64 {
        self.base().avail_features
    }
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.base().queue_max_sizes
    }
    /// Writes the configuration space at `offset`; `false` if refused (the
    /// devices here have no writable configuration).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }
    /// The driver set DRIVER_OK with `acked_features`: start using `queues`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.base_mut().activate(mem, queues, acked_features)
    }
    /// The driver reset the device: drop the queues, back to inactive. A
    /// device with more state to drop overrides this and calls
    /// [`VirtioBase::reset`] too.
    fn reset(&mut self) {
        self.base_mut().reset();
    }
    /// One notification mailbox per queue, shared with the transport.
    fn queue_notifiers(&self) -> Vec<Arc<QueueNotifier>> {
        self.base().notifiers.clone()
    }
    /// The interrupt line, shared with the transport.
    fn interrupt(&self) -> Arc<VirtioInterrupt> {
        Arc::clone(&self.base().interrupt)
    }
    /// Every counter the device keeps, by name (its stats struct's fields).
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// What every virtio device here keeps the same way: offered and accepted
/// features, queue sizes, the activation state, one notification mailbox
/// per queue and the interrupt line. A device holds one and returns it from
/// [`VirtioDevice::base`]; the trait's default methods do the rest.
#[derive(Debug)]
pub struct VirtioBase {
    /// Features offered.
    pub avail_features: u64,
    /// Features the driver accepted at activation (0 before, and after a
    /// reset).
    pub acked_features: u64,
    /// Maximum size of each queue.
    pub queue_max_sizes: Vec<u16>,
    /// Inactive, or the memory and queues once activated.
    pub state: DeviceState,
    /// One per queue.
    pub notifiers: Vec<Arc<QueueNotifier>>,
    /// The interrupt line.
    pub interrupt: Arc<VirtioInterrupt>,
}

impl VirtioBase {
    /// An inactive device offering `avail_features` with queues of
    /// `queue_max_sizes`; fails only if an eventfd cannot be made.
    pub fn new(avail_features: u64, queue_max_sizes: &[u16]) -> std::io::Result<Self> {
        let notifiers = queue_max_sizes
            .iter()
            .map(|_| QueueNotifier::new().map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            avail_features,
            acked_features: 0,
            queue_max_sizes: queue_max_sizes.to_vec(),
            state: DeviceState::Inactive,
            notifiers,
            interrupt: Arc::new(VirtioInterrupt::new()?),
        })
    }

    /// Activates with `queues` (see [`DeviceState::activate`]) and records
    /// the accepted features.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.state.activate(mem, queues, self.queue_max_sizes.len())?;
        self.acked_features = acked_features;
        Ok(())
    }

    /// Back to inactive: queues dropped, features forgotten, interrupt
    /// status cleared.
    pub fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.acked_features = 0;
        self.interrupt.clear();
    }

    /// Signals used buffers and charges the interrupt to `tag`; false (and a
    /// rate-limited log line naming `device`) if the irqfd write failed, for
    /// the caller to count.
    pub fn signal_used(&self, tag: Option<u64>, charger: &mut dyn Charger, device: &str) -> bool {
        match self.interrupt.trigger(INTERRUPT_USED_RING) {
            Ok(()) => {
                charger.charge_interrupt(tag);
                true
            }
            Err(e) => {
                accounting::warn_rl!("{device}: irqfd write failed: {e}");
                false
            }
        }
    }
}

/// Chains the guest published on `queue` that the device has not taken, or
/// `None` when the avail index is bogus (more than a queue ahead), logged
/// (rate-limited, naming `device`) for the caller to count. virtio-queue
/// itself logs a bogus index without a limit, so devices check it here
/// first.
pub fn pending_chains(queue: &Queue, mem: &GuestMemoryMmap, device: &str) -> Option<u16> {
    let pending = match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - std::num::Wrapping(queue.next_avail())).0,
        Err(_) => u16::MAX,
    };
    if pending > queue.size() {
        accounting::warn_rl!(
            "{device}: avail index {pending} chains ahead of a queue of {}",
            queue.size()
        );
        return None;
    }
    Some(pending)
}

/// The latest notification of one queue, as taken by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Tag of the vCPU that wrote `QueueNotify` last.
    pub tag: Option<u64>,
    /// When it did.
    pub at: Instant,
    /// Notifications since the device last took the mailbox (saturating).
    pub count: u64,
}

/// One notification: who notified, when, and how far the driver had
/// published the avail ring at that moment (`None`: unknown, covers all).
#[derive(Clone, Copy, Debug)]
struct Mark {
    tag: Option<u64>,
    at: Instant,
    avail_idx: Option<u16>,
}

#[derive(Debug, Default)]
struct Pending {
    marks: VecDeque<Mark>,
    count: u64,
    dropped: u64,
}

/// Most notifications a queue's mailbox holds; more replace the oldest
/// (counted), so a guest notifying in a loop cannot grow the VMM.
pub const MAX_MARKS: usize = 256;

/// Whether a notification made when the avail index was `idx` covers the
/// chain at ring position `pos`, i.e. `pos` was published before it.
fn covers(idx: u16, pos: u16) -> bool {
    let ahead = idx.wrapping_sub(pos);
    ahead != 0 && ahead <= 0x8000
}

/// The per-queue notification mailbox.
///
/// Each `QueueNotify` leaves a mark: the notifier's tag, the time, and the
/// avail index the driver had published. A chain is charged to the first
/// notification made after it was published, so a device that keeps popping
/// chains in one batch never charges a chain published later (by another
/// principal, or by the same vCPU after a tag switch) to an earlier
/// notifier. Bounded by [`MAX_MARKS`].
#[derive(Debug)]
pub struct QueueNotifier {
    evt: EventFd,
    pending: Mutex<Pending>,
}

impl QueueNotifier {
    /// An empty mailbox with a non-blocking `EventFd`.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            pending: Mutex::new(Pending::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `EventFd` the device's event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Records a notification by `tag` covering every chain published so
    /// far, and wakes the device.
    pub fn post(&self, tag: Option<u64>) {
        self.post_at(tag, None);
    }

    /// Records a notification by `tag` made when the driver's avail index
    /// was `avail_idx`, and wakes the device. A notification that publishes
    /// nothing new since the last one leaves no mark of its own: the chains
    /// stay with whoever published them.
    pub fn post_at(&self, tag: Option<u64>, avail_idx: Option<u16>) {
        {
            let mut p = self.lock();
            p.count = p.count.saturating_add(1);
            let repeat = avail_idx.is_some() && p.marks.back().is_some_and(|m| m.avail_idx == avail_idx);
            if !repeat {
                if p.marks.len() >= MAX_MARKS {
                    p.marks.pop_front();
                    p.dropped += 1;
                }
                p.marks.push_back(Mark {
                    tag,
                    at: Instant::now(),
                    avail_idx,
                });
            }
        }
        self.wake();
    }

    /// Wakes the device without a new notification (more work is pending).
    pub fn wake(&self) {
        if let Err(e) = self.evt.write(1) {
            accounting::warn_rl!("virtio: queue notify eventfd write failed: {e}");
        }
    }

    /// The notification that covers the chain at avail position `pos`:
    /// the first one made after it was published. `None`: not notified yet.
    pub fn covering(&self, pos: u16) -> Option<Notification> {
        let p = self.lock();
        p.marks
            .iter()
            .find(|m| m.avail_idx.is_none_or(|i| covers(i, pos)))
            .map(|m| Notification {
                tag: m.tag,
                at: m.at,
                count: p.count,
            })
    }

    /// Forgets the notifications that cover nothing at or after
    /// `next_avail`; `batch_done` also forgets those of unknown extent.
    pub fn retire(&self, next_avail: u16, batch_done: bool) {
        let mut p = self.lock();
        p.marks.retain(|m| match m.avail_idx {
            Some(i) => covers(i, next_avail),
            None => !batch_done,
        });
    }

    /// Notifications dropped because the mailbox was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Takes the latest notification (with the count since the last take),
    /// leaving the mailbox empty.
    pub fn take(&self) -> Option<Notification> {
        let mut p = self.lock();
        let latest = p.marks.back().map(|m| Notification {
            tag: m.tag,
            at: m.at,
            count: p.count,
        });
        p.marks.clear();
        p.count = 0;
        latest
    }
}

/// The interrupt line of one device: InterruptStatus bits and an irqfd.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// A line with a fresh non-blocking irqfd (the VMM registers it with KVM).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The `EventFd` to hand to `KVM_IRQFD`.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// Sets `bits` in InterruptStatus and signals the irqfd.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.irqfd.write(1)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

/// What a block request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockOp {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID.
    GetId,
    /// Any other type, or a chain too malformed to say.
    Unsupported,
}

/// One block request's charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCharge {
    /// Tag of the notification that made the device process the request.
    pub tag: Option<u64>,
    /// What it was.
    pub op: BlockOp,
    /// Data bytes moved (0 when it failed).
    pub bytes: u64,
    /// Event-loop thread CPU time spent on it (`CLOCK_THREAD_CPUTIME_ID`).
    pub device_ns: u64,
    /// From that notification to the request's used-ring update.
    pub latency_ns: u64,
    /// The status byte the guest got (`VIRTIO_BLK_S_*`).
    pub status: u8,
    /// Whether a per-container limit held it back before it ran.
    pub throttled: bool,
    /// How long it was held, ns (0 when not held).
    pub throttled_ns: u64,
}

/// Which way a network frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetDir {
    /// Guest to host (the TX queue).
    Tx,
    /// Host to guest (the RX queue).
    Rx,
}

/// One network frame's charge (virtio-net).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetCharge {
    /// TX: the explicit queue tag, else the notification covering the chain.
    /// RX: the tag of the flow the frame answers, `None` when unknown.
    pub tag: Option<u64>,
    /// Which way.
    pub dir: NetDir,
    /// 1 for a frame; 0 for a TX chain that held none (malformed).
    pub frames: u64,
    /// The frame's bytes, without the virtio-net header (TX: what the guest
    /// offered, delivered or not; see `spoofed`).
    pub bytes: u64,
    /// Event-loop thread CPU time spent on it (`CLOCK_THREAD_CPUTIME_ID`).
    pub host_ns: u64,
    /// Wall time of the backend write (TX), or from the backend read to the
    /// used-ring update (RX).
    pub wall_ns: u64,
    /// TX TCP: payload bytes of this segment that had been sent before.
    pub retransmitted_bytes: u64,
    /// TX: the source MAC was not the device's; the frame was dropped.
    pub spoofed: bool,
    /// RX: the tag came from the flow table or the agent's flow bindings.
    pub attributed_by_flow: bool,
    /// TX: how long a per-container limit held the frame back, if one did.
    pub throttled_ns: Option<u64>,
    /// RX: a per-container limit with `net-rx-drop` dropped the frame
    /// before it reached the guest (`frames` and `bytes` are the dropped
    /// frame's, not delivered).
    pub dropped: bool,
}

impl NetCharge {
    /// One received frame of `bytes` for the flow's principal `tag`,
    /// delivered (not held, not dropped): the fields every RX charge shares.
    pub fn rx_frame(tag: Option<u64>, bytes: u64, host_ns: u64, wall_ns: u64) -> Self {
        Self {
            tag,
            dir: NetDir::Rx,
            frames: 1,
            bytes,
            host_ns,
            wall_ns,
            retransmitted_bytes: 0,
            spoofed: false,
            attributed_by_flow: tag.is_some(),
            throttled_ns: None,
            dropped: false,
        }
    }
}

/// One vsock packet's charge (virtio-vsock), or host work on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockCharge {
    /// TX: the explicit queue tag, else the notification covering the
    /// chain. RX: the principal that owns the connection.
    pub tag: Option<u64>,
    /// Which way: TX for packets from the guest (and host writes of their
    /// data), RX for packets to the guest.
    pub dir: NetDir,
    /// 1 for a packet; 0 for a malformed TX chain or host-side work alone.
    pub packets: u64,
    /// Payload bytes of an RW packet.
    pub bytes: u64,
    /// Event-loop thread CPU time spent on it (`CLOCK_THREAD_CPUTIME_ID`).
    pub host_ns: u64,
    /// 1 when this packet opened a connection (a guest REQUEST accepted,
    /// or the guest's RESPONSE to a host-initiated one).
    pub connections: u64,
    /// 1 for an RST: one from the guest that ended a live connection (TX),
    /// or one the device delivered to refuse or end one (RX).
    pub resets: u64,
    /// 1 when a per-container limit let go bytes it held on this
    /// connection (`--limit PATH:vsock-bytes=...`; a charge of its own,
    /// `packets` 0); `dir` says which way they went.
    pub throttle_events: u64,
    /// How long those bytes were held, ns (wall time, not host CPU).
    pub throttled_ns: u64,
}

/// Where devices charge their work; the VMM implements it over its books.
pub trait Charger {
    /// One block request was completed.
    fn charge_block(&mut self, c: &BlockCharge);
    /// One interrupt was raised on behalf of `tag`.
    fn charge_interrupt(&mut self, tag: Option<u64>);
    /// One network frame was sent or received (or a TX chain dropped).
    fn charge_net(&mut self, c: &NetCharge) {
        let _ = c;
    }
    /// One vsock packet was sent or received (or host work was done).
    fn charge_vsock(&mut self, c: &VsockCharge) {
        let _ = c;
    }
}

/// CPU time of the calling thread in nanoseconds (0 if the clock fails).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the kernel knows; the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_keeps_latest_tag_and_counts() {
        let n = QueueNotifier::new().unwrap();

        n.post(Some(1));
        n.post(None);
        n.post(Some(7));

        let got = n.take().unwrap();
        assert_eq!(got.tag, Some(7));
        assert_eq!(got.count, 3);
        assert_eq!(n.eventfd().read().unwrap(), 3);
        assert!(n.take().is_none());
    }

    #[test]
    fn each_chain_goes_to_the_first_notification_after_it_was_published() {
        let n = QueueNotifier::new().unwrap();
        // Chains 0..2 published, notified by 1; chain 2 published, notified by 2.
        n.post_at(Some(1), Some(2));
        n.post_at(Some(2), Some(3));
        // A repeated notification that publishes nothing leaves no mark.
        n.post_at(Some(9), Some(3));
        assert_eq!(n.covering(0).unwrap().tag, Some(1));
        assert_eq!(n.covering(1).unwrap().tag, Some(1));
        assert_eq!(n.covering(2).unwrap().tag, Some(2));
        // Chain 3 is published but not yet notified: it waits.
        assert!(n.covering(3).is_none());
        n.retire(2, false);
        assert_eq!(n.covering(2).unwrap().tag, Some(2));
        n.retire(3, true);
        assert!(n.covering(2).is_none() && n.covering(3).is_none());
    }

    #[test]
    fn marks_wrap_around_the_16_bit_index_and_stay_bounded() {
        let n = QueueNotifier::new().unwrap();
        n.post_at(Some(1), Some(u16::MAX));
        n.post_at(Some(2), Some(1));
        assert_eq!(n.covering(u16::MAX - 1).unwrap().tag, Some(1));
        assert_eq!(n.covering(u16::MAX).unwrap().tag, Some(2));
        assert_eq!(n.covering(0).unwrap().tag, Some(2));
        for i in 0..(u16::try_from(MAX_MARKS).unwrap() + 10) {
            n.post_at(Some(3), Some(i.wrapping_add(2)));
        }
        assert_eq!(n.dropped(), 12);
        assert!(n.lock().marks.len() <= MAX_MARKS);
    }

    #[test]
    fn interrupt_trigger_sets_status_and_ack_clears_it() {
        let i = VirtioInterrupt::new().unwrap();

        i.trigger(INTERRUPT_USED_RING).unwrap();
        assert_eq!(i.status(), INTERRUPT_USED_RING);
        assert_eq!(i.irqfd().read().unwrap(), 1);

        i.ack(INTERRUPT_USED_RING);
        assert_eq!(i.status(), 0);
    }

    #[test]
    fn thread_cpu_time_advances() {
        let a = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() >= a);
    }
}
