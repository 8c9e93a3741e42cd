//! The flow table: which principal owns a flow, and how far it has sent.
//!
//! Learned from TX frames: a flow `A:x → B:y` sent under tag `t` maps to
//! `t`, so that a received frame `B:y → A:x` can be charged to `t`. For TCP
//! the table also keeps the highest sequence end sent, which tells
//! retransmitted bytes apart. The table is bounded ([`MAX_FLOWS`]); a new
//! flow beyond it evicts the least recently used one (counted), so a guest
//! opening flows in a loop grows nothing.

use std::collections::{BTreeMap, HashMap};

use super::frame::{FiveTuple, TcpSegment};

/// Flows the guest agent bound to a principal (`bind_flow` in
/// docs/agent-protocol.md), kept outside the device by the VMM.
pub trait FlowBindings: Send + Sync {
    /// The tag of the principal bound to `flow`, as sent by the guest
    /// (source = the guest's address).
    fn bound(&self, flow: &FiveTuple) -> Option<u64>;
}

/// Most flows the table holds.
pub const MAX_FLOWS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: Option<u64>,
    /// Highest `seq + payload_len` sent (TCP only).
    seq_end: Option<u32>,
    /// Position in the LRU order.
    stamp: u64,
}

/// `a` comes strictly after `b` in 32-bit sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000_0000
}

/// A bounded LRU map from 5-tuple to tag and TCP send state.
#[derive(Debug)]
pub struct FlowTable {
    flows: HashMap<FiveTuple, Entry>,
    lru: BTreeMap<u64, FiveTuple>,
    next_stamp: u64,
    capacity: usize,
    evictions: u64,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::with_capacity(MAX_FLOWS)
    }
}

impl FlowTable {
    /// A table of at most `capacity` flows (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            flows: HashMap::new(),
            lru: BTreeMap::new(),
            next_stamp: 0,
            capacity: capacity.max(1),
            evictions: 0,
        }
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows evicted to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// Records a TX frame of `flow` sent under `tag` and returns the bytes of
    /// `tcp` that had already been sent (retransmitted). A known flow keeps
    /// its tag when `tag` is `None`.
    pub fn on_tx(&mut self, flow: FiveTuple, tag: Option<u64>, tcp: Option<TcpSegment>) -> u64 {
        let stamp = self.stamp();
        if let Some(e) = self.flows.get_mut(&flow) {
            self.lru.remove(&e.stamp);
            e.stamp = stamp;
            if tag.is_some() {
                e.tag = tag;
            }
            let retransmitted = match (tcp, e.seq_end) {
                (Some(seg), Some(end)) => {
                    let (retransmitted, new_end) = retransmission(seg, end);
                    e.seq_end = Some(new_end);
                    retransmitted
                }
                (Some(seg), None) => {
                    e.seq_end = Some(seg.seq.wrapping_add(seg.payload_len));
                    0
                }
                (None, _) => 0,
            };
            self.lru.insert(stamp, flow);
            return retransmitted;
        }
        if self.flows.len() >= self.capacity {
            if let Some((_, old)) = self.lru.pop_first() {
                self.flows.remove(&old);
                self.evictions += 1;
            }
        }
        let entry = Entry {
            tag,
            seq_end: tcp.map(|s| s.seq.wrapping_add(s.payload_len)),
            stamp,
        };
        self.flows.insert(flow, entry);
        self.lru.insert(stamp, flow);
        0
    }

    /// The tag of the flow a received frame of `flow` answers (the TX flow
    /// with the reversed tuple), if one was learned with a tag.
    pub fn owner_of_reply(&mut self, flow: &FiveTuple) -> Option<u64> {
        let stamp = self.stamp();
        let e = self.flows.get_mut(&flow.reversed())?;
        self.lru.remove(&e.stamp);
        e.stamp = stamp;
        self.lru.insert(stamp, flow.reversed());
        e.tag
    }
}

/// Given the highest sequence end sent so far, the bytes of `seg` sent
/// before and the new highest end.
fn retransmission(seg: TcpSegment, end: u32) -> (u64, u32) {
    if seg.payload_len == 0 {
        return (0, if seq_after(seg.seq, end) { seg.seq } else { end });
    }
    let seg_end = seg.seq.wrapping_add(seg.payload_len);
    if !seq_after(seg_end, end) {
        // Wholly at or below what was sent.
        (u64::from(seg.payload_len), end)
    } else if seq_after(end, seg.seq) {
        // Starts below, ends beyond: the overlap was sent before.
        (u64::from(end.wrapping_sub(seg.seq)), seg_end)
    } else {
        (0, seg_end)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::tcp;
    use super::*;

    fn seg(seq: u32, payload_len: u32) -> Option<TcpSegment> {
        Some(TcpSegment { seq, payload_len })
    }

    #[test]
    fn replies_are_charged_to_the_sender_of_the_flow() {
        let mut t = FlowTable::default();
        let f = tcp([10, 0, 0, 2], 4000, [10, 0, 0, 1], 80);

        t.on_tx(f, Some(7), seg(0, 10));

        assert_eq!(t.owner_of_reply(&f.reversed()), Some(7));
        assert_eq!(t.owner_of_reply(&f), None);
        t.on_tx(f, None, None);
        assert_eq!(t.owner_of_reply(&f.reversed()), Some(7));
    }

    #[test]
    fn retransmissions_count_full_and_partial_overlap() {
        let mut t = FlowTable::default();
        let f = tcp([10, 0, 0, 2], 4000, [10, 0, 0, 1], 80);

        assert_eq!(t.on_tx(f, Some(1), seg(1000, 100)), 0); // 1000..1100
        assert_eq!(t.on_tx(f, Some(1), seg(1100, 100)), 0); // 1100..1200
        assert_eq!(t.on_tx(f, Some(1), seg(1000, 100)), 100); // full
        assert_eq!(t.on_tx(f, Some(1), seg(1150, 100)), 50); // partial, end 1250
        assert_eq!(t.on_tx(f, Some(1), seg(1250, 0)), 0); // pure ACK
        assert_eq!(t.on_tx(f, Some(1), seg(1200, 50)), 50);
        assert_eq!(t.on_tx(f, Some(1), seg(1250, 10)), 0);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut t = FlowTable::default();
        let f = tcp([10, 0, 0, 2], 4000, [10, 0, 0, 1], 80);

        assert_eq!(t.on_tx(f, Some(1), seg(u32::MAX - 49, 100)), 0); // end 50
        assert_eq!(t.on_tx(f, Some(1), seg(u32::MAX - 9, 20)), 20);
        assert_eq!(t.on_tx(f, Some(1), seg(40, 20)), 10);
        assert_eq!(t.on_tx(f, Some(1), seg(60, 5)), 0);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let mut t = FlowTable::with_capacity(2);
        let a = tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 80);
        let b = tcp([10, 0, 0, 2], 2, [10, 0, 0, 1], 80);
        let c = tcp([10, 0, 0, 2], 3, [10, 0, 0, 1], 80);
        t.on_tx(a, Some(1), None);
        t.on_tx(b, Some(2), None);
        // `a` is used again, so `b` is the oldest.
        assert_eq!(t.owner_of_reply(&a.reversed()), Some(1));

        t.on_tx(c, Some(3), None);

        assert_eq!((t.len(), t.evictions()), (2, 1));
        assert_eq!(t.owner_of_reply(&b.reversed()), None);
        assert_eq!(t.owner_of_reply(&a.reversed()), Some(1));
        assert_eq!(t.owner_of_reply(&c.reversed()), Some(3));
    }
}
