//! Per-container limits on virtio-net TX: the frames they hold back
//! (docs/limits-per-container.md).
//!
//! A [`TxThrottle`] (the shared [`Throttle`]) owns the live buckets of each
//! `--limit` (a frame takes one token from the frames bucket and its bytes,
//! without the virtio-net header, from the bytes bucket) and one FIFO of
//! held frames per limit.
//! A held frame is a copy of the gathered chain (header and frame); its
//! chain stays unused in the guest's TX queue until the frame is sent.
//!
//! Bounds: at most a queue's worth of frames ([`super::QUEUE_SIZE`]) and
//! [`HELD_BYTES_MAX`] bytes are held (plus one frame that crossed the
//! line); past either the device stops popping the TX queue until a held
//! frame goes.

use crate::virtio::throttle::{HeldWork, Throttle};

/// Most bytes of held frames (copies in VMM memory) before the device stops
/// taking frames from the TX queue: 256 full-size Ethernet frames fit.
pub const HELD_BYTES_MAX: usize = 1 << 20;

/// A TX frame a limit holds back.
#[derive(Debug)]
pub(crate) struct HeldFrame {
    /// Its chain's head (put on the used ring when it is sent).
    pub head: u16,
    /// The tag it is charged to (explicit or the notifier's).
    pub tag: Option<u64>,
    /// The agent's flow binding, applied if the write succeeds.
    pub bound: Option<u64>,
    /// When it was held, on the throttle's clock.
    pub at_ns: u64,
    /// Device thread CPU time spent on it before it was held.
    pub host_ns: u64,
    /// The virtio-net header and the frame.
    pub buf: Vec<u8>,
}

impl HeldFrame {
    /// Tokens of the bytes bucket: the frame without the header.
    pub fn frame_bytes(&self) -> u64 {
        frame_bytes(&self.buf)
    }
}

/// Bytes a gathered chain (header and frame) takes from a bytes bucket.
pub(crate) fn frame_bytes(buf: &[u8]) -> u64 {
    u64::try_from(buf.len().saturating_sub(super::VNET_HDR_LEN)).unwrap_or(u64::MAX)
}

impl HeldWork for HeldFrame {
    fn bytes(&self) -> u64 {
        self.frame_bytes()
    }

    /// The copy of the chain.
    fn memory(&self) -> usize {
        self.buf.len()
    }
}

/// The TX limits and the frames they hold.
pub(crate) type TxThrottle = Throttle<HeldFrame>;

/// Whether `t` may hold another frame: fewer than a queue's worth
/// (`queue_size`) and [`HELD_BYTES_MAX`] bytes of copies.
pub(crate) fn has_room(t: &TxThrottle, queue_size: u16) -> bool {
    t.has_room(usize::from(queue_size), HELD_BYTES_MAX)
}

/// A received frame an RX limit holds back: already written into the
/// guest's chain (nothing is copied), which stays off the used ring until
/// the frame's tokens come. At most a queue's worth: each holds a chain.
#[derive(Debug)]
pub(crate) struct HeldRx {
    /// Its chain's head.
    pub head: u16,
    /// The length to put on the used ring (header and frame).
    pub used_len: u32,
    /// The principal the flow table attributed it to.
    pub tag: Option<u64>,
    /// The frame's bytes, without the header.
    pub bytes: u64,
    /// When it was held, on the throttle's clock.
    pub at_ns: u64,
    /// When it was read from the backend.
    pub read_at: std::time::Instant,
    /// Device thread CPU time spent on it before it was held.
    pub host_ns: u64,
}

impl HeldWork for HeldRx {
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The RX limits and the frames they hold.
pub(crate) type RxThrottle = Throttle<HeldRx>;

#[cfg(test)]
mod tests {
    use super::super::device::tests::{activated, mem, push_tx, queues, used, Recorder, MAC};
    use super::super::device::TX_QUEUE;
    use super::super::frame::tests::{ipv4_frame, tcp};
    use crate::virtio::limiter::{BlockLimitConfig, BucketConfig, LimitLookup};
    use crate::virtio::VirtioDevice;
    use std::time::Duration;

    /// Limit 0 for frames tagged `.0`, none for the rest.
    struct OneTag(u64);

