//! Event-loop wiring of the block device: the queues' notify `EventFd`s.
//!
//! The handler is an `event_manager::MutEventSubscriber`. It registers one
//! `EventFd` per queue (the data of each event is the queue index); when one
//! fires it drains it and asks the device to process that queue, charging
//! through the `Charger` it owns. Queue processing itself lives in
//! `device.rs`.

use std::sync::{Arc, Mutex};

use accounting::warn_rl;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::BlockDevice;
use crate::virtio::limit_timer::LimitTimer;
use crate::virtio::{Charger, QueueNotifier, VirtioDevice};

/// The block device's subscriber on the device event loop.
pub struct BlockHandler {
    device: Arc<Mutex<BlockDevice>>,
    notifiers: Vec<Arc<QueueNotifier>>,
    charger: Box<dyn Charger + Send>,
    spurious: u64,
    /// Fires when a request held by a per-container limit may go; only a
    /// device with limits has one (see [`BlockHandler::with_limits`]).
    timer: Option<LimitTimer>,
}

/// The event data of the release timer (queue indexes are below it).
const TIMER_DATA: u32 = u32::MAX;
/// The event data of the limits' live-change wake.
const WAKE_DATA: u32 = u32::MAX - 1;

impl std::fmt::Debug for BlockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHandler")
            .field("queues", &self.notifiers.len())
            .field("spurious", &self.spurious)
            .finish()
    }
}

impl BlockHandler {
    /// A subscriber for `device` (the same one the transport drives) that
    /// charges through `charger`.
    pub fn new(device: Arc<Mutex<BlockDevice>>, charger: Box<dyn Charger + Send>) -> Self {
        let notifiers = device.lock().unwrap_or_else(|e| e.into_inner()).queue_notifiers();
        Self {
            device,
            notifiers,
            charger,
            spurious: 0,
            timer: None,
        }
    }

    /// Like [`BlockHandler::new`], for a device that has limits
    /// ([`BlockDevice::set_limits`]): adds a non-blocking timerfd that
    /// releases held requests when their tokens are due.
    pub fn with_limits(
        device: Arc<Mutex<BlockDevice>>,
        charger: Box<dyn Charger + Send>,
    ) -> std::io::Result<Self> {
        let mut h = Self::new(device, charger);
        h.timer = Some(LimitTimer::new()?);
        Ok(h)
    }

    /// Arms the timer for the first held request, or disarms it.
    fn rearm(&mut self, device: &mut BlockDevice) {
        if let Some(timer) = self.timer.as_mut() {
            timer.arm(device.next_release(), "virtio-blk");
        }
    }

    /// A handle that wakes this handler after a live change of the limits
    /// (`None`: a device without limits).
    pub fn limit_waker(&self) -> Option<std::io::Result<vmm_sys_util::eventfd::EventFd>> {
        self.timer.as_ref().map(LimitTimer::waker)
    }

    /// Releases the held requests that are due, as if the timer had fired.
    pub fn handle_timer(&mut self) {
        if let Some(t) = self.timer.as_mut() {
            t.acknowledge();
        }
        let device = Arc::clone(&self.device);
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.release_held(self.charger.as_mut());
        self.rearm(&mut device);
    }

    /// Events that named no queue or carried no input.
    pub fn spurious(&self) -> u64 {
        self.spurious
    }

