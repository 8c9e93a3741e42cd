//! Guest CPU limits (docs/limits-per-container.md, "Guest CPU"): a share
//! of guest run time per period for a container, enforced by holding the
//! vCPUs whose slot names it out of the guest.
//!
//! The limiter lives on the sampler's thread and sees exactly the run time
//! the sampler charges (each charge, to the container it goes to: sampled
//! or split by the switch log). Each limit is a [`CpuBudget`]: one period's
//! run time in ns that refills at the limit's rate and goes into debt when
//! a tick charges more than is left, so over time a container gets its
//! share however late a tick notices it is spent. At each tick, after the
//! charges, each vCPU whose slot names a container (or a VM, for the tenant
//! limit) with a spent budget gets its throttle word set (the guest can
//! switch work); if its slot still names it a grace period later and it
//! ran in the last tick, its thread is held ([`crate::vcpu::Hold`]) until
//! the budget refills or the slot names another principal.

use std::sync::Arc;

use accounting::abi;
use accounting::ledger::Accounting;
use devices::acct::{TagReader, TagRegion};
use devices::virtio::limiter::{BlockLimit, BlockLimitConfig, LimitLookup, LimitState, TENANT_PATH};

use crate::live_limits::{limit_index, RegistryLookup};
use crate::vcpu::VcpuShared;

/// How long a vCPU's throttle word is set before the vCPU is held, if its
/// slot still names the spent principal: the first sampler tick at which
/// the vCPU's thread has had at least this much CPU time since the word
/// was set (its CPU clock, on which guest time counts and time waiting for
/// a host core does not: a cooperative guest reacts within microseconds
/// once it runs, but on a busy host its thread may wait for a core for
/// tens of ms while still inside `KVM_RUN`). Where the clock cannot be
/// read, wall time. The run time a guest that ignores its word runs
/// meanwhile is taken back as debt.
pub const GRACE_NS: u64 = 2_000_000;

/// The longest grace in wall time, whatever the vCPU thread's CPU clock
/// says: a thread that waits for a host core is still inside `KVM_RUN`, so
/// its wait is charged as run time, and a longer grace would let that debt
/// grow past what a short run pays back.
pub const MAX_GRACE_WALL_NS: u64 = 50_000_000;

/// Periods of a limit's whole budget its debt may reach: run time charged
/// beyond that (ticks that found the budget spent too late, many vCPUs at
/// once) is forgiven, so a hold never lasts more than this many periods.
pub const MAX_DEBT_PERIODS: i128 = 16;

/// One limit's run-time budget: a token bucket of ns that may go into
/// debt. Refill is exact (the fraction of a ns earned is carried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuBudget {
    size: u64,
    period_ns: u64,
    /// Tokens (ns); negative: debt.
    tokens: i128,
    credited_ns: u64,
    carry: u128,
}

impl CpuBudget {
    /// A full budget of `size` ns per `period_ns`, at `now_ns`.
    pub fn new(size: u64, period_ns: u64, now_ns: u64) -> Self {
        Self {
            size,
            period_ns: period_ns.max(1),
            tokens: i128::from(size),
            credited_ns: now_ns,
            carry: 0,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.credited_ns);
        self.credited_ns = self.credited_ns.max(now_ns);
        let size = i128::from(self.size);
        if elapsed == 0 {
            return;
        }
        if self.tokens >= size {
            self.carry = 0;
            return;
        }
        let total = u128::from(elapsed) * u128::from(self.size) + self.carry;
        let earned = total / u128::from(self.period_ns);
        let room = u128::try_from(size - self.tokens).unwrap_or(0);
        if earned >= room {
            self.tokens = size;
            self.carry = 0;
        } else {
            self.tokens += i128::try_from(earned).unwrap_or(0);
            self.carry = total % u128::from(self.period_ns);
        }
    }

    /// Takes `ns` of run time charged at `now_ns` (into debt if need be,
    /// down to [`MAX_DEBT_PERIODS`] budgets).
    pub fn charge(&mut self, ns: u64, now_ns: u64) {
        self.refill(now_ns);
        let floor = -MAX_DEBT_PERIODS * i128::from(self.size);
        self.tokens = (self.tokens - i128::from(ns)).max(floor);
    }

    /// Tokens at `now_ns` (negative: debt).
    pub fn tokens(&mut self, now_ns: u64) -> i128 {
        self.refill(now_ns);
        self.tokens
    }

