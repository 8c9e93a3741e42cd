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

use crate::virtio::limiter::{
    BlockLimit, BlockLimitConfig, BucketError, Class, LimitLookup, LimitState, TENANT_PATH,
};
use crate::virtio::sched::{Candidate, Sched};
use crate::virtio::shared_tenant::SharedTenant;

/// Something a limit can hold.
pub(crate) trait HeldWork {
    /// Tokens it takes from a bytes bucket.
    fn bytes(&self) -> u64;
    /// The class-specific buckets it also draws from (a block read's or
    /// write's); none by default.
    fn class(&self) -> Class {
        Class::Other
    }
    /// VMM memory it keeps while held (copied data), counted against the
    /// device's bound; 0 where nothing is copied.
    fn memory(&self) -> usize {
        0
    }
}

/// The limits of one device and the work they hold, one FIFO per limit.
pub(crate) struct Throttle<T> {
    limits: Vec<BlockLimit>,
    /// Each limit's held work, with when it was held (the throttle's clock)
    /// and its start tag ([`Sched::tag`]).
    waiting: Vec<VecDeque<(T, u64, u128)>>,
    /// The order among limits contending for the tenant's tokens, when
    /// one sets a priority or a share ([`Sched::active`]).
    sched: Sched,
    /// Each limit's path and totals, for [`LimitLookup::publish`].
    stats: Vec<LimitStats>,
    /// Work whose limit was removed by a live change: it goes first,
    /// without tokens.
    released: VecDeque<T>,
    /// The tenant limit's index ([`TENANT_PATH`]): every request also
    /// takes its tokens, and the work of containers without a limit of
    /// their own waits in its FIFO.
    tenant: Option<usize>,
    /// The tenant buckets shared with the other devices of this kind (they
    /// then stand for `limits[tenant]`).
    shared: Option<SharedTenant>,
    /// Held, all limits together.
    held: usize,
    /// [`HeldWork::memory`] of what is held.
    memory: usize,
    lookup: Box<dyn LimitLookup>,
    epoch: Instant,
    /// A stopped clock's time (tests, [`Self::stop_clock`]).
    #[cfg(test)]
    skew_ns: Option<u64>,
    /// Live changes taken up so far: an index [`Self::admit`] gave before
    /// a change may name another limit after it.
    generation: u64,
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
    path: std::sync::Arc<str>,
    events: u64,
    throttled_ns: u64,
    /// Work it dropped ([`BlockLimitConfig::drop`]).
    dropped: u64,
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
                    path: c.path.as_str().into(),
                    ..LimitStats::default()
                })
                .collect(),
            limits: buckets,
            released: VecDeque::new(),
            tenant: limits.iter().position(|c| c.path == TENANT_PATH),
            shared: lookup.shared_tenant(),
            sched: Sched::new(limits.iter().map(|c| c.class).collect()),
            held: 0,
            memory: 0,
            lookup,
            epoch: Instant::now(),
            #[cfg(test)]
            skew_ns: None,
            generation: 0,
        };
        t.configure_shared(limits)?;
        t.publish();
        Ok(t)
    }

    /// Takes up a live change of the limits, if there was one: a limit
    /// whose path is kept keeps its held work, its totals and its tokens
    /// (reconfigured, never more, [`BlockLimit::reconfigure`]); a new one
    /// starts full; a removed one's held work is released (it goes first,
    /// on the next [`Self::pop_ready`]). A configuration the buckets refuse
    /// (the VMM validates before, so a bug) leaves that limit without
    /// buckets, logged.
    fn refresh(&mut self) {
        let Some(new) = self.lookup.changed() else {
            return;
        };
        self.generation += 1;
        let now = self.now();
        let mut limits = Vec::with_capacity(new.len());
        let mut waiting = Vec::with_capacity(new.len());
        let mut stats = Vec::with_capacity(new.len());
        let mut kept = Vec::with_capacity(new.len());
        for c in &new {
            let old = self.stats.iter().position(|s| *s.path == *c.path);
            kept.push(old);
            let limit = match old {
                Some(i) => {
                    let mut l = self.limits[i].clone();
                    l.reconfigure(c, now).map(|()| l)
                }
                None => BlockLimit::new(c, now),
            };
            // The VMM validated it: a refusal is a bug. The limit then has
            // no bucket (the lookup's indexes must stay those of `new`).
            let limit = limit.unwrap_or_else(|e| {
                log::error!(
                    "limit on {}: the device refused its live change ({e}): left unlimited",
                    c.path
                );
                BlockLimit::unlimited()
            });
            limits.push(limit);
            match old {
                Some(i) => {
                    waiting.push(std::mem::take(&mut self.waiting[i]));
                    stats.push(std::mem::take(&mut self.stats[i]));
                }
                None => {
                    waiting.push(VecDeque::new());
                    stats.push(LimitStats {
                        path: c.path.as_str().into(),
                        ..LimitStats::default()
                    });
                }
            }
        }
        // What the removed limits held goes now, in order per limit.
        for w in &mut self.waiting {
            self.released.extend(w.drain(..).map(|(h, _, _)| h));
        }
        self.sched.remap(new.iter().map(|c| c.class).collect(), &kept);
        self.tenant = new.iter().position(|c| c.path == TENANT_PATH);
        if let Err(e) = self.configure_shared(&new) {
            log::error!("tenant limit: the device refused its live change ({e}): kept as it was");
        }
        self.limits = limits;
        self.waiting = waiting;
        self.stats = stats;
        self.publish();
    }

    /// Gives the shared tenant buckets, if any, the tenant limit of
    /// `limits` (none: no tenant limit).
    fn configure_shared(&self, limits: &[BlockLimitConfig]) -> Result<(), BucketError> {
        match &self.shared {
            Some(s) => s.configure(limits.iter().find(|c| c.path == TENANT_PATH)),
            None => Ok(()),
        }
    }

    /// The shared tenant buckets, when `k` is the tenant limit and they are shared.
    fn shared_of(&self, k: usize) -> Option<&SharedTenant> {
        self.shared.as_ref().filter(|_| self.tenant == Some(k))
    }

    /// Limit `k`'s state as of `now`.
    fn state(&self, k: usize, now: u64) -> Option<LimitState> {
        let (l, w, s) = (self.limits.get(k)?, self.waiting.get(k)?, self.stats.get(k)?);
        let state = LimitState {
            path: std::sync::Arc::clone(&s.path),
            buckets: l.clone(),
            at_ns: now,
            epoch: self.epoch,
            held: w.len() as u64,
            throttle_events: s.events + w.len() as u64,
            throttled_ns: s.throttled_ns,
            dropped: s.dropped,
        };
        Some(match self.shared_of(k) {
            Some(shared) => shared.show(state),
            None => state,
        })
    }

    /// Shows every limit's state to the lookup (at start and after a change).
    fn publish(&mut self) {
        let now = self.now();
        let states: Vec<LimitState> = (0..self.limits.len())
            .filter_map(|k| self.state(k, now))
            .collect();
        self.lookup.publish(&states);
    }

    /// Shows the state of limit `k` and of the tenant limit, which work in
    /// `k` also draws from.
    fn publish_used(&mut self, k: usize) {
        let now = self.now();
        for i in [Some(k), self.tenant.filter(|&t| t != k)].into_iter().flatten() {
            if let Some(state) = self.state(i, now) {
                self.lookup.publish_one(i, &state);
            }
        }
    }

    /// The throttle's clock, ns.
    pub fn now(&self) -> u64 {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        #[cfg(test)]
        let now = match self.skew_ns {
            Some(skew) => skew,
            None => now,
        };
        now
    }

    /// Stops the clock: from now on it moves only by [`Self::advance`].
    #[cfg(test)]
    pub fn stop_clock(&mut self) {
        self.skew_ns = Some(self.now());
    }

    /// Moves a stopped clock on by `ns` (a refill without sleeping).
    #[cfg(test)]
    pub fn advance(&mut self, ns: u64) {
        self.skew_ns = self.skew_ns.map(|s| s + ns);
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

    /// Nanoseconds until work of `bytes` waiting in FIFO `q` may go: the
    /// tokens of its limit and, unless `q` is the tenant's, the tenant's.
    fn wait_of(&mut self, q: usize, class: Class, bytes: u64, now: u64) -> u64 {
        let own = self.wait_in(q, class, bytes, now);
        let tenant = match self.tenant {
            Some(t) if t != q => self.wait_in(t, class, bytes, now),
            _ => 0,
        };
        own.max(tenant)
    }

    /// Nanoseconds until limit `k`'s buckets (the shared ones for a shared
    /// tenant limit) have the tokens of work of `class` and `bytes`.
    fn wait_in(&mut self, k: usize, class: Class, bytes: u64, now: u64) -> u64 {
        if let Some(shared) = self.shared_of(k) {
            return shared.wait_ns(class, bytes);
        }
        self.limits
            .get_mut(k)
            .map_or(0, |l| l.wait_ns_as(class, bytes, now))
    }

    /// Takes those tokens from limit `k`'s buckets, or none.
    fn take_in(&mut self, k: usize, class: Class, bytes: u64, now: u64) -> bool {
        if let Some(shared) = self.shared_of(k) {
            return shared.try_take(class, bytes);
        }
        self.limits
            .get_mut(k)
            .is_some_and(|l| l.try_take_as(class, bytes, now))
    }

    /// Takes the tokens of work of `bytes` in FIFO `q` from its limit and
    /// the tenant's, from both or from neither.
    fn take(&mut self, q: usize, class: Class, bytes: u64, now: u64) -> bool {
        if self.wait_of(q, class, bytes, now) != 0 {
            return false;
        }
        let own = self.take_in(q, class, bytes, now);
        let tenant = match self.tenant {
            Some(t) if t != q => self.take_in(t, class, bytes, now),
            _ => true,
        };
        own && tenant
    }

    /// `Some(k)`: work charged to `tag` taking `bytes` must wait in FIFO
    /// `k`: its container's limit's, or the tenant limit's for a container
    /// with none (no tokens in either bucket, or earlier work waits in that
    /// FIFO). `None`: it goes now (its tokens are taken from its limit and
    /// the tenant's), or no limit applies.
    ///
    /// With priorities or shares ([`Sched::active`]) and a tenant limit,
    /// work also waits when the scheduler would let held work that waits
    /// only for the tenant's tokens go first ([`Self::admit_scheduled`]).
    pub fn admit(&mut self, tag: Option<u64>, bytes: u64) -> Option<usize> {
        self.admit_as(tag, Class::Other, bytes)
    }

    /// [`Self::admit`] for work of `class` (it also draws from that class's
    /// buckets, [`HeldWork::class`]).
    pub fn admit_as(&mut self, tag: Option<u64>, class: Class, bytes: u64) -> Option<usize> {
        self.refresh();
        let q = self.lookup.limit_of(tag).or(self.tenant)?;
        let now = self.now();
        if self.sched.active() && self.tenant.is_some() {
            return self.admit_scheduled(q, class, bytes, now);
        }
        let held = !(self.waiting.get(q)?.is_empty() && self.take(q, class, bytes, now));
        if !held {
            self.publish_used(q);
        }
        held.then_some(q)
    }

    /// [`Self::admit`] with a scheduler and a tenant limit: work goes now
    /// only if its FIFO is empty, the scheduler would pick it before every
    /// held work that waits only for the tenant's tokens, and the tokens
    /// are there.
    fn admit_scheduled(&mut self, q: usize, class: Class, bytes: u64, now: u64) -> Option<usize> {
        if !self.waiting.get(q)?.is_empty() {
            return Some(q);
        }
        let mut cands = self.candidates(now);
        let me = Candidate {
            q,
            start: self.sched.start_of(q),
        };
        cands.push(me);
        let first = self.sched.pick(&cands).is_some_and(|c| c.q == q);
        if !(first && self.take(q, class, bytes, now)) {
            return Some(q);
        }
        self.sched.tag(q, self.cost(bytes));
        self.sched.served(me, &cands);
        self.publish_used(q);
        None
    }

    /// Whether limit `k` drops work over it instead of holding it
    /// ([`BlockLimitConfig::drop`]; as of the last [`Self::admit`]).
    pub fn drops(&self, k: usize) -> bool {
        self.limits.get(k).is_some_and(BlockLimit::drops)
    }

    /// Live changes taken up so far (an index from [`Self::admit`] holds
    /// only while this stays the same).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether any limit drops (after taking up a live change).
    pub fn any_drops(&mut self) -> bool {
        self.refresh();
        self.limits.iter().any(BlockLimit::drops)
    }

    /// The highest priority a limit sets (`None`: none sets one), after
    /// taking up a live change.
    pub fn top_priority(&mut self) -> Option<u8> {
        self.refresh();
        self.sched.top_priority()
    }

    /// The limit work charged to `tag` falls under (the tenant's never:
    /// it is no container's) and that limit's priority: the default, the
    /// lowest, without a limit or a class. One lookup.
    pub fn priority_of(&mut self, tag: Option<u64>) -> (Option<usize>, u8) {
        self.refresh();
        let k = self.lookup.limit_of(tag);
        (k, self.sched.priority_of(k))
    }

    /// Counts work limit `k` dropped instead of holding it.
    pub fn count_drop(&mut self, k: usize) {
        if let Some(s) = self.stats.get_mut(k) {
            s.dropped += 1;
        }
        self.publish_used(k);
    }

    /// Holds `h` in limit `k`'s FIFO (as [`Self::admit`] said).
    pub fn hold(&mut self, k: usize, h: T) {
        let now = self.now();
        let start = self.sched.tag(k, self.cost(h.bytes()));
        if let Some(w) = self.waiting.get_mut(k) {
            self.held += 1;
            self.memory += h.memory();
            w.push_back((h, now, start));
        }
        self.publish_used(k);
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
        if self.sched.active() {
            return self.pop_scheduled(now);
        }
        for q in 0..self.waiting.len() {
            let Some((class, bytes)) = self.waiting[q].front().map(|(h, _, _)| (h.class(), h.bytes())) else {
                continue;
            };
            if !self.take(q, class, bytes, now) {
                continue;
            }
            return self.dispatch(q, now);
        }
        None
    }

    /// Lets the first work of FIFO `q` go (its tokens taken).
    fn dispatch(&mut self, q: usize, now: u64) -> Option<T> {
        let (h, at, _) = self.waiting[q].pop_front()?;
        if let Some(stats) = self.stats.get_mut(q) {
            stats.events += 1;
            stats.throttled_ns += now.saturating_sub(at);
        }
        self.held -= 1;
        self.memory -= h.memory();
        self.publish_used(q);
        Some(h)
    }

    /// What held work of `bytes` costs in start tags: its bytes where the
    /// tenant limit (the contended bucket) counts bytes, else one.
    fn cost(&self, bytes: u64) -> u64 {
        let by_bytes = (self.tenant)
            .and_then(|t| self.limits.get(t))
            .is_some_and(BlockLimit::has_bytes);
        if by_bytes {
            bytes.max(1)
        } else {
            1
        }
    }

    /// The FIFOs whose first work waits only for the tenant's tokens (its
    /// own limit's are there; the tenant's own FIFO always).
    fn candidates(&mut self, now: u64) -> Vec<Candidate> {
        let mut out = Vec::new();
        for q in 0..self.waiting.len() {
            let Some((class, bytes, start)) = self.waiting[q]
                .front()
                .map(|(h, _, s)| (h.class(), h.bytes(), *s))
            else {
                continue;
            };
            let own = if Some(q) == self.tenant {
                0
            } else {
                self.wait_in(q, class, bytes, now)
            };
            if own == 0 {
                out.push(Candidate { q, start });
            }
        }
        out
    }

    /// [`Self::pop_ready`] with a scheduler: the candidate it picks goes if
    /// the tenant's tokens are there; no other goes past it.
    fn pop_scheduled(&mut self, now: u64) -> Option<T> {
        let cands = self.candidates(now);
        let went = self.sched.pick(&cands)?;
        let (class, bytes) = self.waiting[went.q]
            .front()
            .map(|(h, _, _)| (h.class(), h.bytes()))?;
        if !self.take(went.q, class, bytes, now) {
            return None;
        }
        self.sched.served(went, &cands);
        self.dispatch(went.q, now)
    }

    /// Time until the first held work can go (`None`: none held).
    pub fn next_wait(&mut self) -> Option<Duration> {
        self.refresh();
        if !self.released.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let fronts: Vec<(usize, Class, u64)> = (self.waiting.iter().enumerate())
            .filter_map(|(q, w)| w.front().map(|(h, _, _)| (q, h.class(), h.bytes())))
            .collect();
        if self.sched.active() {
            // The picked candidate's wait, or the moment another FIFO's own
            // tokens come (it may then be picked).
            let cands = self.candidates(now);
            let picked = self.sched.pick(&cands).map(|c| c.q);
            return (fronts.into_iter())
                .filter(|(q, _, _)| Some(*q) == picked || !cands.iter().any(|c| c.q == *q))
                .map(|(q, class, bytes)| self.wait_of(q, class, bytes, now))
                .min()
                .map(Duration::from_nanos);
        }
        fronts
            .into_iter()
            .map(|(q, class, bytes)| self.wait_of(q, class, bytes, now))
            .min()
            .map(Duration::from_nanos)
    }

    /// Drops the held work `gone` says is gone (its owner went away: a
    /// closed vsock connection), without tokens or a throttle event; the
    /// rest keeps its order.
    pub fn forget_where(&mut self, gone: impl Fn(&T) -> bool) {
        let mut dropped = Vec::new();
        for w in &mut self.waiting {
            w.retain(|(h, _, _)| {
                let keep = !gone(h);
                if !keep {
                    dropped.push(h.memory());
                }
                keep
            });
        }
        self.released.retain(|h| {
            let keep = !gone(h);
            if !keep {
                dropped.push(h.memory());
            }
            keep
        });
        self.held -= dropped.len();
        self.memory -= dropped.iter().sum::<usize>();
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::virtio::limiter::BucketConfig;

    /// Work that takes no bytes, named.
    #[derive(Debug, PartialEq, Eq)]
    struct W(&'static str);

    impl HeldWork for W {
        fn bytes(&self) -> u64 {
            0
        }
    }

    /// The next limits a test hands the throttle.
    type Next = Arc<Mutex<Option<Vec<BlockLimitConfig>>>>;

    /// Tag 1 is container `a`, any other tag a container with no limit;
    /// `next` is handed out once by `changed`.
    struct Lookup {
        paths: Vec<String>,
        next: Next,
    }

    impl LimitLookup for Lookup {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(1)).then(|| self.paths.iter().position(|p| p == "a"))?
        }
        fn changed(&mut self) -> Option<Vec<BlockLimitConfig>> {
            let n = self.next.lock().unwrap().take()?;
            self.paths = n.iter().map(|c| c.path.clone()).collect();
            Some(n)
        }
    }

    /// `size` ops per day: no refill within a test.
    fn limit(path: &str, size: u64) -> BlockLimitConfig {
        BlockLimitConfig {
            path: path.into(),
            ops: Some(BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: MAX_DAY,
            }),
            bytes: None,
            ..Default::default()
        }
    }

    const MAX_DAY: Duration = crate::virtio::limiter::MAX_REFILL;

    fn throttle(limits: &[BlockLimitConfig]) -> (Throttle<W>, Next) {
        let next = Arc::new(Mutex::new(None));
        let lookup = Lookup {
            paths: limits.iter().map(|c| c.path.clone()).collect(),
            next: Arc::clone(&next),
        };
        (Throttle::new(limits, Box::new(lookup)).unwrap(), next)
    }

    #[test]
    fn every_request_draws_from_the_tenant_bucket_too() {
        // Tenant: 3 ops; `a`: 10. Tag 1 is `a`, tag 2 has no limit.
        let (mut t, next) = throttle(&[limit("tenant", 3), limit("a", 10)]);
        assert_eq!(t.admit(Some(1), 0), None);
        assert_eq!(t.admit(Some(2), 0), None);
        assert_eq!(t.admit(None, 0), None, "unattributed draws from the tenant too");
        // The tenant is empty: `a` waits in its own FIFO, the rest in the tenant's.
        assert_eq!(t.admit(Some(1), 0), Some(1));
        t.hold(1, W("a"));
        assert_eq!(t.admit(Some(2), 0), Some(0));
        t.hold(0, W("b"));
        assert_eq!(t.admit(None, 0), Some(0));
        t.hold(0, W("u"));
        assert!(t.next_wait().unwrap() > Duration::from_secs(3600));
        assert_eq!(t.pop_ready(), None);
        // The tenant limit removed live: what its FIFO held goes at once;
        // `a`'s held work then takes `a`'s tokens, of which the refusals
        // took none (both buckets or neither): 10 - 1 - 1 = 8 more pass.
        *next.lock().unwrap() = Some(vec![limit("a", 10)]);
        assert_eq!(t.pop_ready(), Some(W("b")));
        assert_eq!(t.pop_ready(), Some(W("u")));
        assert_eq!(t.pop_ready(), Some(W("a")));
        for i in 0..8 {
            assert_eq!(t.admit(Some(1), 0), None, "pass {i}");
        }
        assert_eq!(t.admit(Some(1), 0), Some(0));
        assert_eq!(t.admit(Some(2), 0), None, "no tenant limit any more");
    }

    #[test]
    fn a_live_change_keeps_tokens_and_releases_what_a_removed_limit_held() {
        let (mut t, next) = throttle(&[limit("a", 2)]);
        assert_eq!(t.admit(Some(1), 0), None);
        assert_eq!(t.admit(Some(1), 0), None);
        assert_eq!(t.admit(Some(1), 0), Some(0));
        t.hold(0, W("1"));
        assert_eq!(t.admit(Some(1), 0), Some(0), "behind the held one");
        t.hold(0, W("2"));
        // A larger bucket: the empty one stays empty (no token created).
        *next.lock().unwrap() = Some(vec![limit("a", 100)]);
        assert_eq!(t.pop_ready(), None);
        assert_eq!(t.held(), 2);
        // A new limit on another path starts full; `a` removed: its held
        // work goes at once, in order, without tokens.
        *next.lock().unwrap() = Some(vec![limit("b", 1)]);
        assert_eq!(t.next_wait(), Some(Duration::ZERO));
        assert_eq!(t.pop_ready(), Some(W("1")));
        assert_eq!(t.pop_ready(), Some(W("2")));
        assert_eq!((t.pop_ready(), t.held(), t.next_wait()), (None, 0, None));
        assert_eq!(t.admit(Some(1), 0), None, "`a` is no longer limited");
    }
}