    /// Processes queue `index` as if its eventfd had fired.
    pub fn handle_queue(&mut self, index: usize) {
        let Some(n) = self.notifiers.get(index) else {
            self.spurious += 1;
            return;
        };
        // Non-blocking: EAGAIN when a previous batch already drained it.
        let _ = n.eventfd().read();
        let device = Arc::clone(&self.device);
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.process_queue(index, self.charger.as_mut());
        if self.timer.is_some() {
            self.rearm(&mut device);
        }
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, n) in (0u32..).zip(self.notifiers.iter()) {
            if let Err(e) = ops.add(Events::with_data(n.eventfd(), i, EventSet::IN)) {
                log::error!("virtio-blk: cannot register queue {i} eventfd: {e:?}");
            }
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(t, TIMER_DATA, EventSet::IN)) {
                log::error!("virtio-blk: cannot register the limit timer: {e:?}");
            }
            if let Err(e) = ops.add(Events::with_data(t.wake_fd(), WAKE_DATA, EventSet::IN)) {
                log::error!("virtio-blk: cannot register the limits' wake: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            self.spurious += 1;
            warn_rl!("virtio-blk: unexpected event set {:?}", events.event_set());
            return;
        }
        if events.data() == TIMER_DATA && self.timer.is_some() {
            self.handle_timer();
            return;
        }
        if events.data() == WAKE_DATA {
            if let Some(t) = self.timer.as_mut() {
                // A live change: release what it lets go, re-arm.
                t.acknowledge_wake();
                self.handle_timer();
                return;
            }
        }
        match usize::try_from(events.data()) {
            Ok(i) => self.handle_queue(i),
            Err(_) => self.spurious += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::device::tests::{disk_file, file_bytes, mem, push_request, used, Recorder, WRITE};
    use super::super::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use super::*;
    use crate::bus::Bus;
    use crate::virtio::mmio::set_current_tag;
    use crate::virtio::{status as st, BlockOp, MmioTransport, MMIO_LEN};
    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const BASE: u64 = 0xd000_0000;

    fn w(bus: &Bus, offset: u64, v: u64) {
        let v = u32::try_from(v).unwrap();
        bus.write(BASE + offset, &v.to_le_bytes()).unwrap();
    }

    fn r(bus: &Bus, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        bus.read(BASE + offset, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn event_loop_processes_a_notified_queue_and_charges_the_notifier() {
        // Arrange: a disk behind a transport on the MMIO bus, driven like a guest.
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0xcd; 512], GuestAddress(0x4_0000)).unwrap();
        let s_out = push_request(&m, &q, 0, VIRTIO_BLK_T_OUT, 3, &[(0x4_0000, 512, 0)]);
        let s_in = push_request(&m, &q, 3, VIRTIO_BLK_T_IN, 3, &[(0x5_0000, 512, WRITE)]);
        let device = Arc::new(Mutex::new(BlockDevice::open(f.as_path(), false, "x").unwrap()));
        let mut bus = Bus::new();
        let transport = MmioTransport::new(m.clone(), device.clone());
        bus.insert(Arc::new(Mutex::new(transport)), BASE, MMIO_LEN)
            .unwrap();
        w(&bus, 0x070, u64::from(st::ACKNOWLEDGE));
        w(&bus, 0x070, u64::from(st::ACKNOWLEDGE | st::DRIVER));
        w(&bus, 0x024, 1);
        w(&bus, 0x020, 1); // VIRTIO_F_VERSION_1
        w(
            &bus,
            0x070,
            u64::from(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK),
        );
        w(&bus, 0x030, 0);
        w(&bus, 0x038, 16);
        w(&bus, 0x080, q.desc_table_addr().0);
        w(&bus, 0x090, q.avail_addr().0);
        w(&bus, 0x0a0, q.used_addr().0);
        w(&bus, 0x044, 1);
        w(
            &bus,
            0x070,
            u64::from(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK),
        );
        assert_eq!(r(&bus, 0x070) & st::DRIVER_OK, st::DRIVER_OK);
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<BlockHandler>::new().unwrap();
        em.add_subscriber(BlockHandler::new(device.clone(), Box::new(recorder.clone())));

        // Act: vCPU with tag 9 notifies queue 0; the loop runs once.
        set_current_tag(Some(9));
        w(&bus, 0x050, 0);
        set_current_tag(None);
        let dispatched = em.run_with_timeout(1000).unwrap();

        // Assert
        assert_eq!(dispatched, 1);
        assert_eq!(q.used().idx().load(), 2);
        assert_eq!((used(&q, 0), used(&q, 1)), ((0, 1), (3, 513)));
        assert_eq!(file_bytes(&f, 3 * 512, 512), vec![0xcd; 512]);
        let mut read_back = [0u8; 512];
        m.read_slice(&mut read_back, GuestAddress(0x5_0000)).unwrap();
        assert_eq!(read_back, [0xcd; 512]);
        assert_eq!(m.read_obj::<u8>(s_out).unwrap(), VIRTIO_BLK_S_OK);
        assert_eq!(m.read_obj::<u8>(s_in).unwrap(), VIRTIO_BLK_S_OK);
        let rec = recorder.lock().unwrap();
        let got: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.op, c.bytes)).collect();
        assert_eq!(
            got,
            vec![(Some(9), BlockOp::Write, 512), (Some(9), BlockOp::Read, 512)]
        );
        assert_eq!(rec.interrupts, vec![Some(9)]);
        assert_eq!(r(&bus, 0x060), 1);
    }

    #[test]
    fn handler_ignores_events_for_unknown_queues() {
        let f = disk_file();
        let device = Arc::new(Mutex::new(BlockDevice::open(f.as_path(), true, "x").unwrap()));
        let mut h = BlockHandler::new(device, Box::new(Recorder::default()));

        h.handle_queue(5);

        assert_eq!(h.spurious(), 1);
    }

    #[test]
    fn the_limit_timer_releases_held_requests_on_the_event_loop() {
        use super::super::device::tests::{ops_limit, OneTag};
        use std::time::Duration;
        // Arrange: an activated disk whose tag 7 may do one request per 5 ms.
        let (m, f) = (mem(), disk_file());
        let q = MockSplitQueue::new(&m, 16);
        for at in [0u16, 3, 6] {
            push_request(&m, &q, at, VIRTIO_BLK_T_IN, 0, &[(0x5_0000, 512, WRITE)]);
        }
        let mut dev = BlockDevice::open(f.as_path(), false, "x").unwrap();
        dev.activate(m.clone(), vec![q.create_queue().unwrap()], 1 << 32)
            .unwrap();
        dev.set_limits(&ops_limit(1, Duration::from_millis(5)), Box::new(OneTag(7)))
            .unwrap();
        let device = Arc::new(Mutex::new(dev));
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<BlockHandler>::new().unwrap();
        em.add_subscriber(BlockHandler::with_limits(device.clone(), Box::new(recorder.clone())).unwrap());

        // Act: tag 7 notifies once; the loop runs until the timer let all go.
        device.lock().unwrap().queue_notifiers()[0].post(Some(7));
        let mut rounds = 0;
        while q.used().idx().load() < 3 {
            em.run_with_timeout(1000).unwrap();
            rounds += 1;
            assert!(rounds < 100, "the timer did not release the held requests");
        }

        // Assert: one passed at once, two were held and released by the timer.
        let rec = recorder.lock().unwrap();
        let held: Vec<_> = rec.blocks.iter().map(|c| (c.tag, c.throttled)).collect();
        assert_eq!(held, vec![(Some(7), false), (Some(7), true), (Some(7), true)]);
        assert_eq!(device.lock().unwrap().stats().throttled, 2);
        assert_eq!(device.lock().unwrap().next_release(), None);
        // Nothing is left armed: the loop now times out with nothing to do.
        assert_eq!(em.run_with_timeout(20).unwrap(), 0);
    }
}
