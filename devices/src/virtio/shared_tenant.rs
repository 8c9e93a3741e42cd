//! The tenant limit's buckets, shared by every device of one kind
//! (docs/limits-per-container.md, "The tenant limit"): every disk draws
//! from one set of `blk-*` tenant buckets, every net device's TX from one
//! set of `net-tx-*` buckets, and so on, so a tenant limit caps the whole
//! VM, not each device.
//!
//! All virtio devices run on the one device thread, so the lock is never
//! contended; it is there because the devices are `Send` (built on the
//! main thread, moved to the device thread). The buckets keep their own
//! clock (every device's throttle has its own epoch).
//!
//! Each device's [`crate::virtio::throttle::Throttle`] still owns its held
//! work and its timer. Tokens one device spends only make the others' held
//! work due later, never sooner, so a device's timer, armed from the
//! shared bucket when it held work, fires no later than the work could go;
//! if another device took the tokens meanwhile, it finds them missing and
//! re-arms from the bucket again. A live change that adds tokens (a larger
//! bucket) wakes every device through its wake eventfd.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::virtio::limiter::{BlockLimit, BlockLimitConfig, Class, LimitState};

/// The tenant buckets of one kind of device; clones share them.
#[derive(Clone, Debug)]
pub struct SharedTenant(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    /// The configuration the buckets have (`None`: no tenant limit).
    config: Option<BlockLimitConfig>,
    limit: BlockLimit,
}

impl Default for SharedTenant {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedTenant {
    /// No tenant limit yet: a device's throttle configures it.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            epoch: Instant::now(),
            config: None,
            limit: BlockLimit::unlimited(),
        })))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(inner: &Inner) -> u64 {
        u64::try_from(inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes the tenant limit `c` (`None`: there is none), as each device
    /// does at start and when it takes up a live change: the first device
    /// to see a configuration sets it (a new limit starts full, a changed
    /// one is reconfigured, creating no tokens); the others, seeing the
    /// same, change nothing. Refused (a bug: the VMM validated it) leaves
    /// the buckets as they were.
    pub(crate) fn configure(
        &self,
        c: Option<&BlockLimitConfig>,
    ) -> Result<(), crate::virtio::limiter::BucketError> {
        let mut inner = self.inner();
        if inner.config.as_ref() == c {
            return Ok(());
        }
        let now = Self::now(&inner);
        let limit = match (c, inner.config.is_some()) {
            (None, _) => BlockLimit::unlimited(),
            (Some(c), false) => BlockLimit::new(c, now)?,
            (Some(c), true) => {
                let mut l = inner.limit.clone();
                l.reconfigure(c, now)?;
                l
            }
        };
        inner.limit = limit;
        inner.config = c.cloned();
        Ok(())
    }

    /// Nanoseconds until work of `class` and `bytes` may take its tokens.
    pub(crate) fn wait_ns(&self, class: Class, bytes: u64) -> u64 {
        let mut inner = self.inner();
        let now = Self::now(&inner);
        inner.limit.wait_ns_as(class, bytes, now)
    }

    /// Takes the tokens of work of `class` and `bytes`, or none.
    pub(crate) fn try_take(&self, class: Class, bytes: u64) -> bool {
        let mut inner = self.inner();
        let now = Self::now(&inner);
        inner.limit.try_take_as(class, bytes, now)
    }

    /// `state` with the shared buckets as they are now (for the API).
    pub(crate) fn show(&self, mut state: LimitState) -> LimitState {
        let inner = self.inner();
        state.buckets = inner.limit.clone();
        state.at_ns = Self::now(&inner);
        state.epoch = inner.epoch;
        state
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::virtio::limiter::BucketConfig;

    fn tenant(size: u64) -> BlockLimitConfig {
        BlockLimitConfig {
            path: "tenant".into(),
            ops: Some(BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: Duration::from_secs(3600),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn clones_share_the_tokens_and_the_same_configuration_changes_nothing() {
        let a = SharedTenant::new();
        let b = a.clone();
        a.configure(Some(&tenant(2))).unwrap();
        assert!(a.try_take(Class::Other, 0));
        // The second device takes up the same limit: no new tokens.
        b.configure(Some(&tenant(2))).unwrap();
        assert!(b.try_take(Class::Read, 0));
        assert!(!a.try_take(Class::Write, 0));
        assert!(b.wait_ns(Class::Other, 0) > 0);
        // A larger bucket creates no tokens either; removing it frees all.
        b.configure(Some(&tenant(5))).unwrap();
        assert!(!a.try_take(Class::Other, 0));
        a.configure(None).unwrap();
        assert!(b.try_take(Class::Other, 0));
        assert_eq!(b.wait_ns(Class::Other, 0), 0);
    }

    /// A device's lookup: tag 1 is container `a`, any other none; both
    /// devices share `shared`.
    struct Dev {
        paths: Vec<String>,
        shared: SharedTenant,
    }

    impl crate::virtio::limiter::LimitLookup for Dev {
        fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
            (tag == Some(1)).then(|| self.paths.iter().position(|p| p == "a"))?
        }
        fn shared_tenant(&self) -> Option<SharedTenant> {
            Some(self.shared.clone())
        }
    }

    struct W;
    impl crate::virtio::throttle::HeldWork for W {
        fn bytes(&self) -> u64 {
            0
        }
    }

    #[test]
    fn two_devices_draw_from_one_tenant_bucket_and_each_holds_its_own_work() {
        // Arrange: a tenant limit of 3 ops (and container a of 10) on two
        // devices of one kind.
        let shared = SharedTenant::new();
        let a = BlockLimitConfig {
            path: "a".into(),
            ops: tenant(10).ops,
            ..Default::default()
        };
        let limits = [tenant(3), a];
        let dev = || {
            let lookup = Dev {
                paths: limits.iter().map(|c| c.path.clone()).collect(),
                shared: shared.clone(),
            };
            crate::virtio::throttle::Throttle::<W>::new(&limits, Box::new(lookup)).unwrap()
        };
        let (mut d1, mut d2) = (dev(), dev());

        // Act: each device gets 3 requests of a and 3 of unlimited tag 2.
        let mut passed = 0;
        for d in [&mut d1, &mut d2] {
            for tag in [1, 2, 1, 2, 1, 2] {
                match d.admit(Some(tag), 0) {
                    None => passed += 1,
                    Some(k) => d.hold(k, W),
                }
            }
        }

        // Assert: 3 passed over both devices (not 3 on each), the other 9
        // are held by the device that got them; each has a release time,
        // and nothing is due before the tenant bucket refills.
        assert_eq!(passed, 3);
        assert_eq!((d1.held(), d2.held()), (3, 6));
        assert!(d1.pop_ready().is_none() && d2.pop_ready().is_none());
        let (w1, w2) = (d1.next_wait().unwrap(), d2.next_wait().unwrap());
        assert!(w1 > Duration::from_secs(600) && w2 > Duration::from_secs(600));
    }
}
