//! The virtio-mmio transport (virtio 1.2, 4.2.2), modern only: Version 2.
//!
//! The transport owns the registers: feature negotiation, the status state
//! machine, queue configuration. On DRIVER_OK it builds one
//! [`virtio_queue::Queue`] per queue, checks it against guest memory and hands
//! the set to the device ([`VirtioDevice::activate`]). It never processes a
//! queue: a `QueueNotify` write drops `(queue, tag)` into that queue's
//! [`QueueNotifier`] and wakes the device's event loop.
//!
//! # The current-tag contract
//!
//! [`Bus::write`](crate::Bus::write) carries no tag, and one transport is
//! shared by every vCPU. The vCPU thread therefore calls [`set_current_tag`]
//! with the exiting vCPU's tag before it calls `Bus::write`; the tag lives in
//! a thread-local, so two vCPUs notifying at once cannot see each other's.
//! [`MmioTransport::notify`] takes the tag explicitly for other callers.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard};

use accounting::warn_rl;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{status as st, QueueNotifier, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use super::{INTERRUPT_CONFIG, INTERRUPT_USED_RING};
use crate::bus::{BusDevice, VmAction};

/// Length of the MMIO window of one device (registers and config space).
pub const MMIO_LEN: u64 = 0x1000;
/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID reported to the guest.
pub const VENDOR_ID: u32 = 0;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

thread_local! {
    static CURRENT_TAG: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Sets the tag that this thread's next MMIO writes are made by. The vCPU
/// thread calls it with its vCPU's current tag before each `Bus::write`.
pub fn set_current_tag(tag: Option<u64>) {
    CURRENT_TAG.with(|c| c.set(tag));
}

/// The tag set by [`set_current_tag`] on this thread.
pub fn current_tag() -> Option<u64> {
    CURRENT_TAG.with(Cell::get)
}

/// Counters of what the guest did to the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioStats {
    /// Wrong size, unknown offset, write to a read-only register, write in
    /// the wrong state, queue index out of range, bad value.
    pub bad_accesses: u64,
    /// FEATURES_OK refused (features not offered, or no VERSION_1).
    pub refused_features: u64,
    /// Activations that failed (invalid queue, device refused).
    pub failed_activations: u64,
    /// Activations.
    pub activations: u64,
    /// Resets (status 0).
    pub resets: u64,
    /// Queue notifications posted.
    pub notifications: u64,
}

crate::counters::named_counters!(MmioStats {
    bad_accesses,
    refused_features,
    failed_activations,
    activations,
    resets,
    notifications,
});

/// The low 32 bits of `v`.
#[allow(clippy::cast_possible_truncation)]
fn low32(v: u64) -> u32 {
    v as u32
}

/// The driver's configuration of one queue, as written to the registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QueueConfig {
    max: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            ..Self::default()
        }
    }

    /// The `Queue` this configuration describes, if the driver's values fit.
    fn build(&self) -> Option<Queue> {
        let mut q = Queue::new(self.max).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.driver)).ok()?;
        q.try_set_used_ring_address(GuestAddress(self.device)).ok()?;
        q.set_ready(self.ready);
        Some(q)
    }

    /// Whether the rings lie in guest memory. Checked before `is_valid` so
    /// that a hostile guest cannot make virtio-queue log without a limit.
    fn in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        let n = usize::from(self.size);
        let fits = |addr: u64, len: usize, p| mem.check_range(GuestAddress(addr), len, p);
        fits(self.desc, 16 * n, Permissions::Read)
            && fits(self.driver, 6 + 2 * n, Permissions::Read)
            && fits(self.device, 6 + 8 * n, Permissions::Write)
    }
}

/// Whether the device has been handed its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransportState {
    Inactive,
    Activated,
}

