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

use crate::virtio::limiter::{BlockLimit, BlockLimitConfig, BucketError, LimitLookup, LimitState};

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
    /// Each limit's held work, with when it was held (the throttle's clock).
    waiting: Vec<VecDeque<(T, u64)>>,
    /// Each limit's path and totals, for [`LimitLookup::publish`].
    stats: Vec<LimitStats>,
    /// Work whose limit was removed by a live change: it goes first,
    /// without tokens.
    released: VecDeque<T>,
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

/// One limit's path and what it held.
#[derive(Clone, Debug, Default)]
struct LimitStats {
    path: String,
    events: u64,
    throttled_ns: u64,
}

impl<T: HeldWork> Throttle<T> {
    /// Live buckets for `limits`; `lookup` tells a tag's limit (and may
    /// change the limits later, [`LimitLookup::changed`]).
    pub fn new(limits: &[BlockLimitConfig], lookup: Box<dyn LimitLookup>) -> Result<Self, BucketError> {
        let buckets = limits
            .iter()
            .map(|c| BlockLimit::new(c, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut t = Self {
            waiting: buckets.iter().map(|_| VecDeque::new()).collect(),
            stats: limits
                .iter()
                .map(|c| LimitStats {
                    path: c.path.clone(),
                    ..LimitStats::default()
                })
                .collect(),
            limits: buckets,
            released: VecDeque::new(),
            held: 0,
            memory: 0,
            lookup,
            epoch: Instant::now(),
        };
        t.publish();
        Ok(t)
    }

    /// Takes up a live change of the limits, if there was one: a limit
    /// whose path is kept keeps its held work, its totals and its tokens
    /// (reconfigured, never more, [`BlockLimit::reconfigure`]); a new one
    /// starts full; a removed one's held work is released (it goes first,
    /// on the next [`Self::pop_ready`]). A configuration the buckets refuse
    /// (the VMM validates before, so a bug) keeps the old limits.
    fn refresh(&mut self) {
        let Some(new) = self.lookup.changed() else {
            return;
        };
        let now = self.now();
        let mut limits = Vec::with_capacity(new.len());
        let mut waiting = Vec::with_capacity(new.len());
        let mut stats = Vec::with_capacity(new.len());
        for c in &new {
            let old = self.stats.iter().position(|s| s.path == c.path);
            let limit = match old {
                Some(i) => {
                    let mut l = self.limits[i].clone();
                    l.reconfigure(c, now).map(|()| l)
                }
                None => BlockLimit::new(c, now),
            };
            let Ok(limit) = limit else {
                log::error!("a live limit change was refused by the device: keeping the old limits");
                return;
            };
            limits.push(limit);
            match old {
                Some(i) => {
                    waiting.push(std::mem::take(&mut self.waiting[i]));
                    stats.push(std::mem::take(&mut self.stats[i]));
                }
                None => {
                    waiting.push(VecDeque::new());
                    stats.push(LimitStats {
                        path: c.path.clone(),
                        ..LimitStats::default()
                    });
                }
            }
        }
        // What the removed limits held goes now, in order per limit.
        for w in &mut self.waiting {
            self.released.extend(w.drain(..).map(|(h, _)| h));
        }
        self.limits = limits;
        self.waiting = waiting;
        self.stats = stats;
        self.publish();
    }

    /// Shows the limits' state to the lookup (only with limits).
    fn publish(&mut self) {
        let now = self.now();
        let states: Vec<LimitState> = (self.limits.iter().zip(&self.waiting).zip(&self.stats))
            .map(|((l, w), s)| LimitState {
                path: s.path.clone(),
                buckets: l.clone(),
                at_ns: now,
                epoch: self.epoch,
                held: w.len() as u64,
                throttle_events: s.events + w.len() as u64,
                throttled_ns: s.throttled_ns,
            })
            .collect();
        self.lookup.publish(&states);
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
        self.refresh();
        let k = self.lookup.limit_of(tag)?;
        let now = self.now();
        let (limit, waiting) = (self.limits.get_mut(k)?, self.waiting.get(k)?);
        let held = !(waiting.is_empty() && limit.try_take(bytes, now));
        if !held {
            self.publish();
        }
        held.then_some(k)
    }

    /// Holds `h` in limit `k`'s FIFO (as [`Self::admit`] said).
    pub fn hold(&mut self, k: usize, h: T) {
        let now = self.now();
        if let Some(w) = self.waiting.get_mut(k) {
            self.held += 1;
            self.memory += h.memory();
            w.push_back((h, now));
        }
        self.publish();
    }

    /// The first held work, of any limit, whose tokens are there now.
    pub fn pop_ready(&mut self) -> Option<T> {
        self.refresh();
        if let Some(h) = self.released.pop_front() {
            self.held -= 1;
            self.memory -= h.memory();
            return Some(h);
        }
        let now = self.now();
        let ready = (self
            .limits
            .iter_mut()
            .zip(self.waiting.iter_mut())
            .zip(self.stats.iter_mut()))
        .find_map(|((limit, waiting), stats)| {
            let (front, _) = waiting.front()?;
            if !limit.try_take(front.bytes(), now) {
                return None;
            }
            let (h, at) = waiting.pop_front()?;
            stats.events += 1;
            stats.throttled_ns += now.saturating_sub(at);
            Some(h)
        });
        let h = ready?;
        self.held -= 1;
        self.memory -= h.memory();
        self.publish();
        Some(h)
    }

    /// Time until the first held work can go (`None`: none held).
    pub fn next_wait(&mut self) -> Option<Duration> {
        self.refresh();
        if !self.released.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        (self.limits.iter_mut().zip(self.waiting.iter()))
            .filter_map(|(l, w)| w.front().map(|(h, _)| l.wait_ns(h.bytes(), now)))
            .min()
            .map(Duration::from_nanos)
    }

    /// Drops everything held (the driver reset the device: it belonged to
    /// the dropped queues). The buckets are kept.
    pub fn forget_held(&mut self) {
        self.waiting.iter_mut().for_each(VecDeque::clear);
        self.released.clear();
        self.held = 0;
        self.memory = 0;
    }
}