    /// Whether nothing is left at `now_ns`.
    pub fn spent(&mut self, now_ns: u64) -> bool {
        self.tokens(now_ns) <= 0
    }

    /// Takes a new size and period (a live change), creating no tokens:
    /// refill is credited up to `now_ns`, then at most the new size is kept.
    pub fn reconfigure(&mut self, size: u64, period_ns: u64, now_ns: u64) {
        self.refill(now_ns);
        *self = Self {
            tokens: self.tokens.min(i128::from(size)),
            ..Self::new(size, period_ns, now_ns)
        };
    }
}

/// One limit as the limiter keeps it.
struct Limit {
    config: BlockLimitConfig,
    budget: CpuBudget,
    /// Holds it made, and their ns, as the vCPU threads measured them.
    holds: u64,
    held_ns: u64,
}

impl Limit {
    fn new(config: BlockLimitConfig, now_ns: u64) -> Option<Self> {
        let b = config.ops?;
        let period = u64::try_from(b.refill_time.as_nanos()).unwrap_or(u64::MAX);
        Some(Self {
            budget: CpuBudget::new(b.size, period, now_ns),
            config,
            holds: 0,
            held_ns: 0,
        })
    }
}

/// One vCPU as the limiter sees it.
struct Seen {
    shared: Arc<VcpuShared>,
    reader: TagReader,
    /// What its throttle word holds (as last written).
    word: u64,
    /// The limit that word is about.
    word_limit: Option<usize>,
    /// The vCPU thread's CPU time (else the wall time), and the wall time,
    /// when its slot's principal was first found spent: the grace's start.
    spent_since: Option<(u64, u64)>,
    /// The limit of its latest hold (kept after the hold is lifted, so
    /// the hold's ns, which its thread adds when it wakes, go to it), and
    /// its hold totals when last read.
    held_for: Option<usize>,
    totals: (u64, u64),
}

/// The guest CPU limits of a VM.
pub struct CpuLimiter {
    acct: Arc<Accounting>,
    lookup: RegistryLookup,
    limits: Vec<Limit>,
    paths: Vec<String>,
    tenant: Option<usize>,
    vcpus: Vec<Seen>,
    /// Run time charged this tick: (container index, ns).
    pending: Vec<(usize, u64)>,
    /// The published states' clock origin.
    epoch: std::time::Instant,
}

impl CpuLimiter {
    /// A limiter over `configs` (the CPU limiter's form, see
    /// `DeviceKind::Cpu`), taking live changes from `lookup`.
    pub fn new(
        acct: &Arc<Accounting>,
        region: &Arc<TagRegion>,
        vcpus: &[Arc<VcpuShared>],
        configs: Vec<BlockLimitConfig>,
        lookup: RegistryLookup,
    ) -> Self {
        let mut l = Self {
            acct: Arc::clone(acct),
            lookup,
            limits: Vec::new(),
            paths: Vec::new(),
            tenant: None,
            vcpus: vcpus
                .iter()
                .enumerate()
                .map(|(i, shared)| Seen {
                    shared: Arc::clone(shared),
                    reader: region.reader(i),
                    word: 0,
                    word_limit: None,
                    spent_since: None,
                    held_for: None,
                    totals: (0, 0),
                })
                .collect(),
            pending: Vec::new(),
            epoch: std::time::Instant::now(),
        };
        l.take(configs);
        l
    }

    /// Takes a (new) list of limits: a kept path keeps its budget (no
    /// tokens created) and totals; a new one starts full. Every hold and
    /// throttle word is recomputed at the next tick.
    fn take(&mut self, configs: Vec<BlockLimitConfig>) {
        let now = self.acct.now_ns();
        let mut old: Vec<Option<Limit>> = std::mem::take(&mut self.limits).into_iter().map(Some).collect();
        let old_paths = std::mem::take(&mut self.paths);
        for c in configs {
            let kept = old_paths
                .iter()
                .position(|p| *p == c.path)
                .and_then(|i| old[i].take());
            let limit = match (kept, c.ops) {
                (Some(mut k), Some(b)) => {
                    let period = u64::try_from(b.refill_time.as_nanos()).unwrap_or(u64::MAX);
                    k.budget.reconfigure(b.size, period, now);
                    k.config = c;
                    Some(k)
                }
                (_, _) => Limit::new(c, now),
            };
            if let Some(limit) = limit {
                self.paths.push(limit.config.path.clone());
                self.limits.push(limit);
            }
        }
        self.tenant = self.paths.iter().position(|p| p == TENANT_PATH);
        for v in &mut self.vcpus {
            v.word_limit = None;
            v.spent_since = None;
            v.held_for = None;
        }
    }

