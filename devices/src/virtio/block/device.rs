//! The virtio-blk device: a raw file, one queue, requests charged by tag.
//!
//! [`BlockDevice::process_queue`] takes the queue's pending notification
//! (its tag and time), pops the available chains (at most the queue size per
//! call, then it re-posts the notification so that other devices on the loop
//! get their turn), parses each one, executes it with `pread`/`pwrite`, writes
//! the status byte, puts it on the used ring and charges it to that tag. After
//! the batch it raises one interrupt if the queue wants one, charged to the
//! tag of the batch's last request.

use crate::counters::NamedCounters;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use accounting::warn_rl;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{parse, Malformed, Request, RequestKind, ID_BYTES, SECTOR_SIZE};
use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use crate::acct::QueueTagReader;
use crate::virtio::limiter::{BlockLimitConfig, BucketError, LimitLookup};
use crate::virtio::throttle::HeldWork;
use crate::virtio::{pending_chains, VirtioBase, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::virtio::{thread_cpu_ns, BlockCharge, BlockOp, Charger};

/// virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` in the configuration space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: FLUSH requests are supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes copied between the file and guest memory at a time.
const CHUNK: usize = 64 * 1024;

/// What went wrong setting up a block device (the VMM's mistakes, not the guest's).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image could not be opened.
    #[error("cannot open disk image {path} (check the path and its permissions)")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The disk image's size could not be read.
    #[error("cannot read the size of the disk image")]
    Metadata(#[source] std::io::Error),
    /// An `EventFd` could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed (malformed ones included).
    pub requests: u64,
    /// Bytes read from the disk into the guest.
    pub bytes_read: u64,
    /// Bytes written from the guest to the disk.
    pub bytes_written: u64,
    /// Requests answered IOERR because the disk or the host failed.
    pub io_errors: u64,
    /// Requests of an unknown type.
    pub unsupported: u64,
    /// Chains that were not valid requests.
    pub malformed: u64,
    /// Malformed chains with no status byte: consumed with length 0.
    pub dropped: u64,
    /// Writes to a read-only disk.
    pub read_only_refusals: u64,
    /// Failures to update the used ring or to raise the interrupt.
    pub queue_errors: u64,
    /// Interrupts raised.
    pub interrupts: u64,
    /// Notifications of an inactive device or a queue out of range.
    pub ignored_notifications: u64,
    /// Requests a per-container limit held back before completing.
    pub throttled: u64,
    /// Times the device stopped taking chains because a queue's worth of
    /// requests was held (only a hostile or broken driver gets there).
    pub throttle_stalls: u64,
}

crate::counters::named_counters!(BlockStats {
    requests,
    bytes_read,
    bytes_written,
    io_errors,
    unsupported,
    malformed,
    dropped,
    read_only_refusals,
    queue_errors,
    interrupts,
    ignored_notifications,
    throttled,
    throttle_stalls,
});

/// What one `process_queue` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Requests completed (chains a limit held are counted when they go).
    pub requests: u64,
    /// Of which malformed.
    pub malformed: u64,
    /// Whether an interrupt was raised.
    pub interrupted: bool,
    /// Whether chains were left for another call (batch limit).
    pub more_pending: bool,
}

pub use crate::virtio::DeviceState;

/// The backing file and what it takes to execute requests on it.
#[derive(Debug)]
struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    serial: [u8; ID_BYTES],
    scratch: Vec<u8>,
}

/// How a request ended: status, data bytes moved, used-ring length.
type Outcome = (u8, u64, u32);

impl Disk {
    /// Copies between the file at `offset` and the buffers, one chunk at a time.
    fn transfer(&mut self, mem: &GuestMemoryMmap, req: &Request, to_guest: bool) -> std::io::Result<u64> {
        let mut offset = req.sector * SECTOR_SIZE;
        for &(addr, len) in &req.data {
            let mut done = 0usize;
            let len = usize::try_from(len).map_err(std::io::Error::other)?;
            while done < len {
                let n = CHUNK.min(len - done);
                let buf = &mut self.scratch[..n];
                let gpa = GuestAddress(addr.0 + done as u64);
                if to_guest {
                    self.file.read_exact_at(buf, offset)?;
                    mem.write_slice(buf, gpa).map_err(std::io::Error::other)?;
                } else {
                    mem.read_slice(buf, gpa).map_err(std::io::Error::other)?;
                    self.file.write_all_at(buf, offset)?;
                }
                done += n;
                offset += n as u64;
            }
        }
        Ok(req.data_len())
    }

