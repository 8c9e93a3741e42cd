//! Per-container token buckets for virtio-blk and virtio-net TX
//! (docs/limits-per-container.md).
//!
//! A [`TokenBucket`] is Firecracker's RateLimiter bucket by its names: a
//! `size` (tokens a full bucket holds), a `refill_time` (how long an empty
//! bucket takes to fill) and an optional `one_time_burst` (tokens spent
//! first, never refilled). Time is passed in as nanoseconds of a monotonic
//! clock so the arithmetic is tested with a fake one.
//!
//! A [`BlockLimit`] is one container path's pair of buckets (operations and
//! bytes; on virtio-net TX an operation is a frame). The device asks a [`LimitLookup`] which limit, if any, a request's
//! tag falls under; the VMM answers from the registry (the container's
//! path), so a limit applies to whatever live container has that path.

use std::time::Duration;

/// Why a bucket's configuration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// A bucket of size 0 would never let anything through.
    #[error("a bucket's size must be at least 1")]
    ZeroSize,
    /// A refill time of 0 would be an unlimited rate.
    #[error("a bucket's refill time must be at least 1 ms")]
    ZeroRefill,
    /// Refill time past a day: almost surely a unit mistake.
    #[error("a bucket's refill time must be at most one day")]
    RefillTooLong,
}

/// How a bucket is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens a full bucket holds.
    pub size: u64,
    /// Tokens available once, before the bucket's own, never refilled.
    pub one_time_burst: u64,
    /// Time for an empty bucket to fill completely.
    pub refill_time: Duration,
}

/// Longest refill time accepted.
pub const MAX_REFILL: Duration = Duration::from_secs(24 * 3600);