    /// Notes `ns` of run time the sampler charged to the container at
    /// `container` (a registry index).
    pub fn charged(&mut self, container: usize, ns: u64) {
        if !self.limits.is_empty() && ns > 0 {
            self.pending.push((container, ns));
        }
    }

    /// One tick, after the sampler's charges: debits the budgets, then
    /// sets or clears each vCPU's throttle word and hold. `ran[i]`: vCPU
    /// `i` was charged run time this tick.
    pub fn tick(&mut self, ran: &[bool]) {
        if let Some(configs) = self.lookup.changed() {
            self.take(configs);
        }
        let now = self.acct.now_ns();
        if self.limits.is_empty() {
            for v in &mut self.vcpus {
                release(v);
            }
            self.pending.clear();
            self.lookup.publish(&[]);
            return;
        }
        // Under one lock of the registry, only what this tick needs: the
        // limit of each charged container and of each vCPU's slot (and the
        // slot container's guest id).
        let tags: Vec<u64> = self
            .vcpus
            .iter_mut()
            .map(|v| v.reader.tag().unwrap_or(0))
            .collect();
        let pending = std::mem::take(&mut self.pending);
        let (charges, slots) = {
            let reg = self.acct.registry();
            let limit_of = |c: usize| {
                reg.containers()
                    .get(c)
                    .and_then(|row| limit_index(&self.paths, &row.path))
            };
            let charges: Vec<(Option<usize>, u64)> =
                pending.iter().map(|&(c, ns)| (limit_of(c), ns)).collect();
            let slots: Vec<(Option<usize>, u32)> = tags
                .iter()
                .map(|&t| {
                    let c = reg.resolve(t).container;
                    (limit_of(c), reg.containers().get(c).map_or(0, |row| row.guest_id))
                })
                .collect();
            (charges, slots)
        };
        for (k, ns) in charges {
            if let Some(k) = k {
                self.limits[k].budget.charge(ns, now);
            }
            if let Some(t) = self.tenant {
                self.limits[t].budget.charge(ns, now);
            }
        }
        let spent: Vec<bool> = self.limits.iter_mut().map(|l| l.budget.spent(now)).collect();
        for (i, v) in self.vcpus.iter_mut().enumerate() {
            // The hold totals its thread measured, to the limit it held for.
            let totals = v.shared.hold.totals();
            if let Some(k) = v.held_for {
                if let Some(l) = self.limits.get_mut(k) {
                    l.holds += totals.0 - v.totals.0;
                    l.held_ns += totals.1 - v.totals.1;
                }
            }
            v.totals = totals;
            let tag = tags[i];
            let (limit, id) = slots[i];
            let own = limit.filter(|&k| spent[k]);
            let tenant = self.tenant.filter(|&t| spent[t]);
            // The throttle word: about the principal found spent, kept
            // (even once the slot names another) until that budget refills.
            if v.word_limit
                .is_some_and(|k| !spent.get(k).copied().unwrap_or(false))
            {
                v.word_limit = None;
                v.word = 0;
            }
            let word = match (own, tenant) {
                (Some(k), _) => Some((k, abi::THROTTLE_SPENT | u64::from(id))),
                (None, Some(t)) => Some((t, abi::THROTTLE_SPENT | abi::THROTTLE_TENANT | u64::from(id))),
                (None, None) => None,
            };
            if let Some((k, w)) = word {
                v.word_limit = Some(k);
                v.word = w;
            }
            v.reader.set_throttle(v.word);
            // The hold: after the grace, only while the slot names it.
            let Some((k, _)) = word else {
                v.spent_since = None;
                release(v);
                continue;
            };
            let clock = v.shared.hold.thread_cpu_ns().unwrap_or(now);
            let (since, since_wall) = *v.spent_since.get_or_insert((clock, now));
            let ran = ran.get(i).copied().unwrap_or(false);
            let graced = clock.saturating_sub(since) >= GRACE_NS
                || now.saturating_sub(since_wall) >= MAX_GRACE_WALL_NS;
            if v.shared.hold.is_set() || (ran && graced) {
                if !v.shared.hold.is_set() {
                    v.held_for = Some(k);
                }
                v.shared.hold.set(tag);
            }
        }
        self.publish(now);
    }