    fn get_id(&self, mem: &GuestMemoryMmap, req: &Request) -> Outcome {
        let mut written = 0usize;
        for &(addr, len) in &req.data {
            let n = usize::try_from(len).unwrap_or(usize::MAX).min(ID_BYTES - written);
            if mem.write_slice(&self.serial[written..written + n], addr).is_err() {
                return (VIRTIO_BLK_S_IOERR, 0, 1);
            }
            written += n;
        }
        // At most 20 bytes: the casts cannot truncate.
        (
            VIRTIO_BLK_S_OK,
            written as u64,
            u32::try_from(written + 1).unwrap_or(1),
        )
    }

    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request, stats: &mut BlockStats) -> Outcome {
        let io = |r: std::io::Result<u64>, stats: &mut BlockStats| match r {
            Ok(n) => Some(n),
            Err(e) => {
                stats.io_errors += 1;
                warn_rl!("virtio-blk: I/O error: {e}");
                None
            }
        };
        match req.kind {
            RequestKind::In => match io(self.transfer(mem, req, true), stats) {
                Some(n) => {
                    stats.bytes_read += n;
                    (VIRTIO_BLK_S_OK, n, u32::try_from(n + 1).unwrap_or(u32::MAX))
                }
                None => (VIRTIO_BLK_S_IOERR, 0, 1),
            },
            RequestKind::Out if self.read_only => {
                stats.read_only_refusals += 1;
                (VIRTIO_BLK_S_IOERR, 0, 1)
            }
            RequestKind::Out => match io(self.transfer(mem, req, false), stats) {
                Some(n) => {
                    stats.bytes_written += n;
                    (VIRTIO_BLK_S_OK, n, 1)
                }
                None => (VIRTIO_BLK_S_IOERR, 0, 1),
            },
            RequestKind::Flush => match io(self.file.sync_data().map(|()| 0), stats) {
                Some(_) => (VIRTIO_BLK_S_OK, 0, 1),
                None => (VIRTIO_BLK_S_IOERR, 0, 1),
            },
            RequestKind::GetId => self.get_id(mem, req),
            RequestKind::Unsupported(_) => {
                stats.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0, 1)
            }
        }
    }
}

/// A virtio-blk device on a raw file.
#[derive(Debug)]
pub struct BlockDevice {
    disk: Disk,
    base: VirtioBase,
    stats: BlockStats,
    /// The guest's explicit per-request tags, and this device's index among
    /// the VM's virtio devices (which picks its tables).
    queue_tags: Option<(QueueTagReader, u32)>,
    /// Per-container limits and the requests they hold (`None`: no limit
    /// on this device, and nothing on the request path looks for one).
    throttle: Option<Throttle>,
}

fn op_of(kind: RequestKind) -> BlockOp {
    match kind {
        RequestKind::In => BlockOp::Read,
        RequestKind::Out => BlockOp::Write,
        RequestKind::Flush => BlockOp::Flush,
        RequestKind::GetId => BlockOp::GetId,
        RequestKind::Unsupported(_) => BlockOp::Unsupported,
    }
}

