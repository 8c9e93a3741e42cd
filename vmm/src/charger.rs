//! Device work into the books: the VMM's implementation of the devices'
//! [`Charger`] over a ledger [`Writer`] of its own (the device thread's
//! column), so device charges never share a cache line with a vCPU's.

use accounting::ledger::Writer;
use accounting::resource::{BlockOp, BlockWork, NetCharge, VsockCharge};
use devices::virtio::{self, BlockCharge, Charger};

/// Charges device work to the principals the devices name.
pub struct BooksCharger {
    writer: Option<Writer>,
    interrupts_delivered: bool,
}

impl BooksCharger {
    /// Charges through `writer` (`None`: accounting off, nothing charged).
    /// Interrupts are charged only when `interrupts_delivered`: without an
    /// in-kernel irqchip nothing reaches the guest (bare-metal guests poll).
    pub fn new(writer: Option<Writer>, interrupts_delivered: bool) -> Self {
        Self {
            writer,
            interrupts_delivered,
        }
    }
}

/// The books' kind of a device's block operation.
pub fn block_op(op: virtio::BlockOp) -> BlockOp {
    match op {
        virtio::BlockOp::Read => BlockOp::Read,
        virtio::BlockOp::Write => BlockOp::Write,
        virtio::BlockOp::Flush => BlockOp::Flush,
        virtio::BlockOp::GetId | virtio::BlockOp::Unsupported => BlockOp::Other,
    }
}

/// The books' form of one frame's network work.
pub fn net_work(c: &virtio::NetCharge) -> NetCharge {
    let (tx, rx, dropped) = match c.dir {
        virtio::NetDir::Tx => ((c.frames, c.bytes), (0, 0), (0, 0)),
        virtio::NetDir::Rx if c.dropped => ((0, 0), (0, 0), (c.frames, c.bytes)),
        virtio::NetDir::Rx => ((0, 0), (c.frames, c.bytes), (0, 0)),
    };
    NetCharge {
        tx_frames: tx.0,
        tx_bytes: tx.1,
        rx_frames: rx.0,
        rx_bytes: rx.1,
        host_ns: c.host_ns,
        retransmitted_bytes: c.retransmitted_bytes,
        spoofed_frames: if c.spoofed { c.frames.max(1) } else { 0 },
        throttle_events: u64::from(c.throttled_ns.is_some()),
        throttled_ns: c.throttled_ns.unwrap_or(0),
        rx_dropped_frames: dropped.0,
        rx_dropped_bytes: dropped.1,
    }
}

/// The books' form of one vsock packet's work.
pub fn vsock_work(c: &virtio::VsockCharge) -> VsockCharge {
    let (tx, rx) = match c.dir {
        virtio::NetDir::Tx => ((c.packets, c.bytes), (0, 0)),
        virtio::NetDir::Rx => ((0, 0), (c.packets, c.bytes)),
    };
    VsockCharge {
        tx_packets: tx.0,
        tx_bytes: tx.1,
        rx_packets: rx.0,
        rx_bytes: rx.1,
        host_ns: c.host_ns,
        connections: c.connections,
        resets: c.resets,
        throttle_events: c.throttle_events,
        throttled_ns: c.throttled_ns,
    }
}

impl Charger for BooksCharger {
    fn charge_block(&mut self, c: &BlockCharge) {
        if let Some(w) = self.writer.as_mut() {
            let work = BlockWork {
                op: block_op(c.op),
                bytes: c.bytes,
                device_ns: c.device_ns,
                latency_ns: c.latency_ns,
                error: c.status != virtio::block::VIRTIO_BLK_S_OK,
                throttled_ns: c.throttled.then_some(c.throttled_ns),
            };
            w.charge_block(c.tag, &work);
        }
    }

    fn charge_net(&mut self, c: &virtio::NetCharge) {
        if let Some(w) = self.writer.as_mut() {
            w.charge_net(c.tag, &net_work(c));
        }
    }