    /// Shows each limit's state (the API's `/v1/limits`, device `cpu`).
    fn publish(&mut self, now: u64) {
        let epoch = self.epoch;
        let at_ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let held: Vec<u64> = (0..self.limits.len())
            .map(|k| {
                self.vcpus
                    .iter()
                    .filter(|v| v.held_for == Some(k) && v.shared.hold.is_set())
                    .count() as u64
            })
            .collect();
        let states: Vec<LimitState> = self
            .limits
            .iter_mut()
            .zip(held)
            .map(|(l, held)| {
                let tokens = u64::try_from(l.budget.tokens(now).max(0)).unwrap_or(0);
                LimitState {
                    path: Arc::from(l.config.path.as_str()),
                    buckets: BlockLimit::with_ops_tokens(&l.config, tokens, at_ns)
                        .unwrap_or_else(|_| BlockLimit::unlimited()),
                    at_ns,
                    epoch,
                    held,
                    throttle_events: l.holds + held,
                    throttled_ns: l.held_ns,
                    dropped: 0,
                }
            })
            .collect();
        self.lookup.publish(&states);
    }

    /// Lifts every hold and clears every throttle word (the VM stops).
    pub fn release_all(&mut self) {
        for v in &mut self.vcpus {
            release(v);
            if v.word != 0 {
                v.word = 0;
                v.reader.set_throttle(0);
            }
        }
    }
}

/// Lifts `v`'s hold, if any.
fn release(v: &mut Seen) {
    v.shared.hold.lift();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_budget_refills_exactly_and_goes_into_debt() {
        // 20 % of 100 ms: 20 ms per period.
        let mut b = CpuBudget::new(20 * MS, 100 * MS, 0);
        b.charge(24 * MS, 4 * MS);
        // 4 ms at 20 %: 0.8 ms earned, but the bucket was full.
        assert_eq!(b.tokens(4 * MS), -4 * i128::from(MS));
        assert!(b.spent(4 * MS));
        // 20 ms later: 4 ms earned, the debt is paid.
        assert_eq!(b.tokens(24 * MS), 0);
        assert!(b.spent(24 * MS));
        assert_eq!(b.tokens(24 * MS + 5), 1);
        // A fraction of a ns is carried, not lost: 1 ns per 5 ns.
        let mut b = CpuBudget::new(1, 5, 0);
        b.charge(1, 0);
        for t in 1..5 {
            assert_eq!(b.tokens(t), 0, "{t}");
        }
        assert_eq!(b.tokens(5), 1);
        // Never more than the size.
        assert_eq!(b.tokens(1_000), 1);
    }

    #[test]
    fn debt_is_bounded_and_a_change_creates_no_tokens() {
        let mut b = CpuBudget::new(10 * MS, 100 * MS, 0);
        b.charge(u64::MAX, 0);
        assert_eq!(b.tokens(0), -MAX_DEBT_PERIODS * i128::from(10 * MS));
        let mut b = CpuBudget::new(10 * MS, 100 * MS, 0);
        b.charge(4 * MS, 0);
        b.reconfigure(50 * MS, 100 * MS, 0);
        assert_eq!(b.tokens(0), i128::from(6 * MS), "kept, not topped up");
        b.reconfigure(2 * MS, 100 * MS, 0);
        assert_eq!(b.tokens(0), i128::from(2 * MS), "cut to the new size");
    }

    proptest::proptest! {
        /// Over any sequence of charges, what was run (charged) never
        /// exceeds the budget's size plus its rate times the time, plus
        /// what a spent budget still let through in one charge.
        #[test]
        fn run_time_never_exceeds_size_plus_rate(steps in proptest::collection::vec((0u64..10 * MS, 0u64..5 * MS), 1..200)) {
            let (size, period) = (10 * MS, 50 * MS);
            let mut b = CpuBudget::new(size, period, 0);
            let (mut now, mut charged) = (0u64, 0u128);
            for (dt, ns) in steps {
                now += dt;
                if !b.spent(now) {
                    b.charge(ns, now);
                    charged += u128::from(ns);
                }
                let allowed = u128::from(size) + u128::from(now) * u128::from(size) / u128::from(period) + u128::from(5 * MS);
                proptest::prop_assert!(charged <= allowed);
                proptest::prop_assert!(b.tokens(now) <= i128::from(size));
            }
        }
    }
}
