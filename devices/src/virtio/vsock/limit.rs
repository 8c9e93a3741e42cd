//! Per-container limits on virtio-vsock (`--limit PATH:vsock-bytes=RATE`,
//! docs/limits-per-container.md): one bytes bucket per limit that the
//! payload a container sends (guest to host) and receives (host to guest)
//! both draw from.
//!
//! A connection belongs to the principal that opened or accepted it (the
//! one its RX packets are charged to); its limit is that principal's
//! container's. Nothing is dropped and the VMM keeps no new copies; vsock's
//! credit flow control does the holding:
//!
//! - **Guest to host.** An RW packet over its limit is put in the
//!   connection's backlog (the buffer the device already keeps for a slow
//!   host stream, at most [`super::CONN_BUF_ALLOC`] bytes, which the
//!   guest's credit bounds) as *unpaid* bytes, and its chain is used as
//!   before. Unpaid bytes are not written to the host stream, so the
//!   device's `fwd_cnt` does not advance and the guest runs out of credit:
//!   it stops sending on that connection until the tokens come. The
//!   connection's later packets join the unpaid tail, in order.
//! - **Host to guest.** Before reading a connection's host stream the
//!   device peeks how many bytes wait there (at most what the guest's
//!   buffer and credit take); over the limit, it does not read them and
//!   stops watching the stream: they wait in the kernel's socket buffer
//!   (and the host writer blocks), not in VMM memory.
//!
//! Each connection has at most one held entry per direction (a held
//! connection is not read, and its unpaid TX bytes wait behind their entry),
//! so at most `2 * MAX_CONNECTIONS` entries; a closed connection's entries
//! are forgotten. When the release timer fires, an entry whose tokens are
//! there is let go: its TX bytes are written, or its connection is read
//! again for exactly the bytes paid for.

use super::device::ConnKey;
use crate::virtio::limiter::{BlockLimitConfig, BucketError, LimitLookup};
use crate::virtio::throttle::{HeldWork, Throttle};

/// Which way held bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// Guest to host: unpaid backlog bytes.
    ToHost,
    /// Host to guest: bytes left in the host stream.
    ToGuest,
}

/// One connection's bytes held in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub key: ConnKey,
    pub way: Way,
    pub bytes: u64,
    /// When it was held, on the throttle's clock.
    pub at_ns: u64,
}

impl HeldWork for Held {
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A held entry let go, with how long it was held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Released {
    pub held: Held,
    pub throttled_ns: u64,
}

/// The vsock device's limits and what they hold.
#[derive(Debug)]
pub(crate) struct VsockLimits {
    throttle: Throttle<Held>,
}

impl VsockLimits {
    /// Live buckets for `limits` (only their `bytes` bucket is used).
    pub fn new(limits: &[BlockLimitConfig], lookup: Box<dyn LimitLookup>) -> Result<Self, BucketError> {
        Ok(Self {
            throttle: Throttle::new(limits, lookup)?,
        })
    }

    /// Whether `bytes` of the connection `key` owned by `tag` may move now
    /// (their tokens are taken); else they are held (true is returned only
    /// when they may go).
    pub fn pass_or_hold(&mut self, key: ConnKey, tag: Option<u64>, way: Way, bytes: u64) -> bool {
        let Some(k) = self.throttle.admit(tag, bytes) else {
            return true;
        };
        let at_ns = self.throttle.now();
        self.throttle.hold(
            k,
            Held {
                key,
                way,
                bytes,
                at_ns,
            },
        );
        false
    }

    /// The first held entry whose tokens are there now.
    pub fn pop_ready(&mut self) -> Option<Released> {
        let held = self.throttle.pop_ready()?;
        let throttled_ns = self.throttle.now().saturating_sub(held.at_ns);
        Some(Released { held, throttled_ns })
    }

    /// Time until the first held entry may go (`None`: none held).
    pub fn next_wait(&mut self) -> Option<std::time::Duration> {
        self.throttle.next_wait()
    }

    /// Entries held now.
    pub fn held(&self) -> usize {
        self.throttle.held()
    }

    /// Forgets what connection `key` held (it was closed).
    pub fn forget(&mut self, key: ConnKey) {
        self.throttle.forget_where(|h| h.key == key);
    }

    /// Forgets everything held (the driver reset the device).
    pub fn forget_all(&mut self) {
        self.throttle.forget_held();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::virtio::limiter::BucketConfig;

    struct ByTag;
    impl LimitLookup for ByTag {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(1)).then_some(0)
        }
    }