    fn charge_vsock(&mut self, c: &virtio::VsockCharge) {
        if let Some(w) = self.writer.as_mut() {
            w.charge_vsock(c.tag, &vsock_work(c));
        }
    }

    fn charge_interrupt(&mut self, tag: Option<u64>) {
        if let (Some(w), true) = (self.writer.as_mut(), self.interrupts_delivered) {
            w.charge_interrupt(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_charges_map_by_direction_and_count_spoofing() {
        let tx = virtio::NetCharge {
            tag: None,
            dir: virtio::NetDir::Tx,
            frames: 1,
            bytes: 142,
            host_ns: 5,
            wall_ns: 9,
            retransmitted_bytes: 100,
            spoofed: false,
            attributed_by_flow: false,
            throttled_ns: None,
            dropped: false,
        };
        let w = net_work(&tx);
        assert_eq!(
            (
                w.tx_frames,
                w.tx_bytes,
                w.rx_frames,
                w.retransmitted_bytes,
                w.spoofed_frames
            ),
            (1, 142, 0, 100, 0)
        );
        let rx = virtio::NetCharge {
            dir: virtio::NetDir::Rx,
            spoofed: false,
            ..tx
        };
        assert_eq!(
            (
                net_work(&rx).rx_frames,
                net_work(&rx).rx_bytes,
                net_work(&rx).tx_frames
            ),
            (1, 142, 0)
        );
        assert_eq!(
            net_work(&virtio::NetCharge { spoofed: true, ..tx }).spoofed_frames,
            1
        );
        assert_eq!((w.throttle_events, w.throttled_ns), (0, 0));
        let held = net_work(&virtio::NetCharge {
            throttled_ns: Some(7),
            ..tx
        });
        assert_eq!(
            (held.throttle_events, held.throttled_ns, held.tx_frames),
            (1, 7, 1)
        );
        assert_eq!((net_work(&rx).rx_dropped_frames, w.rx_dropped_frames), (0, 0));
        // A received frame a net-rx-drop limit dropped: not delivered.
        let dropped = net_work(&virtio::NetCharge { dropped: true, ..rx });
        assert_eq!(
            (
                dropped.rx_dropped_frames,
                dropped.rx_dropped_bytes,
                dropped.rx_frames,
                dropped.rx_bytes,
                dropped.host_ns
            ),
            (1, 142, 0, 0, 5)
        );
    }
    use accounting::abi::{tag, EntryKind, RingEntry};
    use accounting::ledger::Accounting;
    use accounting::registry::Limits;

    #[test]
    fn block_charges_reach_the_container_and_interrupts_only_when_delivered() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let e = RingEntry::new(EntryKind::DeclareContainer, 1, 0, 0, b"io");
        acct.apply(&e).unwrap();
        let mut polling = BooksCharger::new(Some(acct.writer(1)), false);
        let c = BlockCharge {
            tag: Some(tag(1, 0)),
            op: virtio::BlockOp::Write,
            bytes: 4096,
            device_ns: 5,
            latency_ns: 9,
            status: 0,
            throttled: false,
            throttled_ns: 0,
        };
        polling.charge_block(&c);
        polling.charge_block(&BlockCharge {
            op: virtio::BlockOp::GetId,
            bytes: 20,
            status: 1,
            ..c
        });
        polling.charge_interrupt(Some(tag(1, 0)));
        let reg = acct.registry();
        let io = reg.containers()[1].cells.sum();
        assert_eq!(
            (
                io.block.writes,
                io.block.other,
                io.block.errors,
                io.block.bytes_written
            ),
            (1, 1, 1, 4096)
        );
        assert_eq!(io.block.bytes_read, 0);
        assert_eq!(io.interrupts, 0);
        drop(reg);
        BooksCharger::new(Some(acct.writer(1)), true).charge_interrupt(Some(tag(1, 0)));
        assert_eq!(acct.registry().containers()[1].cells.sum().interrupts, 1);
    }
}
