//! The bounded queue of encoded frames waiting for the VMM.
//!
//! Three kinds of frame, three rules:
//!
//! - **Replay** frames (the whole declared state, queued at each connection)
//!   are never dropped: they are bounded by the state's own bounds.
//! - **Event** frames (a declaration made while connected) are only queued
//!   while connected; while disconnected the state alone records the change
//!   and the next replay carries it. If events alone overflow the buffer (a
//!   VMM that stopped reading), the outbox asks for a **resync**: the link
//!   drops the connection and replays on the next one.
//! - **Report** frames (`context`) are queued connected or not; over the
//!   byte bound the oldest are dropped first (the newest is always kept) and
//!   counted in [`AgentDrops`].

use std::collections::VecDeque;

use accounting::agent::AgentDrops;

/// What a queued frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Part of a replay.
    Replay,
    /// A declaration made while connected.
    Event,
    /// A `context` report.
    Report,
}

/// One encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// Length prefix and body.
    pub bytes: Vec<u8>,
}

/// The queue.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Frame>,
    /// Bytes of events and reports queued (replay frames are not counted).
    bytes: usize,
    limit: usize,
    connected: bool,
    resync: bool,
    /// Losses so far (reported in every `context`).
    pub drops: AgentDrops,
}

impl Outbox {
    /// An empty, disconnected outbox holding about `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            limit,
            connected: false,
            resync: false,
            drops: AgentDrops::default(),
        }
    }

    /// Whether a connection is up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Bytes held, replay frames included.
    pub fn held_bytes(&self) -> usize {
        self.queue.iter().map(|f| f.bytes.len()).sum()
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues an event frame (dropped silently while disconnected: the
    /// state carries it to the next replay).
    pub fn push_event(&mut self, bytes: Vec<u8>) {
        if !self.connected {
            return;
        }
        self.bytes += bytes.len();
        self.queue.push_back(Frame {
            kind: Kind::Event,
            bytes,
        });
        self.enforce();
    }

    /// Queues a report frame.
    pub fn push_report(&mut self, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.queue.push_back(Frame {
            kind: Kind::Report,
            bytes,
        });
        self.enforce();
    }

    fn drop_frame(&mut self, i: usize) {
        if let Some(f) = self.queue.remove(i) {
            self.bytes -= f.bytes.len();
            self.count_drop(&f);
        }
    }

    fn count_drop(&mut self, f: &Frame) {
        self.drops.messages += 1;
        self.drops.bytes += f.bytes.len() as u64;
    }

    fn enforce(&mut self) {
        while self.bytes > self.limit {
            let newest_report = self.queue.iter().rposition(|f| f.kind == Kind::Report);
            let oldest_report = self.queue.iter().position(|f| f.kind == Kind::Report);
            match oldest_report {
                Some(i) if Some(i) != newest_report => self.drop_frame(i),
                _ => {
                    // Only events (and the newest report) are left.
                    if self.queue.iter().any(|f| f.kind == Kind::Event) {
                        self.resync = true;
                        self.discard_events(true);
                    }
                    return;
                }
            }
        }
    }

    fn discard_events(&mut self, count: bool) {
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for f in std::mem::take(&mut self.queue) {
            if f.kind == Kind::Event {
                self.bytes -= f.bytes.len();
                if count {
                    self.count_drop(&f);
                }
            } else {
                kept.push_back(f);
            }
        }
        self.queue = kept;
    }

    /// Whether the link must drop the connection and replay.
    pub fn take_resync(&mut self) -> bool {
        std::mem::take(&mut self.resync)
    }

    /// A connection is up: queued events are superseded by `replay` (the
    /// state now), which goes first; reports keep their order after it.
    pub fn on_connect(&mut self, replay: Vec<Vec<u8>>, reconnect: bool) {
        self.discard_events(false);
        self.queue.retain(|f| f.kind != Kind::Replay);
        for bytes in replay.into_iter().rev() {
            self.queue.push_front(Frame {
                kind: Kind::Replay,
                bytes,
            });
        }
        self.connected = true;
        self.resync = false;
        if reconnect {
            self.drops.reconnects += 1;
        }
    }

    /// The connection is gone: events still queued are superseded by the
    /// next replay, and so is any replay not yet sent.
    pub fn on_disconnect(&mut self) {
        self.connected = false;
        self.discard_events(false);
        self.queue.retain(|f| f.kind != Kind::Replay);
    }

    /// Takes frames from the front, up to about `max_bytes` (at least one).
    pub fn pop_batch(&mut self, max_bytes: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(f) = self.queue.front() {
            if !out.is_empty() && n + f.bytes.len() > max_bytes {
                break;
            }
            let Some(f) = self.queue.pop_front() else { break };
            n += f.bytes.len();
            if f.kind != Kind::Replay {
                self.bytes -= f.bytes.len();
            }
            out.push(f);
        }
        out
    }

    /// Frames taken by [`Self::pop_batch`] were not delivered: reports among
    /// them are counted as dropped (events and replay are carried by the
    /// state).
    pub fn lost(&mut self, frames: &[Frame]) {
        for f in frames.iter().filter(|f| f.kind == Kind::Report) {
            self.count_drop(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_reports_go_first_and_the_newest_stays() {
        let mut o = Outbox::new(25);
        for i in 0..5u8 {
            o.push_report(vec![i; 10]);
        }
        assert_eq!(o.len(), 2);
        assert_eq!(o.drops.messages, 3);
        assert_eq!(o.drops.bytes, 30);
        let b = o.pop_batch(usize::MAX);
        assert_eq!(b[0].bytes[0], 3);
        assert_eq!(b[1].bytes[0], 4);
        let mut tiny = Outbox::new(1);
        tiny.push_report(vec![0; 10]);
        assert_eq!(
            tiny.len(),
            1,
            "the newest report is kept even when over the bound"
        );
    }

    #[test]
    fn events_wait_only_while_connected() {
        let mut o = Outbox::new(100);
        o.push_event(vec![1; 10]);
        assert!(o.is_empty());
        o.on_connect(vec![vec![9; 4]], false);
        o.push_event(vec![1; 10]);
        o.push_report(vec![2; 10]);
        o.on_disconnect();
        assert_eq!(o.len(), 1);
        o.on_connect(vec![vec![7; 4], vec![8; 4]], true);
        let b = o.pop_batch(usize::MAX);
        let kinds: Vec<_> = b.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [Kind::Replay, Kind::Replay, Kind::Report]);
        assert_eq!(b[0].bytes[0], 7);
        assert_eq!(o.drops.reconnects, 1);
        assert_eq!(o.drops.messages, 0);
    }

    #[test]
    fn events_overflowing_ask_for_a_resync() {
        let mut o = Outbox::new(35);
        o.on_connect(vec![], false);
        o.push_report(vec![0; 10]);
        o.push_event(vec![1; 10]);
        o.push_event(vec![1; 10]);
        assert!(!o.take_resync());
        o.push_event(vec![1; 10]);
        assert!(o.take_resync());
        assert_eq!(o.len(), 1);
        assert_eq!(o.drops.messages, 3);
    }

    #[test]
    fn undelivered_reports_count_as_drops() {
        let mut o = Outbox::new(100);
        o.on_connect(vec![vec![0; 3]], false);
        o.push_report(vec![0; 10]);
        let b = o.pop_batch(5);
        assert_eq!(b.len(), 1, "batches stop at the byte budget");
        let b2 = o.pop_batch(5);
        o.lost(&b);
        o.lost(&b2);
        assert_eq!(o.drops.messages, 1);
        assert_eq!(o.held_bytes(), 0);
    }
}