    fn limits(size: u64) -> VsockLimits {
        let c = BlockLimitConfig {
            path: "a".into(),
            ops: None,
            bytes: Some(BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: Duration::from_secs(3600),
            }),
            ..Default::default()
        };
        VsockLimits::new(&[c], Box::new(ByTag)).unwrap()
    }

    #[test]
    fn both_ways_draw_from_one_bucket_and_others_pass() {
        // Arrange: a bucket of 100 bytes for tag 1.
        let mut l = limits(100);

        // Act + assert: 60 to the host and 40 to the guest pass, then
        // nothing more of tag 1's does, while tag 2 always passes.
        assert!(l.pass_or_hold((1, 1), Some(1), Way::ToHost, 60));
        assert!(l.pass_or_hold((1, 2), Some(1), Way::ToGuest, 40));
        assert!(!l.pass_or_hold((1, 1), Some(1), Way::ToHost, 1));
        assert!(l.pass_or_hold((2, 1), Some(2), Way::ToHost, 1_000_000));
        assert_eq!(l.held(), 1);
        assert!(l.next_wait().is_some_and(|w| w > Duration::ZERO));
        assert_eq!(l.pop_ready(), None);
    }

    #[test]
    fn a_closed_connection_leaves_nothing_held() {
        let mut l = limits(10);
        assert!(l.pass_or_hold((1, 1), Some(1), Way::ToHost, 10));
        assert!(!l.pass_or_hold((1, 1), Some(1), Way::ToHost, 11));
        assert!(!l.pass_or_hold((1, 2), Some(1), Way::ToGuest, 5));
        l.forget((1, 1));
        assert_eq!(l.held(), 1);
        l.forget_all();
        assert_eq!((l.held(), l.next_wait()), (0, None));
    }
}