/// A token bucket. Tokens are never created beyond `size` per
/// `refill_time` (refill rounds time up, so a fraction of a token is never
/// credited early) and never go negative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    burst: u64,
    budget: u64,
    /// Time up to which refill has been credited.
    credited_ns: u64,
    /// Token fraction earned but not yet credited, in units of 1/`refill_ns`.
    carry: u128,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`.
    pub fn new(c: BucketConfig, now_ns: u64) -> Result<Self, BucketError> {
        if c.size == 0 {
            return Err(BucketError::ZeroSize);
        }
        if c.refill_time < Duration::from_millis(1) {
            return Err(BucketError::ZeroRefill);
        }
        if c.refill_time > MAX_REFILL {
            return Err(BucketError::RefillTooLong);
        }
        Ok(Self {
            size: c.size,
            refill_ns: u64::try_from(c.refill_time.as_nanos()).unwrap_or(u64::MAX),
            burst: c.one_time_burst,
            budget: c.size,
            credited_ns: now_ns,
            carry: 0,
        })
    }

    /// Takes configuration `c` (a live change), creating no tokens: the
    /// tokens earned up to `now_ns` are credited, then the bucket keeps at
    /// most the new size of them and at most the new burst of what is left
    /// of its burst; the fraction of a token not yet earned is dropped.
    pub fn reconfigure(&mut self, c: BucketConfig, now_ns: u64) -> Result<(), BucketError> {
        let fresh = Self::new(c, now_ns)?;
        self.refill(now_ns);
        *self = Self {
            budget: self.budget.min(fresh.size),
            burst: self.burst.min(fresh.burst),
            ..fresh
        };
        Ok(())
    }

    /// Tokens available now (the bucket's plus what is left of the burst).
    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.budget.saturating_add(self.burst)
    }

    /// Credits the tokens earned since the last refill. Exact: the
    /// fraction of a token earned so far is carried (`carry` / `refill_ns`),
    /// so tokens are neither created early nor lost to rounding.
    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.credited_ns);
        self.credited_ns = self.credited_ns.max(now_ns);
        if elapsed == 0 {
            return;
        }
        if self.budget >= self.size {
            self.carry = 0;
            return;
        }
        let (size, refill) = (u128::from(self.size), u128::from(self.refill_ns));
        let total = u128::from(elapsed) * size + self.carry;
        let earned = total / refill;
        let room = u128::from(self.size - self.budget);
        if earned >= room {
            self.budget = self.size;
            self.carry = 0;
        } else {
            // earned < room <= size: it fits in a u64.
            self.budget += u64::try_from(earned).unwrap_or(0);
            self.carry = total % refill;
        }
    }

    /// Takes `n` tokens (a request larger than the bucket takes a full
    /// bucket) if they are there; else takes nothing.
    pub fn try_take(&mut self, n: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        let n = n.min(self.size.saturating_add(self.burst));
        let from_burst = n.min(self.burst);
        let rest = n - from_burst;
        // A request larger than the bucket was cut to the bucket's size:
        // it waits for a full bucket and empties it.
        if rest > self.budget {
            return false;
        }
        self.burst -= from_burst;
        self.budget = self.budget.saturating_sub(rest);
        true
    }

    /// Nanoseconds from `now_ns` until `try_take(n)` can succeed (0: now).
    pub fn wait_ns(&mut self, n: u64, now_ns: u64) -> u64 {
        self.refill(now_ns);
        let need = n.saturating_sub(self.burst).min(self.size);
        if need <= self.budget {
            return 0;
        }
        let missing = u128::from(need - self.budget);
        let (size, refill) = (u128::from(self.size), u128::from(self.refill_ns));
        // The least t with (t * size + carry) / refill >= missing.
        let wait = (missing * refill)
            .saturating_sub(self.carry)
            .div_ceil(size)
            .max(1);
        u64::try_from(wait).unwrap_or(u64::MAX)
    }
}

/// One container path's limit on a device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockLimitConfig {
    /// The container path it applies to (`unattributed` included).
    pub path: String,
    /// Requests (of any kind).
    pub ops: Option<BucketConfig>,
    /// Data bytes of reads and writes.
    pub bytes: Option<BucketConfig>,
    /// Buckets only reads also draw from (virtio-blk `blk-read-*`).
    pub read: PairConfig,
    /// Buckets only writes also draw from (`blk-write-*`).
    pub write: PairConfig,
    /// Its priority and share among the limits contending for the tenant
    /// limit's tokens; `None`: it sets none ([`crate::virtio::sched`]).
    pub class: Option<crate::virtio::sched::SchedClass>,
    /// Work over the limit is dropped instead of held (`net-rx-drop`:
    /// virtio-net RX only; the other devices never set it).
    pub drop: bool,
}

/// The operations and bytes buckets of one class of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairConfig {
    /// Requests of the class.
    pub ops: Option<BucketConfig>,
    /// Their data bytes.
    pub bytes: Option<BucketConfig>,
}

/// Which class-specific buckets a request also draws from, besides the
/// buckets every request draws from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Class {
    /// None (a flush, a GET_ID, a net frame, vsock bytes).
    #[default]
    Other,
    /// The read buckets (a virtio-blk IN request).
    Read,
    /// The write buckets (a virtio-blk OUT request).
    Write,
}

/// The path of the tenant limit: a bucket every request of the device also
/// draws from, whatever container it is charged to (`unattributed`
/// included). A [`LimitLookup`] never answers its index.
pub const TENANT_PATH: &str = "tenant";

/// Which of the device's limits (an index into the list it was given), if
/// any, a request charged to `tag` falls under. Implemented by the VMM over
/// the registry; called once per request, only on a device with limits.
pub trait LimitLookup: Send {
    /// The index of the limit of the container `tag` charges, if any.
    fn limit_of(&mut self, tag: Option<u64>) -> Option<usize>;

    /// The device's new limits, if they changed (a live change) since the
    /// last call; from then on [`Self::limit_of`] indexes the new list.
    /// Called before each use of the limits: it must be cheap when nothing
    /// changed (an atomic load), and never blocks the device for long.
    fn changed(&mut self) -> Option<Vec<BlockLimitConfig>> {
        None
    }

    /// The tenant buckets this device shares with the other devices of its
    /// kind (`None`: the tenant limit, if any, is the device's own).
    fn shared_tenant(&self) -> Option<crate::virtio::shared_tenant::SharedTenant> {
        None
    }

    /// Shows the state of the device's limits (for the API): called after
    /// the limits were used or changed, only on a device that has limits.
    fn publish(&mut self, _states: &[LimitState]) {}

    /// Shows the new state of limit `k` alone (its buckets were used, or
    /// it held or let go work): cheaper than [`Self::publish`], no
    /// allocation.
    fn publish_one(&mut self, _k: usize, _state: &LimitState) {}
}

/// One limit's state on one device, as [`LimitLookup::publish`] shows it.
#[derive(Clone, Debug)]
pub struct LimitState {
    /// The container path (or pattern) it applies to.
    pub path: std::sync::Arc<str>,
    /// Its buckets, as of `at_ns`.
    pub buckets: BlockLimit,
    /// The device clock when published ([`Self::buckets`] refill from there).
    pub at_ns: u64,
    /// The device clock's origin.
    pub epoch: std::time::Instant,
    /// Work it holds now.
    pub held: u64,
    /// Work it held and let go (or holds), since it was set.
    pub throttle_events: u64,
    /// Nanoseconds the work it let go was held.
    pub throttled_ns: u64,
    /// Work it dropped instead of holding ([`BlockLimitConfig::drop`]).
    pub dropped: u64,
}

impl LimitState {
    /// The tokens of its operations and bytes buckets now (`None`: no such
    /// bucket), counting the refill since it was published.
    pub fn tokens_now(&self) -> (Option<u64>, Option<u64>) {
        self.class_tokens_now(Class::Other)
    }

    /// The same for the buckets only requests of `class` draw from
    /// ([`Class::Other`]: those every request draws from).
    pub fn class_tokens_now(&self, class: Class) -> (Option<u64>, Option<u64>) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut b = self.buckets.clone();
        let now = now.max(self.at_ns);
        match b.own(class) {
            Some(p) => p.tokens_now(now),
            None => b.all.tokens_now(now),
        }
    }
}

/// One class of work's pair of live buckets: operations and bytes.
#[derive(Clone, Debug, Default)]
struct Pair {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Pair {
    fn new(c: PairConfig, now_ns: u64) -> Result<Self, BucketError> {
        Ok(Self {
            ops: c.ops.map(|b| TokenBucket::new(b, now_ns)).transpose()?,
            bytes: c.bytes.map(|b| TokenBucket::new(b, now_ns)).transpose()?,
        })
    }

    /// This pair under configuration `c` (see [`BlockLimit::reconfigure`]).
    fn reconfigured(&self, c: PairConfig, now_ns: u64) -> Result<Self, BucketError> {
        fn one(
            old: &Option<TokenBucket>,
            c: Option<BucketConfig>,
            now_ns: u64,
        ) -> Result<Option<TokenBucket>, BucketError> {
            match (old, c) {
                (_, None) => Ok(None),
                (None, Some(c)) => TokenBucket::new(c, now_ns).map(Some),
                (Some(b), Some(c)) => {
                    let mut b = b.clone();
                    b.reconfigure(c, now_ns)?;
                    Ok(Some(b))
                }
            }
        }
        Ok(Self {
            ops: one(&self.ops, c.ops, now_ns)?,
            bytes: one(&self.bytes, c.bytes, now_ns)?,
        })
    }

    /// Takes one op and `bytes` (callers checked [`Self::wait_ns`] is 0).
    fn take(&mut self, bytes: u64, now_ns: u64) -> bool {
        let a = self.ops.as_mut().is_none_or(|b| b.try_take(1, now_ns));
        let c = bytes == 0 || self.bytes.as_mut().is_none_or(|b| b.try_take(bytes, now_ns));
        a && c
    }

    fn wait_ns(&mut self, bytes: u64, now_ns: u64) -> u64 {
        let a = self.ops.as_mut().map_or(0, |b| b.wait_ns(1, now_ns));
        let c = match (bytes, self.bytes.as_mut()) {
            (0, _) | (_, None) => 0,
            (n, Some(b)) => b.wait_ns(n, now_ns),
        };
        a.max(c)
    }

    fn tokens_now(&mut self, now_ns: u64) -> (Option<u64>, Option<u64>) {
        (
            self.ops.as_mut().map(|t| t.available(now_ns)),
            self.bytes.as_mut().map(|t| t.available(now_ns)),
        )
    }
}

/// A limit's live buckets: those every request draws from, and those only
/// reads or only writes draw from.
#[derive(Clone, Debug, Default)]
pub struct BlockLimit {
    all: Pair,
    read: Pair,
    write: Pair,
    /// [`BlockLimitConfig::drop`].
    drop: bool,
}

impl BlockLimit {
    pub fn new(c: &BlockLimitConfig, now_ns: u64) -> Result<Self, BucketError> {
        Ok(Self {
            all: Pair::new(
                PairConfig {
                    ops: c.ops,
                    bytes: c.bytes,
                },
                now_ns,
            )?,
            read: Pair::new(c.read, now_ns)?,
            write: Pair::new(c.write, now_ns)?,
            drop: c.drop,
        })
    }

    /// A limit without buckets: nothing is held by it.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// A limit whose `ops` bucket holds `tokens` (at most its size) at
    /// `now_ns`: how the guest CPU limiter shows its run-time budget (a
    /// budget in debt shows 0).
    pub fn with_ops_tokens(c: &BlockLimitConfig, tokens: u64, now_ns: u64) -> Result<Self, BucketError> {
        let mut l = Self::new(c, now_ns)?;
        if let Some(b) = l.all.ops.as_mut() {
            b.budget = tokens.min(b.size);
            b.burst = 0;
        }
        Ok(l)
    }

    /// Whether it has a bytes bucket (of every request or of a class).
    pub fn has_bytes(&self) -> bool {
        self.all.bytes.is_some() || self.read.bytes.is_some() || self.write.bytes.is_some()
    }

    /// Takes configuration `c` (a live change), creating no tokens: a
    /// bucket kept is [`TokenBucket::reconfigure`]d, a new one starts full
    /// (as at start), a removed one is dropped. Nothing changes on error.
    pub fn reconfigure(&mut self, c: &BlockLimitConfig, now_ns: u64) -> Result<(), BucketError> {
        let all = PairConfig {
            ops: c.ops,
            bytes: c.bytes,
        };
        *self = Self {
            all: self.all.reconfigured(all, now_ns)?,
            read: self.read.reconfigured(c.read, now_ns)?,
            write: self.write.reconfigured(c.write, now_ns)?,
            drop: c.drop,
        };
        Ok(())
    }

    /// Whether work over this limit is dropped instead of held
    /// ([`BlockLimitConfig::drop`]).
    pub fn drops(&self) -> bool {
        self.drop
    }

    /// The class's own pair (none for [`Class::Other`]).
    fn own(&mut self, class: Class) -> Option<&mut Pair> {
        match class {
            Class::Other => None,
            Class::Read => Some(&mut self.read),
            Class::Write => Some(&mut self.write),
        }
    }

    /// Takes one op and `bytes` from every bucket a request of any class
    /// draws from, or nothing from any.
    pub fn try_take(&mut self, bytes: u64, now_ns: u64) -> bool {
        self.try_take_as(Class::Other, bytes, now_ns)
    }

    /// Takes one op and `bytes` from every bucket a request of `class`
    /// draws from (the together-buckets and its class's), or nothing.
    pub fn try_take_as(&mut self, class: Class, bytes: u64, now_ns: u64) -> bool {
        if self.wait_ns_as(class, bytes, now_ns) != 0 {
            return false;
        }
        let all = self.all.take(bytes, now_ns);
        let own = self.own(class).is_none_or(|p| p.take(bytes, now_ns));
        all && own
    }

    /// Nanoseconds until a request of `bytes` (of no class) can pass.
    pub fn wait_ns(&mut self, bytes: u64, now_ns: u64) -> u64 {
        self.wait_ns_as(Class::Other, bytes, now_ns)
    }

    /// Nanoseconds until a request of `class` and `bytes` can pass: the
    /// longest wait of the buckets it draws from.
    pub fn wait_ns_as(&mut self, class: Class, bytes: u64, now_ns: u64) -> u64 {
        let all = self.all.wait_ns(bytes, now_ns);
        let own = self.own(class).map_or(0, |p| p.wait_ns(bytes, now_ns));
        all.max(own)
    }
}

/// Parses a rate: `N/s`, `N/ms` or `N/<k>ms` / `N/<k>s` (`10/100ms`), N
/// with an optional binary unit (`K`, `KiB`, `M`, `MiB`, `G`, `GiB`) when
/// `bytes`. The bucket holds N tokens and refills in the period.
pub fn parse_rate(s: &str, bytes: bool) -> Result<BucketConfig, String> {
    let (count, period) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a rate: expected COUNT/PERIOD, e.g. 100/s or 1MiB/s"))?;
    let size = if bytes {
        parse_size(count)?
    } else {
        count
            .parse::<u64>()
            .map_err(|_| format!("`{count}` is not a whole number of operations (e.g. 100/s)"))?
    };
    let refill_time = parse_period(period)?;
    let c = BucketConfig {
        size,
        one_time_burst: 0,
        refill_time,
    };
    TokenBucket::new(c, 0).map_err(|e| format!("`{s}`: {e}"))?;
    Ok(c)
}

/// A byte count: digits and an optional binary unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 4096, 64KiB, 1MiB)"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// A period: digits and `ms` or `s` (`100ms`, `1s`; `s` alone is one second).
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        return Err(format!("`{s}` is not a period: use s or ms, e.g. /s or /100ms"));
    };
    let n: u64 = if n.is_empty() {
        1
    } else {
        n.parse()
            .map_err(|_| format!("`{s}` is not a period: use s or ms, e.g. /s or /100ms"))?
    };
    n.checked_mul(unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("period `{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn bucket(size: u64, refill_ms: u64, burst: u64) -> TokenBucket {
        let c = BucketConfig {
            size,
            one_time_burst: burst,
            refill_time: Duration::from_millis(refill_ms),
        };
        TokenBucket::new(c, 0).unwrap()
    }

    #[test]
    fn a_full_bucket_gives_its_size_then_refuses() {
        let mut b = bucket(3, 1000, 0);
        assert!((0..3).all(|_| b.try_take(1, 0)));
        assert!(!b.try_take(1, 0));
        assert_eq!(b.available(0), 0);
    }

    #[test]
    fn refill_is_proportional_and_never_past_size() {
        let mut b = bucket(10, 1000, 0);
        assert!(b.try_take(10, 0));
        assert_eq!(b.available(100 * MS), 1);
        assert_eq!(b.available(550 * MS), 5);
        assert_eq!(b.available(10_000 * MS), 10);
    }

    #[test]
    fn refill_never_credits_a_fraction_early() {
        // 3 tokens per second: a token every 333.33 ms. Polling every 1 ms
        // for a second must credit exactly 3 tokens, not more.
        let mut b = bucket(3, 1000, 0);
        assert!(b.try_take(3, 0));
        let mut taken = 0;
        for t in 1..=1000u64 {
            while b.try_take(1, t * MS) {
                taken += 1;
            }
        }
        assert_eq!(taken, 3);
        assert!(!b.try_take(1, 1000 * MS));
    }

    #[test]
    fn wait_ns_names_the_moment_tokens_are_there() {
        let mut b = bucket(4, 1000, 0);
        assert!(b.try_take(4, 0));
        let w = b.wait_ns(1, 0);
        assert_eq!(w, 250 * MS);
        assert!(!b.try_take(1, w - 1));
        assert!(b.try_take(1, w));
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_not_refilled() {
        let mut b = bucket(2, 1000, 5);
        assert_eq!(b.available(0), 7);
        assert!((0..7).all(|_| b.try_take(1, 0)));
        assert!(!b.try_take(1, 0));
        assert_eq!(b.available(10_000 * MS), 2);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_on_a_full_bucket() {
        let mut b = bucket(1024, 1000, 0);
        assert!(b.try_take(4096, 0));
        assert!(!b.try_take(4096, 500 * MS));
        assert_eq!(b.wait_ns(4096, 500 * MS), 500 * MS);
        assert!(b.try_take(4096, 1000 * MS));
    }

    #[test]
    fn huge_rates_and_times_do_not_overflow() {
        let mut b = bucket(u64::MAX, 1, u64::MAX);
        assert!(b.try_take(u64::MAX, 0));
        assert!(b.try_take(u64::MAX, 0));
        assert!(b.available(u64::MAX) > 0);
        let mut slow = bucket(1, 24 * 3600 * 1000, 0);
        assert!(slow.try_take(1, 0));
        assert_eq!(slow.wait_ns(1, 0), 24 * 3600 * 1000 * MS);
        assert!(slow.try_take(1, u64::MAX));
    }

    #[test]
    fn zero_and_invalid_configurations_are_refused() {
        let c = BucketConfig {
            size: 0,
            one_time_burst: 0,
            refill_time: Duration::from_secs(1),
        };
        assert_eq!(TokenBucket::new(c, 0), Err(BucketError::ZeroSize));
        let c = BucketConfig {
            size: 1,
            refill_time: Duration::ZERO,
            ..c
        };
        assert_eq!(TokenBucket::new(c, 0), Err(BucketError::ZeroRefill));
        let c = BucketConfig {
            refill_time: Duration::from_secs(90_000),
            ..c
        };
        assert_eq!(TokenBucket::new(c, 0), Err(BucketError::RefillTooLong));
    }

    #[test]
    fn rates_parse_with_units_and_periods() {
        let r = parse_rate("100/s", false).unwrap();
        assert_eq!((r.size, r.refill_time), (100, Duration::from_secs(1)));
        let r = parse_rate("1MiB/s", true).unwrap();
        assert_eq!(r.size, 1 << 20);
        let r = parse_rate("10/100ms", false).unwrap();
        assert_eq!((r.size, r.refill_time), (10, Duration::from_millis(100)));
        for bad in ["0/s", "100", "100/h", "x/s", "1MiB/s", "5/0ms"] {
            assert!(parse_rate(bad, false).is_err(), "{bad}");
        }
        assert!(parse_rate("1TiB/s", true).is_err());
    }

    #[test]
    fn a_limit_takes_from_both_buckets_or_neither() {
        let ops = parse_rate("5/s", false).unwrap();
        let bytes = parse_rate("1KiB/s", true).unwrap();
        let c = BlockLimitConfig {
            path: "a".into(),
            ops: Some(ops),
            bytes: Some(bytes),
            ..Default::default()
        };
        let mut l = BlockLimit::new(&c, 0).unwrap();
        assert!(l.try_take(512, 0));
        assert!(l.try_take(512, 0));
        // Bytes are spent; the ops bucket must not lose a token for it.
        assert!(!l.try_take(512, 0));
        assert!(l.try_take(0, 0));
        assert!(l.try_take(0, 0));
        assert!(l.try_take(0, 0));
        assert!(!l.try_take(0, 0));
        assert_eq!(l.wait_ns(512, 0), 500 * MS);
    }

    #[test]
    fn reconfiguring_keeps_tokens_up_to_the_new_size_and_creates_none() {
        let c = |size, burst, ms| BucketConfig {
            size,
            one_time_burst: burst,
            refill_time: Duration::from_millis(ms),
        };
        let mut b = TokenBucket::new(c(10, 5, 1000), 0).unwrap();
        assert!(b.try_take(12, 0)); // the burst's 5, then 7 of 10
        assert_eq!(b.available(0), 3);
        // A larger bucket: still 3 (never topped up), refilling at the new rate.
        b.reconfigure(c(100, 50, 1000), 0).unwrap();
        assert_eq!(b.available(0), 3);
        assert_eq!(b.available(10 * MS), 4);
        // A smaller one: cut to its size.
        b.reconfigure(c(2, 0, 1000), 10 * MS).unwrap();
        assert_eq!(b.available(10 * MS), 2);
        // Refused: nothing changes.
        assert_eq!(b.reconfigure(c(0, 0, 1000), 10 * MS), Err(BucketError::ZeroSize));
        assert_eq!(b.available(10 * MS), 2);
        // A limit's new bucket starts full; a removed one is gone.
        let ops = Some(c(1, 0, 1000));
        let mut l = BlockLimit::new(
            &BlockLimitConfig {
                path: "a".into(),
                ops,
                bytes: None,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert!(l.try_take(100, 0));
        let both = BlockLimitConfig {
            path: "a".into(),
            ops,
            bytes: Some(c(64, 0, 1000)),
            ..Default::default()
        };
        l.reconfigure(&both, 0).unwrap();
        assert!(!l.try_take(1, 0), "the ops bucket stays empty");
        assert_eq!(l.wait_ns(64, 0), 1000 * MS);
        l.reconfigure(&BlockLimitConfig { ops: None, ..both }, 0).unwrap();
        assert!(l.try_take(64, 0) && !l.try_take(1, 0));
    }

    proptest::proptest! {
        /// Whatever the configurations and when they change, a
        /// reconfiguration never adds tokens: right after it the bucket
        /// holds at most what it held and at most its new size and burst.
        #[test]
        fn reconfiguration_never_creates_tokens(
            steps in proptest::collection::vec(
                (0u64..2_000_000_000, 1u64..1_000, 0u64..1_000, 1u64..5_000, 0u64..2_000),
                1..40,
            )
        ) {
            let mut b = TokenBucket::new(BucketConfig {
                size: 10,
                one_time_burst: 3,
                refill_time: Duration::from_millis(100),
            }, 0).unwrap();
            let mut now = 0u64;
            for (dt, size, burst, ms, take) in steps {
                now += dt;
                let _ = b.try_take(take, now);
                let before = b.available(now);
                let c = BucketConfig { size, one_time_burst: burst, refill_time: Duration::from_millis(ms) };
                b.reconfigure(c, now).unwrap();
                let after = b.available(now);
                proptest::prop_assert!(after <= before, "{after} > {before}");
                proptest::prop_assert!(after <= size + burst);
            }
        }
    }

    #[test]
    fn a_request_passes_the_together_buckets_and_its_class_buckets() {
        let day = Duration::from_secs(24 * 3600);
        let c = |size| BucketConfig {
            size,
            one_time_burst: 0,
            refill_time: day,
        };
        let mut l = BlockLimit::new(
            &BlockLimitConfig {
                path: "a".into(),
                ops: Some(c(3)),
                read: PairConfig {
                    ops: Some(c(1)),
                    bytes: None,
                },
                write: PairConfig {
                    ops: None,
                    bytes: Some(c(100)),
                },
                ..Default::default()
            },
            0,
        )
        .unwrap();
        // One read passes; the second waits for the read bucket only.
        assert!(l.try_take_as(Class::Read, 10, 0));
        assert!(!l.try_take_as(Class::Read, 10, 0));
        assert!(l.wait_ns_as(Class::Read, 10, 0) > 0);
        // Writes draw from the write bytes: 100 passes, then 1 more waits,
        // and the refused ones took nothing from the together bucket.
        assert!(l.try_take_as(Class::Write, 100, 0));
        assert!(!l.try_take_as(Class::Write, 1, 0));
        // A flush draws from the together bucket alone: its last token.
        assert_eq!(l.wait_ns_as(Class::Other, 0, 0), 0);
        assert!(l.try_take(0, 0));
        assert!(!l.try_take(0, 0));
        assert!(!l.try_take_as(Class::Write, 0, 0));
    }
}