/// A virtio-mmio transport in front of device `D`.
pub struct MmioTransport<D: VirtioDevice> {
    device: Arc<Mutex<D>>,
    mem: GuestMemoryMmap,
    device_type: u32,
    avail_features: u64,
    notifiers: Vec<Arc<QueueNotifier>>,
    interrupt: Arc<VirtioInterrupt>,
    state: TransportState,
    status: u32,
    features_sel: u32,
    acked_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    /// Always 0: no device here changes its configuration at run time yet.
    config_generation: u32,
    stats: MmioStats,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("state", &self.state)
            .field("status", &self.status)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device` over guest memory `mem`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<D>>) -> Self {
        let (device_type, avail_features, queues, notifiers, interrupt) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            let queues = d.queue_max_sizes().iter().map(|&m| QueueConfig::new(m)).collect();
            (
                d.device_type(),
                d.avail_features(),
                queues,
                d.queue_notifiers(),
                d.interrupt(),
            )
        };
        Self {
            device,
            mem,
            device_type,
            avail_features,
            notifiers,
            interrupt,
            state: TransportState::Inactive,
            status: 0,
            features_sel: 0,
            acked_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            stats: MmioStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> MmioStats {
        self.stats
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device has its queues.
    pub fn is_activated(&self) -> bool {
        self.state == TransportState::Activated
    }

    /// Posts a notification of `queue` made by `tag` and wakes the device.
    pub fn notify(&mut self, queue: u16, tag: Option<u64>) {
        if self.state != TransportState::Activated {
            return self.bad("QueueNotify before DRIVER_OK", u64::from(queue));
        }
        match self.notifiers.get(usize::from(queue)) {
            Some(n) => {
                // How far the driver has published: the chains this
                // notification covers (the avail ring's `idx` at offset 2).
                let avail_idx = self
                    .queues
                    .get(usize::from(queue))
                    .and_then(|q| q.driver.checked_add(2))
                    .and_then(|a| self.mem.read_obj::<u16>(GuestAddress(a)).ok())
                    .map(u16::from_le);
                n.post_at(tag, avail_idx);
                self.stats.notifications += 1;
            }
            None => self.bad("QueueNotify of a queue out of range", u64::from(queue)),
        }
    }

    fn lock_device(&self) -> MutexGuard<'_, D> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bad(&mut self, what: &str, value: u64) {
        self.stats.bad_accesses += 1;
        warn_rl!("virtio-mmio (type {}): {what} ({value:#x})", self.device_type);
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        let sel = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(sel)
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
            && self.acked_features & !self.avail_features == 0
    }

    fn reset(&mut self) {
        if self.state == TransportState::Activated {
            self.lock_device().reset();
        }
        self.state = TransportState::Inactive;
        self.status = 0;
        self.features_sel = 0;
        self.acked_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max);
        }
        for n in &self.notifiers {
            n.take();
        }
        self.interrupt.clear();
        self.stats.resets += 1;
    }

    fn activate(&mut self) -> bool {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            let q = cfg.build();
            let valid =
                !cfg.ready || (cfg.in_memory(&self.mem) && q.as_ref().is_some_and(|q| q.is_valid(&self.mem)));
            match q {
                Some(q) if valid => queues.push(q),
                _ => {
                    warn_rl!("virtio-mmio (type {}): queue {i} is invalid", self.device_type);
                    return false;
                }
            }
        }
        let mem = self.mem.clone();
        let acked = self.acked_features;
        match self.lock_device().activate(mem, queues, acked) {
            Ok(()) => true,
            Err(e) => {
                warn_rl!("virtio-mmio (type {}): activation refused: {e}", self.device_type);
                false
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        const ACK: u32 = st::ACKNOWLEDGE;
        const ACK_DRV: u32 = ACK | st::DRIVER;
        const FEAT: u32 = ACK_DRV | st::FEATURES_OK;
        if v == 0 {
            return self.reset();
        }
        if v & st::FAILED != 0 && v & !st::FAILED == self.status & !st::FAILED {
            self.status |= st::FAILED;
            return;
        }
        match (self.status, v) {
            (0, ACK) | (ACK, ACK_DRV) => self.status = v,
            (ACK_DRV, FEAT) => {
                if self.features_acceptable() {
                    self.status = v;
                } else {
                    self.stats.refused_features += 1;
                    warn_rl!(
                        "virtio-mmio (type {}): features {:#x} refused (offered {:#x})",
                        self.device_type,
                        self.acked_features,
                        self.avail_features
                    );
                }
            }
            (FEAT, x) if x == FEAT | st::DRIVER_OK => {
                if self.activate() {
                    self.state = TransportState::Activated;
                    self.status = v;
                    self.stats.activations += 1;
                } else {
                    self.stats.failed_activations += 1;
                    self.status |= st::DEVICE_NEEDS_RESET;
                    if let Err(e) = self.interrupt.trigger(INTERRUPT_CONFIG) {
                        warn_rl!("virtio-mmio: irqfd write failed: {e}");
                    }
                }
            }
            (cur, _) => self.bad("status transition refused", u64::from(cur) << 32 | u64::from(v)),
        }
    }

    /// Queue registers may be written after FEATURES_OK and before DRIVER_OK.
    fn queue_writable(&self) -> bool {
        self.status & (st::FEATURES_OK | st::DRIVER_OK | st::FAILED | st::DEVICE_NEEDS_RESET)
            == st::FEATURES_OK
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_writable() {
            return self.bad("queue register written in the wrong state", offset);
        }
        let Some(q) = self.selected() else {
            return self.bad("queue register of a queue out of range", offset);
        };
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            0x038 => match u16::try_from(v) {
                Ok(n) if n != 0 && n <= q.max && n.is_power_of_two() => q.size = n,
                _ => self.bad("QueueNum not a power of two up to QueueNumMax", u64::from(v)),
            },
            0x044 => q.ready = v == 1,
            0x080 => q.desc = lo(q.desc),
            0x084 => q.desc = hi(q.desc),
            0x090 => q.driver = lo(q.driver),
            0x094 => q.driver = hi(q.driver),
            0x0a0 => q.device = lo(q.device),
            0x0a4 => q.device = hi(q.device),
            _ => self.bad("write to an unknown queue register", offset),
        }
    }

    fn read_reg(&mut self, offset: u64) -> Option<u32> {
        let q = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i));
        let v = match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.device_type,
            0x00c => VENDOR_ID,
            0x010 => match self.features_sel {
                0 => low32(self.avail_features),
                1 => low32(self.avail_features >> 32),
                _ => 0,
            },
            0x034 => q.map_or(0, |q| u32::from(q.max)),
            0x044 => q.map_or(0, |q| u32::from(q.ready)),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => return None,
        };
        Some(v)
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.features_sel = v,
            0x020 => {
                if self.status != st::ACKNOWLEDGE | st::DRIVER {
                    return self.bad("DriverFeatures written in the wrong state", u64::from(v));
                }
                match self.acked_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
                    s => self.bad("DriverFeaturesSel out of range", u64::from(s)),
                }
            }
            0x024 => self.acked_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 | 0x044 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => self.write_queue_reg(offset, v),
            0x050 => match u16::try_from(v) {
                Ok(q) => self.notify(q, current_tag()),
                Err(_) => self.bad("QueueNotify of a queue out of range", u64::from(v)),
            },
            0x064 => self.interrupt.ack(v & (INTERRUPT_USED_RING | INTERRUPT_CONFIG)),
            0x070 => self.set_status(v),
            _ => self.bad("write to an unknown or read-only register", offset),
        }
    }
}

impl<D: VirtioDevice + 'static> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            if !matches!(data.len(), 1 | 2 | 4 | 8)
                || !self.lock_device().read_config(offset - CONFIG_OFFSET, data)
            {
                data.fill(0);
                self.bad("config read out of range or of a bad size", offset);
            }
            return;
        }
        match (data.len(), self.read_reg(offset)) {
            (4, Some(v)) => data.copy_from_slice(&v.to_le_bytes()),
            _ => {
                data.fill(0);
                self.bad(
                    "read of a bad size or at an unknown or write-only register",
                    offset,
                );
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        if offset >= CONFIG_OFFSET {
            let allowed = self.status & st::DRIVER != 0 && self.status & st::FAILED == 0;
            if !allowed
                || !matches!(data.len(), 1 | 2 | 4 | 8)
                || !self.lock_device().write_config(offset - CONFIG_OFFSET, data)
            {
                self.bad("config write refused", offset);
            }
            return None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) => self.write_reg(offset, u32::from_le_bytes(b)),
            Err(_) => self.bad("register write of a bad size", offset),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActivateError, VirtioBase};

    const FEATURE_X: u64 = 1;

    struct Dummy {
        config: [u8; 8],
        activated: Option<(usize, u64)>,
        resets: u32,
        base: VirtioBase,
    }

    impl Dummy {
        fn new() -> Self {
            Self {
                config: [1, 2, 3, 4, 5, 6, 7, 8],
                activated: None,
                resets: 0,
                base: VirtioBase::new((1 << VIRTIO_F_VERSION_1) | FEATURE_X, &[16, 16]).unwrap(),
            }
        }
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("resets", u64::from(self.resets))]
        }
        fn base(&self) -> &VirtioBase {
            &self.base
        }
        fn base_mut(&mut self) -> &mut VirtioBase {
            &mut self.base
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
            let Some(src) = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o..o + data.len()))
            else {
                return false;
            };
            data.copy_from_slice(src);
            true
        }
        // Records instead of activating, so the tests see what the
        // transport passed.
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            queues: Vec<Queue>,
            acked: u64,
        ) -> Result<(), ActivateError> {
            self.activated = Some((queues.len(), acked));
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
    }

    fn transport() -> (MmioTransport<Dummy>, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::new()));
        (MmioTransport::new(mem, dev.clone()), dev)
    }

    fn r(t: &mut MmioTransport<Dummy>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<Dummy>, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, accept `features`, then ask for FEATURES_OK.
    fn negotiate(t: &mut MmioTransport<Dummy>, features: u64) {
        w(t, 0x070, st::ACKNOWLEDGE);
        w(t, 0x070, st::ACKNOWLEDGE | st::DRIVER);
        w(t, 0x024, 0);
        w(t, 0x020, low32(features));
        w(t, 0x024, 1);
        w(t, 0x020, low32(features >> 32));
        w(t, 0x070, st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK);
    }

    /// Queue `i` of size 16 at `base` (desc, then avail, then used).
    fn setup_queue(t: &mut MmioTransport<Dummy>, i: u32, base: u32) {
        w(t, 0x030, i);
        w(t, 0x038, 16);
        w(t, 0x080, base);
        w(t, 0x084, 0);
        w(t, 0x090, base + 0x100);
        w(t, 0x0a0, base + 0x200);
        w(t, 0x044, 1);
    }

    fn activate(t: &mut MmioTransport<Dummy>) {
        negotiate(t, (1 << VIRTIO_F_VERSION_1) | FEATURE_X);
        setup_queue(t, 0, 0x1000);
        setup_queue(t, 1, 0x2000);
        w(
            t,
            0x070,
            st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
        );
    }

    #[test]
    fn identification_registers_read_back() {
        let (mut t, _) = transport();

        assert_eq!(r(&mut t, 0x000), MAGIC);
        assert_eq!(r(&mut t, 0x004), 2);
        assert_eq!(r(&mut t, 0x008), 42);
        assert_eq!(r(&mut t, 0x034), 16);
        w(&mut t, 0x014, 1);
        assert_eq!(r(&mut t, 0x010), 1);
        w(&mut t, 0x014, 0);
        assert_eq!(r(&mut t, 0x010), low32(FEATURE_X));
        assert_eq!(t.stats().bad_accesses, 0);
    }

    #[test]
    fn features_offered_with_version_1_are_accepted() {
        let (mut t, _) = transport();

        negotiate(&mut t, (1 << VIRTIO_F_VERSION_1) | FEATURE_X);

        assert_eq!(r(&mut t, 0x070) & st::FEATURES_OK, st::FEATURES_OK);
        assert_eq!(t.acked_features(), (1 << VIRTIO_F_VERSION_1) | FEATURE_X);
        assert_eq!(t.stats().refused_features, 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, _) = transport();

        negotiate(&mut t, FEATURE_X);

        assert_eq!(r(&mut t, 0x070) & st::FEATURES_OK, 0);
        assert_eq!(t.stats().refused_features, 1);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, _) = transport();

        negotiate(&mut t, (1 << VIRTIO_F_VERSION_1) | (1 << 5));

        assert_eq!(r(&mut t, 0x070) & st::FEATURES_OK, 0);
        assert_eq!(t.stats().refused_features, 1);
    }

    #[test]
    fn status_out_of_order_is_refused_and_counted() {
        let (mut t, _) = transport();

        w(&mut t, 0x070, st::ACKNOWLEDGE | st::DRIVER);
        w(&mut t, 0x070, st::ACKNOWLEDGE | st::DRIVER_OK);

        assert_eq!(t.status(), 0);
        assert_eq!(t.stats().bad_accesses, 2);
    }

    #[test]
    fn failed_is_accepted_in_any_state() {
        let (mut t, _) = transport();
        w(&mut t, 0x070, st::ACKNOWLEDGE);

        w(&mut t, 0x070, st::ACKNOWLEDGE | st::FAILED);

        assert_eq!(t.status(), st::ACKNOWLEDGE | st::FAILED);
    }

    #[test]
    fn driver_ok_activates_with_the_configured_queues() {
        let (mut t, dev) = transport();

        activate(&mut t);

        assert!(t.is_activated());
        assert_eq!(r(&mut t, 0x070) & st::DRIVER_OK, st::DRIVER_OK);
        let acked = (1 << VIRTIO_F_VERSION_1) | FEATURE_X;
        assert_eq!(dev.lock().unwrap().activated, Some((2, acked)));
        assert_eq!(t.stats().activations, 1);
    }

    #[test]
    fn queue_outside_memory_fails_activation_with_needs_reset() {
        let (mut t, dev) = transport();
        negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0xfff_f000);

        w(
            &mut t,
            0x070,
            st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
        );

        assert!(!t.is_activated());
        assert_eq!(t.status() & st::DEVICE_NEEDS_RESET, st::DEVICE_NEEDS_RESET);
        assert_eq!(t.stats().failed_activations, 1);
        assert!(dev.lock().unwrap().activated.is_none());
    }

    #[test]
    fn status_zero_resets_device_and_registers() {
        let (mut t, dev) = transport();
        activate(&mut t);

        w(&mut t, 0x070, 0);

        assert!(!t.is_activated());
        assert_eq!(t.status(), 0);
        assert_eq!(t.acked_features(), 0);
        assert_eq!(r(&mut t, 0x044), 0);
        let d = dev.lock().unwrap();
        assert_eq!((d.activated, d.resets), (None, 1));
    }

    #[test]
    fn queue_writes_before_features_ok_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, 0x070, st::ACKNOWLEDGE);

        w(&mut t, 0x038, 8);
        w(&mut t, 0x044, 1);

        assert_eq!(r(&mut t, 0x044), 0);
        assert_eq!(t.stats().bad_accesses, 2);
    }

    #[test]
    fn bad_accesses_are_counted_not_fatal() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
        let mut two = [0u8; 2];

        t.read(0x000, &mut two); // wrong size
        t.read(0x080, &mut [0u8; 4]); // write-only register
        w(&mut t, 0x000, 1); // read-only register
        w(&mut t, 0x0f0, 1); // unknown register
        t.write(0x070, &[1, 0]); // wrong size
        w(&mut t, 0x030, 7); // select a queue out of range: fine ...
        w(&mut t, 0x038, 8); // ... but configuring it is not
        w(&mut t, 0x030, 0);
        w(&mut t, 0x038, 12); // not a power of two
        w(&mut t, 0x038, 32); // above QueueNumMax
        t.read(0x100 + 6, &mut [0u8; 4]); // config past its end
        t.write(0x100, &[0u8; 4]); // read-only config
        w(&mut t, 0x050, 0); // notify before DRIVER_OK

        assert_eq!(two, [0, 0]);
        assert_eq!(t.stats().bad_accesses, 11);
    }

    #[test]
    fn config_space_reads_through_the_device() {
        let (mut t, _) = transport();
        let mut b = [0u8; 2];

        t.read(0x100 + 2, &mut b);

        assert_eq!(b, [3, 4]);
    }

    #[test]
    fn queue_notify_records_the_current_tag_and_signals_the_eventfd() {
        let (mut t, dev) = transport();
        activate(&mut t);
        let notifier = dev.lock().unwrap().base.notifiers[1].clone();

        set_current_tag(Some(77));
        w(&mut t, 0x050, 1);
        set_current_tag(None);

        assert_eq!(notifier.eventfd().read().unwrap(), 1);
        let n = notifier.take().unwrap();
        assert_eq!((n.tag, n.count), (Some(77), 1));
        assert_eq!(t.stats().notifications, 1);
    }

    #[test]
    fn queue_notify_out_of_range_is_counted() {
        let (mut t, _) = transport();
        activate(&mut t);

        w(&mut t, 0x050, 2);
        w(&mut t, 0x050, 0x1_0000);

        assert_eq!(t.stats().bad_accesses, 2);
        assert_eq!(t.stats().notifications, 0);
    }

    #[test]
    fn interrupt_ack_clears_status_bits() {
        let (mut t, dev) = transport();
        activate(&mut t);
        dev.lock()
            .unwrap()
            .base
            .interrupt
            .trigger(INTERRUPT_USED_RING)
            .unwrap();
        assert_eq!(r(&mut t, 0x060), INTERRUPT_USED_RING);

        w(&mut t, 0x064, INTERRUPT_USED_RING);

        assert_eq!(r(&mut t, 0x060), 0);
    }
}
