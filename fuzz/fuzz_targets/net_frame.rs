//! virtio-net frame parsing and the flow table: a stream of frames, each
//! arbitrary bytes, goes through `devices::virtio::net::frame::parse` (what
//! the device reads from every TX chain and every received frame) and, when
//! it names a flow, through the flow table as a transmission with a tag and
//! as a reply lookup.
//!
//! `parse` must not panic and must only describe what is in the frame; the
//! flow table must stay within its capacity, count retransmissions no larger
//! than the segment, and attribute a reply only to a tag it was given.
#![no_main]

use devices::virtio::net::flow::FlowTable;
use devices::virtio::net::frame::parse;
use libfuzzer_sys::fuzz_target;

const CAPACITY: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut flows = FlowTable::with_capacity(CAPACITY);
    // Frames are separated by a length byte, so one input carries many.
    let mut rest = data;
    let mut n: u64 = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        n += 1;
        let Some(info) = parse(frame) else { continue };
        assert!(frame.len() >= 14, "a parsed frame has an Ethernet header");
        assert_eq!(&info.dst_mac[..], &frame[0..6]);
        assert_eq!(&info.src_mac[..], &frame[6..12]);
        let Some(flow) = info.flow else { continue };
        // Tags 1..=n, so a reply's owner must be one of them.
        let tag = Some(n);
        let retx = flows.on_tx(flow, tag, info.tcp);
        if let Some(seg) = info.tcp {
            assert!(retx <= u64::from(seg.payload_len), "retransmitted more than the segment");
        } else {
            assert_eq!(retx, 0, "only TCP segments are retransmitted");
        }
        assert!(flows.len() <= CAPACITY, "the flow table outgrew its capacity");
        if let Some(owner) = flows.owner_of_reply(&flow.reversed()) {
            assert!((1..=n).contains(&owner), "a reply was attributed to a tag never given");
        }
    }
});
