//! The work per-container limits hold back (docs/limits-per-container.md),
//! shared by virtio-blk (held requests) and virtio-net TX (held frames).
//!
//! A [`Throttle`] owns the live buckets of each `--limit` ([`BlockLimit`]:
//! one token per request or frame from the ops bucket, its
//! [`HeldWork::bytes`] from the bytes bucket) and one FIFO of held work per
//! limit. Work of a limit whose FIFO is not empty waits behind it, so each
//! container's work goes in the order it came; other containers' work is
//! not held behind it. The device bounds what is held ([`Throttle::has_room`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::virtio::limiter::{BlockLimit, BlockLimitConfig, BucketError, LimitLookup};

/// Something a limit can hold.
pub(crate) trait HeldWork {
    /// Tokens it takes from a bytes bucket.
    fn bytes(&self) -> u64;
    /// VMM memory it keeps while held (copied data), counted against the
    /// device's bound; 0 where nothing is copied.
    fn memory(&self) -> usize {
        0
    }
}

/// The limits of one device and the work they hold, one FIFO per limit.
pub(crate) struct Throttle<T> {
    limits: Vec<BlockLimit>,
    waiting: Vec<VecDeque<T>>,
    /// Held, all limits together.
    held: usize,
    /// [`HeldWork::memory`] of what is held.
    memory: usize,
    lookup: Box<dyn LimitLookup>,
    epoch: Instant,
}

impl<T> std::fmt::Debug for Throttle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("limits", &self.limits.len())
            .field("held", &self.held)
            .field("memory", &self.memory)
            .finish()
    }
}

impl<T: HeldWork> Throttle<T> {
    /// Live buckets for `limits`; `lookup` tells a tag's limit.
    pub fn new(limits: &[BlockLimitConfig], lookup: Box<dyn LimitLookup>) -> Result<Self, BucketError> {
        let limits = limits
            .iter()
            .map(|c| BlockLimit::new(c, 0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            waiting: limits.iter().map(|_| VecDeque::new()).collect(),
            limits,
            held: 0,
            memory: 0,
            lookup,
            epoch: Instant::now(),
        })
    }

    /// The throttle's clock, ns.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Work held right now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Whether more may be held: fewer than `max_held` items and
    /// `max_memory` bytes of copies are held (else the queue waits).
    pub fn has_room(&self, max_held: usize, max_memory: usize) -> bool {
        self.held < max_held && self.memory < max_memory
    }

    /// `Some(k)`: work charged to `tag` taking `bytes` must wait in limit
    /// `k`'s FIFO (no tokens, or earlier work of that limit waits).
    /// `None`: it goes now (its tokens are taken), or no limit applies.
    pub fn admit(&mut self, tag: Option<u64>, bytes: u64) -> Option<usize> {
        let k = self.lookup.limit_of(tag)?;
        let now = self.now();
        let (limit, waiting) = (self.limits.get_mut(k)?, self.waiting.get(k)?);
        if waiting.is_empty() && limit.try_take(bytes, now) {
            None
        } else {
            Some(k)
        }
    }

    /// Holds `h` in limit `k`'s FIFO (as [`Self::admit`] said).
    pub fn hold(&mut self, k: usize, h: T) {
        if let Some(w) = self.waiting.get_mut(k) {
            self.held += 1;
            self.memory += h.memory();
            w.push_back(h);
        }
    }

    /// The first held work, of any limit, whose tokens are there now.
    pub fn pop_ready(&mut self) -> Option<T> {
        let now = self.now();
        for (limit, waiting) in self.limits.iter_mut().zip(self.waiting.iter_mut()) {
            let Some(front) = waiting.front() else {
                continue;
            };
            if limit.try_take(front.bytes(), now) {
                let h = waiting.pop_front()?;
                self.held -= 1;
                self.memory -= h.memory();
                return Some(h);
            }
        }
        None
    }

    /// Time until the first held work can go (`None`: none held).
    pub fn next_wait(&mut self) -> Option<Duration> {
        let now = self.now();
        (self.limits.iter_mut().zip(self.waiting.iter()))
            .filter_map(|(l, w)| w.front().map(|h| l.wait_ns(h.bytes(), now)))
            .min()
            .map(Duration::from_nanos)
    }

    /// Drops everything held (the driver reset the device: it belonged to
    /// the dropped queues). The buckets are kept.
    pub fn forget_held(&mut self) {
        self.waiting.iter_mut().for_each(VecDeque::clear);
        self.held = 0;
        self.memory = 0;
    }
}