impl BlockDevice {
    /// Opens the raw image at `path` (read-only if `read_only`).
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        Self::new(file, read_only, serial)
    }

    /// A device on `file`; `serial` (at most 20 bytes kept) answers GET_ID.
    /// A trailing partial sector of the file is not exposed.
    pub fn new(file: File, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        let sectors = file.metadata().map_err(BlockError::Metadata)?.len() / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let mut avail_features =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            disk: Disk {
                file,
                read_only,
                sectors,
                serial: id,
                scratch: vec![0; CHUNK],
            },
            base: VirtioBase::new(avail_features, &[QUEUE_SIZE]).map_err(BlockError::EventFd)?,
            stats: BlockStats::default(),
            queue_tags: None,
            throttle: None,
        })
    }

    /// Disk size in sectors (the config space's `capacity`).
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }

    /// Counters so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// The device's state.
    pub fn state(&self) -> &DeviceState {
        &self.base.state
    }

    /// Features the driver accepted at activation.
    pub fn acked_features(&self) -> u64 {
        self.base.acked_features
    }

    /// The configuration space: `capacity` (u64), then `blk_size` at 20.
    fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&self.disk.sectors.to_le_bytes());
        c[20..24].copy_from_slice(&u32::try_from(SECTOR_SIZE).unwrap_or(512).to_le_bytes());
        c
    }

    /// Lets requests carry explicit tags: the guest's queue tag tables of
    /// virtio device `device_index` (see `accounting::abi::QueueTags`). A
    /// request with an explicit tag is charged to it rather than to the
    /// vCPU that notified the queue.
    pub fn set_queue_tags(&mut self, reader: QueueTagReader, device_index: u32) {
        self.queue_tags = Some((reader, device_index));
    }

    /// Puts this device's requests under per-container limits: `lookup`
    /// names, per request, which of `limits` (if any) its tag falls under.
    /// Refuses an invalid bucket (the caller validated the flags already).
    pub fn set_limits(
        &mut self,
        limits: &[BlockLimitConfig],
        lookup: Box<dyn LimitLookup>,
    ) -> Result<(), BucketError> {
        self.throttle = Some(Throttle::new(limits, lookup)?);
        Ok(())
    }

    /// Requests held back by a limit right now.
    pub fn throttled_now(&self) -> usize {
        self.throttle.as_ref().map_or(0, Throttle::held)
    }

    /// How long until the first held request may go (`None`: none held).
    pub fn next_release(&mut self) -> Option<Duration> {
        self.throttle.as_mut().and_then(Throttle::next_wait)
    }

    /// Processes the available chains of queue `queue_index`, charging each
    /// request to the tag of the pending notification. A request whose
    /// container's limit has no tokens is held (see [`Self::release_held`]).
    pub fn process_queue(&mut self, queue_index: usize, charger: &mut dyn Charger) -> ProcessStats {
        let mut out = ProcessStats::default();
        let Some(notifier) = self.base.notifiers.get(queue_index).cloned() else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        let DeviceState::Activated { mem, queues } = &mut self.base.state else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        let Some(queue) = queues.get_mut(queue_index) else {
            self.stats.ignored_notifications += 1;
            return out;
        };
        if pending_chains(queue, mem, "virtio-blk").is_none() {
            self.stats.queue_errors += 1;
            return out;
        }
        let mut last_tag = None;
        let mut blocked = false;
        // Each chain is charged to the first notification made after the
        // guest published it; a chain not yet notified waits for its own.
        // CLOCK_THREAD_CPUTIME_ID is a system call, not a vDSO read: one per
        // request, each reading doubling as the next request's start.
        let mut cpu_mark = thread_cpu_ns();
        let mut popped = 0u64;
        while let Some(notification) = notifier.covering(queue.next_avail()) {
            // Hold at most a queue's worth: an honest driver cannot have
            // more chains outstanding; a hostile one re-publishing heads
            // waits in the avail ring until the held ones go.
            if self
                .throttle
                .as_ref()
                .is_some_and(|t| !t.has_room(usize::from(queue.size()), usize::MAX))
            {
                self.stats.throttle_stalls += 1;
                blocked = true;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            let explicit =
                (self.queue_tags.as_mut()).and_then(|(r, dev)| r.chain_tag(*dev, queue_index, head));
            let tag = explicit.or(notification.tag);
            let parsed = parse(chain, self.disk.sectors, queue.size());
            let held = match self.throttle.as_mut() {
                Some(t) => t.admit(tag, bytes_of(&parsed)),
                None => None,
            };
            if let (Some(k), Some(t)) = (held, self.throttle.as_mut()) {
                // Its parsing so far is its own device time, charged when it
                // completes, not the next request's.
                let now = thread_cpu_ns();
                let parse_ns = now.saturating_sub(cpu_mark);
                cpu_mark = now;
                t.hold(
                    k,
                    Held {
                        queue: queue_index,
                        head,
                        tag,
                        since: notification.at,
                        at_ns: t.now(),
                        parse_ns,
                        parsed,
                    },
                );
                self.stats.throttled += 1;
            } else {
                let done = Done {
                    head,
                    tag,
                    since: notification.at,
                    throttled_ns: None,
                    earlier_device_ns: 0,
                    parsed,
                };
                let bad = complete(
                    &mut self.disk,
                    &mut self.stats,
                    mem,
                    queue,
                    done,
                    charger,
                    &mut cpu_mark,
                );
                out.malformed += u64::from(bad);
                out.requests += 1;
                last_tag = tag;
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
            // The marks stay; only the wake-up is needed.
            notifier.wake();
        } else if !blocked {
            notifier.retire(queue.next_avail(), true);
        }
        if out.requests > 0 && queue.needs_notification(mem).unwrap_or(true) {
            if self.base.signal_used(last_tag, charger, "virtio-blk") {
                self.stats.interrupts += 1;
                out.interrupted = true;
            } else {
                self.stats.queue_errors += 1;
            }
        }
        out
    }

    /// Completes the held requests whose limits have tokens again (each
    /// container's in the order they came), then takes up the queue again
    /// if it stopped because a queue's worth was held.
    pub fn release_held(&mut self, charger: &mut dyn Charger) -> ProcessStats {
        let mut out = ProcessStats::default();
        let DeviceState::Activated { mem, queues } = &mut self.base.state else {
            return out;
        };
        let Some(throttle) = self.throttle.as_mut() else {
            return out;
        };
        let mut last_tag = None;
        let mut cpu_mark = thread_cpu_ns();
        let mut touched = vec![false; queues.len()];
        while let Some(h) = throttle.pop_ready() {
            let now = throttle.now();
            let Some(queue) = queues.get_mut(h.queue) else {
                continue;
            };
            let done = Done {
                head: h.head,
                tag: h.tag,
                since: h.since,
                throttled_ns: Some(now.saturating_sub(h.at_ns)),
                earlier_device_ns: h.parse_ns,
                parsed: h.parsed,
            };
            let bad = complete(
                &mut self.disk,
                &mut self.stats,
                mem,
                queue,
                done,
                charger,
                &mut cpu_mark,
            );
            out.malformed += u64::from(bad);
            if let Some(t) = touched.get_mut(h.queue) {
                *t = true;
            }
            out.requests += 1;
            last_tag = h.tag;
        }
        let notify =
            (queues.iter_mut().zip(&touched)).any(|(q, &t)| t && q.needs_notification(mem).unwrap_or(true));
        if out.requests > 0 && notify {
            if self.base.signal_used(last_tag, charger, "virtio-blk") {
                self.stats.interrupts += 1;
                out.interrupted = true;
            } else {
                self.stats.queue_errors += 1;
            }
        }
        // Chains left in the avail ring when the hold was full.
        for i in 0..self.base.notifiers.len() {
            let r = self.process_queue(i, charger);
            out.requests += r.requests;
            out.malformed += r.malformed;
            out.interrupted |= r.interrupted;
        }
        out
    }
}

/// A request to complete now.
struct Done {
    head: u16,
    tag: Option<u64>,
    since: Instant,
    /// How long a limit held it, if it did.
    throttled_ns: Option<u64>,
    /// Device time spent on it before it was held (parsing).
    earlier_device_ns: u64,
    parsed: Result<Request, Malformed>,
}

/// Executes a parsed request, writes its status, charges it and puts it on
/// the used ring.
/// Returns whether the chain was malformed.
fn complete(
    disk: &mut Disk,
    stats: &mut BlockStats,
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    d: Done,
    charger: &mut dyn Charger,
    cpu_mark: &mut u64,
) -> bool {
    let head = d.head;
    let malformed = d.parsed.is_err();
    let (op, (status, bytes, used_len), status_addr) = match d.parsed {
        Ok(req) => (
            op_of(req.kind),
            disk.execute(mem, &req, stats),
            Some(req.status_addr),
        ),
        Err(m) => {
            stats.malformed += 1;
            warn_rl!("virtio-blk: malformed request at head {head}: {}", m.error);
            let used = u32::from(m.status_addr.is_some());
            let op = m.kind.map_or(BlockOp::Unsupported, op_of);
            (op, (VIRTIO_BLK_S_IOERR, 0, used), m.status_addr)
        }
    };
    match status_addr {
        Some(addr) if mem.write_obj(status, addr).is_ok() => {}
        Some(_) => stats.queue_errors += 1,
        None => stats.dropped += 1,
    }
    // Charge before the used element is published: once the guest sees
    // it, it may end the request, and the charge must find the request
    // still live.
    charger.charge_block(&BlockCharge {
        tag: d.tag,
        op,
        bytes,
        device_ns: {
            let now = thread_cpu_ns();
            let spent = now.saturating_sub(*cpu_mark);
            *cpu_mark = now;
            spent.saturating_add(d.earlier_device_ns)
        },
        latency_ns: u64::try_from(d.since.elapsed().as_nanos()).unwrap_or(u64::MAX),
        status,
        throttled: d.throttled_ns.is_some(),
        throttled_ns: d.throttled_ns.unwrap_or(0),
    });
    if let Err(e) = queue.add_used(mem, head, used_len) {
        stats.queue_errors += 1;
        warn_rl!("virtio-blk: used ring update failed: {e}");
    }
    stats.requests += 1;
    malformed
}

/// A request a limit holds back.
struct Held {
    queue: usize,
    head: u16,
    tag: Option<u64>,
    since: Instant,
    /// When it was held, on the throttle's clock.
    at_ns: u64,
    /// Device thread CPU time spent on it before it was held.
    parse_ns: u64,
    parsed: Result<Request, Malformed>,
}

/// Bytes a request takes from a bytes bucket: the data of reads and writes.
fn bytes_of(parsed: &Result<Request, Malformed>) -> u64 {
    match parsed {
        Ok(r) if matches!(r.kind, RequestKind::In | RequestKind::Out) => r.data_len(),
        _ => 0,
    }
}

impl HeldWork for Held {
    fn bytes(&self) -> u64 {
        bytes_of(&self.parsed)
    }
}

/// The device's limits and the requests they hold (nothing is copied:
/// a held request is its parsed chain, bounded by the queue).
type Throttle = crate::virtio::throttle::Throttle<Held>;

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
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

    /// Held requests belong to the queues the driver just dropped: they are
    /// forgotten (never completed onto a later queue), the buckets kept.
    fn reset(&mut self) {
        if let Some(t) = self.throttle.as_mut() {
            t.forget_held();
        }
        self.base.reset();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::request::{HEADER_LEN, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID};
    use super::super::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use super::*;
    use crate::virtio::INTERRUPT_USED_RING;
    use std::sync::Arc;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::tempfile::TempFile;

    pub(crate) const WRITE: u16 = 2;
    pub(crate) const SECTORS: u64 = 64;
    pub(crate) const STATUS: u64 = 0x3_0000;

    /// Records every charge.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) blocks: Vec<BlockCharge>,
        pub(crate) interrupts: Vec<Option<u64>>,
    }

    impl Charger for Recorder {
        fn charge_block(&mut self, c: &BlockCharge) {
            self.blocks.push(*c);
        }
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.interrupts.push(tag);
        }
    }

    impl Charger for Arc<std::sync::Mutex<Recorder>> {
        fn charge_block(&mut self, c: &BlockCharge) {
            self.lock().unwrap().charge_block(c);
        }
        fn charge_interrupt(&mut self, tag: Option<u64>) {
            self.lock().unwrap().charge_interrupt(tag);
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// The initial disk contents at `offset`: byte `i` is `i % 251`.
    pub(crate) fn pattern(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect()
    }

    /// A temp file of `SECTORS` sectors holding [`pattern`].
    pub(crate) fn disk_file() -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file()
            .write_all_at(&pattern(0, SECTORS * SECTOR_SIZE), 0)
            .unwrap();
        f
    }

    pub(crate) fn file_bytes(f: &TempFile, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        f.as_file().read_exact_at(&mut b, offset).unwrap();
        b
    }

    /// Writes a request chain at descriptor `at`: header at `0x1_0000 + 0x100 * at`,
    /// `data` descriptors, status at `STATUS + at`. Returns the status address.
    pub(crate) fn push_request(
        m: &GuestMemoryMmap,
        q: &MockSplitQueue<GuestMemoryMmap>,
        at: u16,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, u16)],
    ) -> GuestAddress {
        let hdr = 0x1_0000 + 0x100 * u64::from(at);
        m.write_obj(kind.to_le(), GuestAddress(hdr)).unwrap();
        m.write_obj(sector.to_le(), GuestAddress(hdr + 8)).unwrap();
        let status = GuestAddress(STATUS + u64::from(at));
        m.write_obj(0xffu8, status).unwrap();
        let mut descs = vec![(hdr, HEADER_LEN, 0)];
        descs.extend_from_slice(data);
        descs.push((status.0, 1, WRITE));
        let n = descs.len();
        let raw: Vec<RawDescriptor> = (at..)
            .zip(descs.iter().enumerate())
            .map(|(i, (k, &(addr, len, flags)))| {
                let (flags, next) = if k + 1 < n { (flags | 1, i + 1) } else { (flags, 0) };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        q.add_desc_chains(&raw, at).unwrap();
        status
    }

    pub(crate) fn used(q: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = q.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    fn activated(
        m: &GuestMemoryMmap,
        q: &MockSplitQueue<GuestMemoryMmap>,
        f: &TempFile,
        ro: bool,
    ) -> BlockDevice {
        let file = OpenOptions::new()
            .read(true)
            .write(!ro)
            .open(f.as_path())
            .unwrap();
        let mut d = BlockDevice::new(file, ro, "resourceful-disk-0").unwrap();
        d.activate(
            m.clone(),
            vec![q.create_queue().unwrap()],
            1 << VIRTIO_F_VERSION_1,
        )
        .unwrap();
        d
    }

    fn status_at(m: &GuestMemoryMmap, a: GuestAddress) -> u8 {
        m.read_obj(a).unwrap()
    }

    #[test]
    fn read_copies_sectors_into_guest_memory() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let s = push_request(
            &m,
            &q,
            0,
            VIRTIO_BLK_T_IN,
            2,
            &[(0x4_0000, 512, WRITE), (0x5_0000, 512, WRITE)],
        );
        let mut d = activated(&m, &q, &f, false);
        let mut rec = Recorder::default();
        d.queue_notifiers()[0].post(Some(5));

        let out = d.process_queue(0, &mut rec);

        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got[..512], GuestAddress(0x4_0000)).unwrap();
        m.read_slice(&mut got[512..], GuestAddress(0x5_0000)).unwrap();
        assert_eq!(got, pattern(1024, 1024));
        assert_eq!(status_at(&m, s), VIRTIO_BLK_S_OK);
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(used(&q, 0), (0, 1025));
        assert_eq!((out.requests, out.interrupted), (1, true));
        let c = rec.blocks[0];
        assert_eq!(
            (c.tag, c.op, c.bytes, c.status),
            (Some(5), BlockOp::Read, 1024, VIRTIO_BLK_S_OK)
        );
        assert_eq!(rec.interrupts, vec![Some(5)]);
        assert_eq!(d.interrupt().status(), INTERRUPT_USED_RING);
        assert_eq!(d.interrupt().irqfd().read().unwrap(), 1);
    }

    #[test]
    fn an_explicit_queue_tag_outranks_the_notifier() {
        use crate::acct::{Registration, TagRegion};
        use accounting::abi::{self, tag};
        let (m, f) = (mem(), disk_file());
        // A registered region with 4 queue tag tables of 16 entries.
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
        // Device 0, queue 0 is table 0: head 3 carries tag (7, 9); head 0 none.
        let entry = REGION + 128 + 8 * u64::from(abi::qtag_table(0, 0) * 16 + 3);
        m.write_obj(tag(7, 9), GuestAddress(entry)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        push_request(&m, &q, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
        push_request(&m, &q, 3, VIRTIO_BLK_T_FLUSH, 0, &[]);
        let mut d = activated(&m, &q, &f, false);
        d.set_queue_tags(region.queue_tag_reader(), 0);
        let mut rec = Recorder::default();

        d.queue_notifiers()[0].post(Some(tag(1, 0)));
        d.process_queue(0, &mut rec);

        let tags: Vec<_> = rec.blocks.iter().map(|c| c.tag).collect();
        assert_eq!(tags, vec![Some(tag(1, 0)), Some(tag(7, 9))]);
    }

    #[test]
    fn write_then_flush_reach_the_file() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0xab; 512], GuestAddress(0x4_0000)).unwrap();
        let s1 = push_request(&m, &q, 0, VIRTIO_BLK_T_OUT, 7, &[(0x4_0000, 512, 0)]);
        let s2 = push_request(&m, &q, 3, VIRTIO_BLK_T_FLUSH, 0, &[]);
        let mut d = activated(&m, &q, &f, false);
        let mut rec = Recorder::default();

        d.queue_notifiers()[0].post(None);
        d.process_queue(0, &mut rec);

        assert_eq!(file_bytes(&f, 7 * 512, 512), vec![0xab; 512]);
        assert_eq!(file_bytes(&f, 8 * 512, 512), pattern(8 * 512, 512));
        assert_eq!(
            (status_at(&m, s1), status_at(&m, s2)),
            (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK)
        );
        assert_eq!((used(&q, 0), used(&q, 1)), ((0, 1), (3, 1)));
        let ops: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.op, c.bytes)).collect();
        assert_eq!(ops, vec![(None, BlockOp::Write, 512), (None, BlockOp::Flush, 0)]);
        assert_eq!(d.stats().bytes_written, 512);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let s = push_request(&m, &q, 0, VIRTIO_BLK_T_GET_ID, 0, &[(0x4_0000, 20, WRITE)]);
        let mut d = activated(&m, &q, &f, false);

        d.queue_notifiers()[0].post(None);
        d.process_queue(0, &mut Recorder::default());

        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&id[..18], b"resourceful-disk-0");
        assert_eq!(status_at(&m, s), VIRTIO_BLK_S_OK);
        assert_eq!(used(&q, 0), (0, 21));
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0xab; 512], GuestAddress(0x4_0000)).unwrap();
        let s = push_request(&m, &q, 0, VIRTIO_BLK_T_OUT, 0, &[(0x4_0000, 512, 0)]);
        let mut d = activated(&m, &q, &f, true);
        let mut rec = Recorder::default();

        d.queue_notifiers()[0].post(None);
        d.process_queue(0, &mut rec);

        assert_ne!(d.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(status_at(&m, s), VIRTIO_BLK_S_IOERR);
        assert_eq!(file_bytes(&f, 0, 512), pattern(0, 512));
        assert_eq!(d.stats().read_only_refusals, 1);
        assert_eq!((rec.blocks[0].op, rec.blocks[0].bytes), (BlockOp::Write, 0));
    }

    #[test]
    fn malformed_requests_get_ioerr_or_are_consumed() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let past_end = push_request(
            &m,
            &q,
            0,
            VIRTIO_BLK_T_IN,
            SECTORS - 1,
            &[(0x4_0000, 1024, WRITE)],
        );
        let unknown = push_request(&m, &q, 3, 77, 0, &[]);
        // A chain whose last descriptor is device-readable: no status byte.
        let raw = [
            RawDescriptor::from(Descriptor::new(0x1_0000, 16, 1, 6)),
            RawDescriptor::from(Descriptor::new(0x6_0000, 1, 0, 0)),
        ];
        q.add_desc_chains(&raw, 5).unwrap();
        let mut d = activated(&m, &q, &f, false);
        let mut rec = Recorder::default();

        d.queue_notifiers()[0].post(None);
        let out = d.process_queue(0, &mut rec);

        assert_eq!(status_at(&m, past_end), VIRTIO_BLK_S_IOERR);
        assert_eq!(status_at(&m, unknown), VIRTIO_BLK_S_UNSUPP);
        assert_eq!((used(&q, 0), used(&q, 1), used(&q, 2)), ((0, 1), (3, 1), (5, 0)));
        assert_eq!((out.requests, out.malformed), (3, 2));
        let s = d.stats();
        assert_eq!((s.malformed, s.dropped, s.unsupported), (2, 1, 1));
    }

    #[test]
    fn charges_are_exact_per_tag() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        push_request(&m, &q, 0, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512, WRITE)]);
        push_request(&m, &q, 3, VIRTIO_BLK_T_OUT, 1, &[(0x4_0000, 1024, 0)]);
        let mut d = activated(&m, &q, &f, false);
        let mut rec = Recorder::default();
        d.queue_notifiers()[0].post(Some(1));
        d.process_queue(0, &mut rec);
        push_request(&m, &q, 6, VIRTIO_BLK_T_IN, 4, &[(0x4_0000, 2048, WRITE)]);
        d.queue_notifiers()[0].post(Some(2));

        d.process_queue(0, &mut rec);

        let got: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.op, c.bytes)).collect();
        let want = vec![
            (Some(1), BlockOp::Read, 512),
            (Some(1), BlockOp::Write, 1024),
            (Some(2), BlockOp::Read, 2048),
        ];
        assert_eq!(got, want);
        assert_eq!(rec.interrupts, vec![Some(1), Some(2)]);
        assert!(rec.blocks.iter().all(|c| c.status == VIRTIO_BLK_S_OK));
    }

    #[test]
    fn a_chain_published_after_the_notification_waits_for_its_own() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        push_request(&m, &q, 0, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512, WRITE)]);
        let mut d = activated(&m, &q, &f, false);
        let mut rec = Recorder::default();
        // Notified by tag 1 when one chain was published...
        d.queue_notifiers()[0].post_at(Some(1), Some(1));
        // ...then another principal publishes a second chain before the
        // device runs, and has not notified yet.
        push_request(&m, &q, 3, VIRTIO_BLK_T_OUT, 1, &[(0x4_0000, 512, 0)]);

        d.process_queue(0, &mut rec);
        assert_eq!(
            rec.blocks.iter().map(|c| c.tag).collect::<Vec<_>>(),
            vec![Some(1)]
        );

        d.queue_notifiers()[0].post_at(Some(2), Some(2));
        d.process_queue(0, &mut rec);
        let got: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.op)).collect();
        assert_eq!(got, vec![(Some(1), BlockOp::Read), (Some(2), BlockOp::Write)]);
    }

    #[test]
    fn config_space_reports_capacity_and_block_size() {
        let f = disk_file();
        let d = BlockDevice::new(f.as_file().try_clone().unwrap(), false, "x").unwrap();
        let (mut cap, mut bs) = ([0u8; 8], [0u8; 4]);

        assert!(d.read_config(0, &mut cap));
        assert!(d.read_config(20, &mut bs));
        assert!(!d.read_config(22, &mut bs));

        assert_eq!(u64::from_le_bytes(cap), SECTORS);
        assert_eq!(u32::from_le_bytes(bs), 512);
    }

    #[test]
    fn inactive_device_ignores_notifications() {
        let f = disk_file();
        let mut d = BlockDevice::new(f.as_file().try_clone().unwrap(), false, "x").unwrap();
        d.queue_notifiers()[0].post(Some(3));

        let out = d.process_queue(0, &mut Recorder::default());

        assert_eq!(out, ProcessStats::default());
        assert_eq!(d.stats().ignored_notifications, 1);
    }

    #[test]
    fn bogus_avail_index_is_refused_without_processing() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        q.avail().idx().store(100);
        let mut d = activated(&m, &q, &f, false);

        let out = d.process_queue(0, &mut Recorder::default());

        assert_eq!(out.requests, 0);
        assert_eq!(d.stats().queue_errors, 1);
    }

    /// Limit 0 for requests tagged `.0`, none for the rest.
    pub(crate) struct OneTag(pub(crate) u64);

    impl LimitLookup for OneTag {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(self.0)).then_some(0)
        }
    }

    pub(crate) fn ops_limit(size: u64, refill: Duration) -> Vec<BlockLimitConfig> {
        vec![BlockLimitConfig {
            path: "limited".into(),
            ops: Some(crate::virtio::limiter::BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: refill,
            }),
            bytes: None,
            drop: false,
        }]
    }

    #[test]
    fn a_limited_tag_is_held_beyond_its_bucket_and_others_pass_it() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let mut d = activated(&m, &q, &f, false);
        d.set_limits(&ops_limit(1, Duration::from_secs(3600)), Box::new(OneTag(7)))
            .unwrap();
        let mut rec = Recorder::default();
        // Tag 7 publishes 3 reads at once, then tag 8 two more.
        for at in [0u16, 3, 6] {
            push_request(&m, &q, at, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512, WRITE)]);
        }
        d.queue_notifiers()[0].post_at(Some(7), Some(3));
        for at in [9u16, 12] {
            push_request(&m, &q, at, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512, WRITE)]);
        }
        d.queue_notifiers()[0].post_at(Some(8), Some(5));

        let out = d.process_queue(0, &mut rec);

        // A bucket of 1 and 3 requests issued at once: exactly 3 - 1 held,
        // and tag 8's requests completed past them.
        assert_eq!(out.requests, 3);
        assert_eq!(d.throttled_now(), 2);
        assert_eq!(d.stats().throttled, 2);
        assert_eq!(q.used().idx().load(), 3);
        assert_eq!((used(&q, 0).0, used(&q, 1).0, used(&q, 2).0), (0, 9, 12));
        let tags: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.throttled)).collect();
        assert_eq!(tags, vec![(Some(7), false), (Some(8), false), (Some(8), false)]);
        // Nothing is due for an hour, and nothing is dropped meanwhile.
        assert!(d.next_release().unwrap() > Duration::from_secs(1000));
        assert_eq!(d.release_held(&mut rec).requests, 0);
        assert_eq!(d.throttled_now(), 2);
        // A reset drops the queues, and with them what was held on them.
        d.reset();
        assert_eq!((d.throttled_now(), d.next_release()), (0, None));
    }

    #[test]
    fn held_requests_complete_when_tokens_refill_charged_with_their_wait() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let mut d = activated(&m, &q, &f, false);
        d.set_limits(&ops_limit(1, Duration::from_millis(2)), Box::new(OneTag(7)))
            .unwrap();
        let mut rec = Recorder::default();
        for at in [0u16, 3, 6, 9] {
            push_request(&m, &q, at, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512, WRITE)]);
        }
        d.queue_notifiers()[0].post(Some(7));
        d.process_queue(0, &mut rec);
        assert_eq!(d.throttled_now(), 3);

        while let Some(wait) = d.next_release() {
            std::thread::sleep(wait);
            d.release_held(&mut rec);
        }

        // Every request completed once, in order, the held ones with their wait.
        assert_eq!(q.used().idx().load(), 4);
        let heads: Vec<_> = (0..4).map(|i| used(&q, i).0).collect();
        assert_eq!(heads, vec![0, 3, 6, 9]);
        let held: Vec<_> = rec.blocks.iter().map(|c| c.throttled).collect();
        assert_eq!(held, vec![false, true, true, true]);
        assert!(rec.blocks[1..]
            .iter()
            .all(|c| c.throttled_ns > 0 && c.status == VIRTIO_BLK_S_OK));
        assert_eq!(rec.blocks[0].throttled_ns, 0);
    }

    #[test]
    fn a_hostile_driver_cannot_make_the_device_hold_more_than_a_queue() {
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        let mut d = activated(&m, &q, &f, false);
        d.set_limits(&ops_limit(1, Duration::from_secs(3600)), Box::new(OneTag(7)))
            .unwrap();
        let mut rec = Recorder::default();
        // One chain at head 0, its head published again and again in the
        // avail ring (a driver may not do this; a hostile one can).
        push_request(&m, &q, 0, VIRTIO_BLK_T_FLUSH, 0, &[]);
        let mut published = 1u16;
        for round in 0..40u16 {
            for i in 0..8u16 {
                let slot = (published + i) % 16;
                q.avail().ring().ref_at(usize::from(slot)).unwrap().store(0);
            }
            published += 8;
            q.avail().idx().store(published);
            d.queue_notifiers()[0].post(Some(7));
            d.process_queue(0, &mut rec);
            assert!(d.throttled_now() <= 16, "round {round}: {}", d.throttled_now());
        }

        assert_eq!(d.throttled_now(), 16);
        assert!(d.stats().throttle_stalls > 0);
        assert_eq!(rec.blocks.len(), 1);
    }
}
