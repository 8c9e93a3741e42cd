//! Device work into the books: the VMM's implementation of the devices'
//! [`Charger`] over a ledger [`Writer`] of its own (the device thread's
//! column), so device charges never share a cache line with a vCPU's.

use accounting::ledger::Writer;
use accounting::resource::{BlockOp, BlockWork};
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

impl Charger for BooksCharger {
    fn charge_block(&mut self, c: &BlockCharge) {
        if let Some(w) = self.writer.as_mut() {
            let work = BlockWork {
                op: block_op(c.op),
                bytes: c.bytes,
                device_ns: c.device_ns,
                latency_ns: c.latency_ns,
                error: c.status != virtio::block::VIRTIO_BLK_S_OK,
            };
            w.charge_block(c.tag, &work);
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
    use accounting::abi::{tag, EntryKind, RingEntry};
    use accounting::ledger::Accounting;
    use accounting::registry::Limits;

    #[test]
    fn block_charges_reach_the_container_and_interrupts_only_when_delivered() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let mut e = RingEntry {
            kind: EntryKind::DeclareContainer as u16,
            id: 1,
            name_len: 2,
            ..Default::default()
        };
        e.name[..2].copy_from_slice(b"io");
        acct.apply(&e).unwrap();
        let mut polling = BooksCharger::new(Some(acct.writer(1)), false);
        let c = BlockCharge {
            tag: Some(tag(1, 0)),
            op: virtio::BlockOp::Write,
            bytes: 4096,
            device_ns: 5,
            latency_ns: 9,
            status: 0,
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