#[cfg(test)]
mod device_tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use event_manager::EventSet;

    use super::super::device::tests::{
        connected, hdr, mem, push_rx, push_tx, queues, read_rx, token_of, used_idx, Recorder, Watches,
    };
    use super::super::packet::{OP_RST, OP_RW};
    use super::super::TX_QUEUE;
    use crate::virtio::limiter::{BlockLimitConfig, BucketConfig, LimitLookup};
    use crate::virtio::{NetDir, VirtioDevice};

    /// Tag 7 (the connection's owner) falls under the only limit.
    struct Seven;
    impl LimitLookup for Seven {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(7)).then_some(0)
        }
    }

    fn four_bytes() -> Vec<BlockLimitConfig> {
        vec![BlockLimitConfig {
            path: "a".into(),
            ops: None,
            bytes: Some(BucketConfig {
                size: 4,
                one_time_burst: 0,
                refill_time: Duration::from_millis(40),
            }),
            ..Default::default()
        }]
    }

    fn held_charges(rec: &Recorder) -> Vec<(Option<u64>, NetDir, u64, bool)> {
        (rec.vsocks.iter())
            .filter(|c| c.throttle_events > 0)
            .map(|c| (c.tag, c.dir, c.throttle_events, c.throttled_ns > 0))
            .collect()
    }

    #[test]
    fn guest_data_over_the_limit_waits_unpaid_until_its_tokens_come() {
        // Arrange: connection (40, 1024) of tag 7, limited to 4 bytes/40ms.
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        d.set_limits(&four_bytes(), Box::new(Seven)).unwrap();
        let mut peer = conn.peer(0);
        peer.set_nonblocking(true).unwrap();
        push_tx(&m, &qs.1, 1, &hdr(OP_RW, 40, 1024, 3, 4096, 0), b"abc");
        push_tx(&m, &qs.1, 2, &hdr(OP_RW, 40, 1024, 4, 4096, 0), b"defg");
        push_tx(&m, &qs.1, 3, &hdr(OP_RW, 40, 1024, 1, 4096, 0), b"h");
        let mut rec = Recorder::default();

        // Act: a notifier of another tag (8) sends the three packets.
        d.queue_notifiers()[TX_QUEUE].post(Some(8));
        d.process_tx(&mut rec);
        let mut got = [0u8; 16];
        let first = peer.read(&mut got).unwrap();

        // Assert: "abc" passed; "defg" and "h" wait behind it, their chains
        // used (the guest's credit, not the ring, holds it back).
        assert_eq!(&got[..first], b"abc");
        assert!(peer.read(&mut got).is_err(), "held bytes reached the host");
        assert_eq!(used_idx(&qs.1), 4);
        assert_eq!((d.stats().throttled, d.throttled_now()), (1, 1));
        let wait = d.next_release().unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(40));

        // Act: the tokens come (4 for "defg", then 1 more for "h").
        let mut out = Vec::new();
        for _ in 0..50 {
            std::thread::sleep(d.next_release().unwrap_or(Duration::ZERO));
            d.release_held(&mut rec);
            while let Ok(n) = peer.read(&mut got) {
                out.extend_from_slice(&got[..n]);
            }
            if d.next_release().is_none() {
                break;
            }
        }

        // Assert: in order, each hold one event of tag 7 (the owner).
        assert_eq!(out, b"defgh");
        assert_eq!(d.throttled_now(), 0);
        assert_eq!(d.stats().throttled, 2);
        assert_eq!(
            held_charges(&rec),
            vec![(Some(7), NetDir::Tx, 1, true), (Some(7), NetDir::Tx, 1, true)]
        );
    }

    #[test]
    fn host_data_over_the_limit_stays_in_the_socket_unwatched() {
        // Arrange: tag 7's connection limited to 4 bytes/40ms; 2 bytes pass.
        let m = mem();
        let qs = queues(&m);
        let (mut d, conn, _) = connected(&m, &qs, 4096);
        d.set_limits(&four_bytes(), Box::new(Seven)).unwrap();
        let mut peer = conn.peer(0);
        for i in 1..4 {
            push_rx(&qs.0, i, 4096);
        }
        let mut rec = Recorder::default();
        let mut w = Watches::default();
        let token = token_of(&d, (40, 1024));
        peer.write_all(b"ab").unwrap();
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);

        // Act: 4 more bytes, over the 2 left.
        peer.write_all(b"cdef").unwrap();
        d.on_host_event(token, EventSet::IN, &mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);

        // Assert: only "ab" reached the guest; the stream is not watched
        // for input (no spin) while its bytes are held.
        assert_eq!(read_rx(&m, &qs.0, 1).1, b"ab");
        assert_eq!(used_idx(&qs.0), 2);
        assert!(!w.now.get(&token).is_some_and(|s| s.contains(EventSet::IN)));
        assert_eq!((d.stats().throttled, d.throttled_now()), (1, 1));

        // Act: the tokens come.
        std::thread::sleep(d.next_release().unwrap());
        d.release_held(&mut rec);
        d.process_rx(&mut rec);
        d.sync_watch(&mut w);

        // Assert: exactly the held bytes, one event of the owner, watched again.
        assert_eq!(read_rx(&m, &qs.0, 2).1, b"cdef");
        assert_eq!(held_charges(&rec), vec![(Some(7), NetDir::Rx, 1, true)]);
        assert!(w.now.get(&token).is_some_and(|s| s.contains(EventSet::IN)));
        assert_eq!(d.throttled_now(), 0);
    }

    #[test]
    fn a_reset_connection_leaves_nothing_held_and_empty_packets_are_never_held() {
        // Arrange: tag 7's bucket emptied by "abcd"; then "e" is held.
        let m = mem();
        let qs = queues(&m);
        let (mut d, _conn, _) = connected(&m, &qs, 4096);
        d.set_limits(&four_bytes(), Box::new(Seven)).unwrap();
        push_tx(&m, &qs.1, 1, &hdr(OP_RW, 40, 1024, 4, 4096, 0), b"abcd");
        push_tx(&m, &qs.1, 2, &hdr(OP_RW, 40, 1024, 1, 4096, 0), b"e");
        // Empty RW packets take no tokens and add no entry.
        push_tx(&m, &qs.1, 3, &hdr(OP_RW, 40, 1024, 0, 4096, 0), b"");
        push_tx(&m, &qs.1, 4, &hdr(OP_RW, 40, 1024, 0, 4096, 0), b"");
        let mut rec = Recorder::default();
        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);
        assert_eq!((d.stats().throttled, d.throttled_now()), (1, 1));

        // Act: the guest resets the connection.
        push_tx(&m, &qs.1, 5, &hdr(OP_RST, 40, 1024, 0, 4096, 0), b"");
        d.queue_notifiers()[TX_QUEUE].post(Some(7));
        d.process_tx(&mut rec);

        // Assert: its held entry is gone: nothing held, nothing to arm.
        assert_eq!((d.throttled_now(), d.next_release()), (0, None));
        assert_eq!(d.connections(), 0);
    }
}