    impl LimitLookup for OneTag {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(self.0)).then_some(0)
        }
    }

    fn limit(frames: Option<u64>, bytes: Option<u64>, refill: Duration) -> Vec<BlockLimitConfig> {
        let bucket = |size| BucketConfig {
            size,
            one_time_burst: 0,
            refill_time: refill,
        };
        vec![BlockLimitConfig {
            path: "limited".into(),
            ops: frames.map(bucket),
            bytes: bytes.map(bucket),
            drop: false,
        }]
    }

    fn frame(payload: usize) -> Vec<u8> {
        ipv4_frame(
            MAC,
            &tcp([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80),
            1,
            &vec![7; payload],
        )
    }

    #[test]
    fn a_limited_tag_is_held_beyond_its_bucket_and_others_pass_it() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, wire) = activated(&m, &rxq, &txq);
        d.set_tx_limits(
            &limit(Some(1), None, Duration::from_secs(3600)),
            Box::new(OneTag(7)),
        )
        .unwrap();
        let mut rec = Recorder::default();
        let f = frame(10);
        // Three frames of tag 7 (heads 0, 2, 4), then two of tag 8 (6, 8).
        for at in [0, 2, 4] {
            push_tx(&m, &txq, at, &f);
        }
        d.queue_notifiers()[TX_QUEUE].post_at(Some(7), Some(3));
        for at in [6, 8] {
            push_tx(&m, &txq, at, &f);
        }
        d.queue_notifiers()[TX_QUEUE].post_at(Some(8), Some(5));

        let out = d.process_tx(&mut rec);

        // The bucket of 1 lets the first through; the other two wait, and
        // tag 8's frames go past them.
        assert_eq!((out.chains, out.frames), (3, 3));
        assert_eq!(d.tx_throttled_now(), 2);
        assert_eq!(d.stats().tx_throttled, 2);
        assert_eq!(wire.0.lock().unwrap().from_guest.len(), 3);
        let heads: Vec<_> = (0..3).map(|i| used(&txq, i).0).collect();
        assert_eq!(heads, vec![0, 6, 8]);
        let got: Vec<_> = rec.nets.iter().map(|c| (c.tag, c.throttled_ns)).collect();
        assert_eq!(got, vec![(Some(7), None), (Some(8), None), (Some(8), None)]);
        assert!(d.next_tx_release().is_some_and(|w| w > Duration::from_secs(3000)));
        // Another notification does not let them out before their tokens.
        d.queue_notifiers()[TX_QUEUE].post(Some(8));
        assert_eq!(d.process_tx(&mut rec).chains, 0);
        assert_eq!(d.tx_throttled_now(), 2);
        // A reset forgets them (their chains belonged to the dropped queue).
        d.reset();
        assert_eq!((d.tx_throttled_now(), d.next_tx_release()), (0, None));
    }

    #[test]
    fn held_frames_go_in_order_when_tokens_refill_charged_with_their_wait() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, wire) = activated(&m, &rxq, &txq);
        d.set_tx_limits(
            &limit(Some(1), None, Duration::from_millis(2)),
            Box::new(OneTag(7)),
        )
        .unwrap();
        let mut rec = Recorder::default();
        let frames: Vec<_> = (0..3).map(|i| frame(10 + i)).collect();
        for (at, f) in [0u16, 2, 4].into_iter().zip(&frames) {
            push_tx(&m, &txq, at, f);
        }
        d.queue_notifiers()[TX_QUEUE].post_at(Some(7), Some(3));
        d.process_tx(&mut rec);
        assert_eq!(d.tx_throttled_now(), 2);

        let mut rounds = 0;
        while d.tx_throttled_now() > 0 {
            std::thread::sleep(d.next_tx_release().unwrap());
            d.process_tx(&mut rec);
            rounds += 1;
            assert!(rounds < 1000, "held frames never went");
        }

        assert_eq!(d.next_tx_release(), None);
        let sent: Vec<_> = wire.0.lock().unwrap().from_guest.iter().map(Vec::len).collect();
        let want: Vec<_> = frames
            .iter()
            .map(|f| f.len() + super::super::VNET_HDR_LEN)
            .collect();
        assert_eq!(sent, want, "each container's frames leave in the order sent");
        let heads: Vec<_> = (0..3).map(|i| used(&txq, i).0).collect();
        assert_eq!(heads, vec![0, 2, 4]);
        assert_eq!(rec.nets[0].throttled_ns, None);
        assert!(rec.nets[1..]
            .iter()
            .all(|c| c.throttled_ns.is_some_and(|ns| ns > 0) && c.tag == Some(7) && c.frames == 1));
        let bytes: Vec<_> = rec.nets.iter().map(|c| c.bytes).collect();
        let want: Vec<_> = frames.iter().map(|f| u64::try_from(f.len()).unwrap()).collect();
        assert_eq!(bytes, want);
        assert_eq!(d.stats().tx_frames, 3);
    }

    #[test]
    fn the_bytes_bucket_counts_frame_bytes_without_the_header() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, _wire) = activated(&m, &rxq, &txq);
        let f = frame(100);
        let len = u64::try_from(f.len()).unwrap();
        // Room for exactly two frames: the third waits.
        d.set_tx_limits(
            &limit(None, Some(2 * len), Duration::from_secs(3600)),
            Box::new(OneTag(7)),
        )
        .unwrap();
        let mut rec = Recorder::default();
        for at in [0, 2, 4] {
            push_tx(&m, &txq, at, &f);
        }
        d.queue_notifiers()[TX_QUEUE].post_at(Some(7), Some(3));

        d.process_tx(&mut rec);

        assert_eq!((rec.nets.len(), d.tx_throttled_now()), (2, 1));
    }

    #[test]
    fn a_hostile_driver_cannot_make_the_device_hold_more_than_a_queue() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (mut d, _wire) = activated(&m, &rxq, &txq);
        d.set_tx_limits(
            &limit(Some(1), None, Duration::from_secs(3600)),
            Box::new(OneTag(7)),
        )
        .unwrap();
        let mut rec = Recorder::default();
        // One chain at head 0, its head published again and again in the
        // avail ring (a driver may not do this; a hostile one can).
        push_tx(&m, &txq, 0, &frame(10));
        let mut published = 1u16;
        for round in 0..40u16 {
            for i in 0..8u16 {
                let slot = (published + i) % 16;
                txq.avail().ring().ref_at(usize::from(slot)).unwrap().store(0);
            }
            published += 8;
            txq.avail().idx().store(published);
            d.queue_notifiers()[TX_QUEUE].post(Some(7));
            d.process_tx(&mut rec);
            assert!(
                d.tx_throttled_now() <= 16,
                "round {round}: {}",
                d.tx_throttled_now()
            );
        }

        assert_eq!(d.tx_throttled_now(), 16);
        assert!(d.stats().tx_throttle_stalls > 0);
        assert_eq!(rec.nets.len(), 1);
    }
}
