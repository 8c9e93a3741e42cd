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
use crate::virtio::{Charger, QueueNotifier, VirtioDevice};

/// The block device's subscriber on the device event loop.
pub struct BlockHandler {
    device: Arc<Mutex<BlockDevice>>,
    notifiers: Vec<Arc<QueueNotifier>>,
    charger: Box<dyn Charger + Send>,
    spurious: u64,
}

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
        }
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
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        device.process_queue(index, self.charger.as_mut());
    }
}

impl MutEventSubscriber for BlockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, n) in (0u32..).zip(self.notifiers.iter()) {
            if let Err(e) = ops.add(Events::with_data(n.eventfd(), i, EventSet::IN)) {
                log::error!("virtio-blk: cannot register queue {i} eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            self.spurious += 1;
            warn_rl!("virtio-blk: unexpected event set {:?}", events.event_set());
            return;
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
}
