//! The scheduler through the throttle: limits contending for a tenant
//! bucket of one token per millisecond, the clock moved by hand
//! ([`Throttle::advance`]), so each tick lets exactly one held request go.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::virtio::limiter::{BlockLimitConfig, BucketConfig, LimitLookup};
use crate::virtio::sched::{SchedClass, STARVATION_SKIPS};
use crate::virtio::throttle::{HeldWork, Throttle};

/// A request: its container and its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Req(usize, u32);

impl HeldWork for Req {
    fn bytes(&self) -> u64 {
        0
    }
}

/// The next limits a test hands the throttle (a live change).
type Next = Arc<Mutex<Option<Vec<BlockLimitConfig>>>>;

/// Tag `t` is container `c{t}`; an unknown tag has no limit; `next` is
/// handed out once by `changed`.
struct Lookup(Vec<String>, Next);

impl LimitLookup for Lookup {
    fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
        let path = format!("c{}", tag?);
        self.0.iter().position(|p| *p == path)
    }
    fn changed(&mut self) -> Option<Vec<BlockLimitConfig>> {
        let n = self.1.lock().unwrap().take()?;
        self.0 = n.iter().map(|c| c.path.clone()).collect();
        Some(n)
    }
}

const MS: u64 = 1_000_000;

/// A tenant of one op per ms (a full bucket: one token) and containers
/// `c0..` of `classes` (no buckets of their own).
fn limits(classes: &[SchedClass]) -> Vec<BlockLimitConfig> {
    let mut limits = vec![BlockLimitConfig {
        path: "tenant".into(),
        ops: Some(BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time: Duration::from_millis(1),
        }),
        bytes: None,
        ..Default::default()
    }];
    limits.extend(classes.iter().enumerate().map(|(i, c)| BlockLimitConfig {
        path: format!("c{i}"),
        ops: None,
        bytes: None,
        class: Some(*c),
        ..Default::default()
    }));
    limits
}

/// A throttle over [`limits`] of `classes`, its clock stopped, and the
/// slot for a live change.
fn throttle_live(classes: &[SchedClass]) -> (Throttle<Req>, Next) {
    let limits = limits(classes);
    let paths = limits.iter().map(|c| c.path.clone()).collect();
    let next: Next = Arc::default();
    let mut t = Throttle::new(&limits, Box::new(Lookup(paths, Arc::clone(&next)))).unwrap();
    t.stop_clock();
    (t, next)
}

fn throttle(classes: &[SchedClass]) -> Throttle<Req> {
    throttle_live(classes).0
}

/// One tick: a token comes; what goes.
fn tick(t: &mut Throttle<Req>) -> Vec<Req> {
    t.advance(MS);
    std::iter::from_fn(|| t.pop_ready()).collect()
}

#[test]
fn a_high_priority_request_goes_first_and_a_low_one_after_the_bound() {
    let low = SchedClass {
        priority: 0,
        share: 1,
    };
    let high = SchedClass {
        priority: 7,
        share: 1,
    };
    let mut t = throttle(&[low, high]);
    assert_eq!(t.admit(Some(0), 0), None, "a full tenant bucket: the first goes");
    for n in 0..3 {
        let k = t.admit(Some(0), 0).expect("the tenant is empty");
        t.hold(k, Req(0, n));
    }
    for n in 0..20 {
        let k = t.admit(Some(1), 0).expect("held");
        t.hold(k, Req(1, n));
    }
    let order: Vec<Req> = (0..23).flat_map(|_| tick(&mut t)).collect();
    assert_eq!(order.len(), 23, "one per token: {order:?}");
    let lows: Vec<usize> = (order.iter().enumerate())
        .filter(|(_, r)| r.0 == 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        lows,
        vec![8, 17, 22],
        "after 8 high ones each, then when high is done"
    );
    assert_eq!(t.held(), 0);
}

#[test]
fn a_live_change_of_priorities_takes_effect_and_keeps_the_held_work() {
    let c = |priority| SchedClass { priority, share: 1 };
    let (mut t, next) = throttle_live(&[c(7), c(0)]);
    t.admit(Some(0), 0); // the full bucket's token
    for n in 0..2 {
        for q in 0..2u8 {
            let k = t.admit(Some(q.into()), 0).expect("held");
            t.hold(k, Req(q.into(), n));
        }
    }
    assert_eq!(tick(&mut t), vec![Req(0, 0)], "c0 first");
    // c1 now outranks c0: its held work goes first, none is lost.
    *next.lock().unwrap() = Some(limits(&[c(0), c(7)]));
    let order: Vec<Req> = (0..3).flat_map(|_| tick(&mut t)).collect();
    assert_eq!(order, vec![Req(1, 0), Req(1, 1), Req(0, 1)]);
    // Classes removed: no scheduler, the order without one.
    *next.lock().unwrap() = Some(limits(&[]));
    t.advance(MS);
    assert_eq!(
        t.admit(Some(0), 0),
        None,
        "c0 has no limit now, and the tenant has its token"
    );
}

#[test]
fn without_a_class_the_order_is_as_before() {
    // Priorities set on no limit: no scheduler, the FIFOs go in limit order.
    let mut t = throttle(&[]);
    assert_eq!(t.admit(Some(0), 0), None, "no limit of its own: the tenant's");
    let k = t.admit(Some(0), 0).unwrap();
    t.hold(k, Req(0, 0));
    assert_eq!(tick(&mut t), vec![Req(0, 0)]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Arrivals of up to 4 containers of random classes and ticks: no
    /// request is lost or goes twice, each container's go in order, and a
    /// request first in its FIFO waits at most STARVATION_SKIPS + 4
    /// dispatches of higher priority.
    #[test]
    fn never_lost_nor_duplicated_in_order_and_starvation_is_bounded(
        classes in proptest::collection::vec((0u8..=7, 1u32..=8), 1..=4),
        steps in proptest::collection::vec((0usize..5, proptest::bool::ANY), 1..300),
    ) {
        let classes: Vec<SchedClass> =
            classes.into_iter().map(|(priority, share)| SchedClass { priority, share }).collect();
        let n = classes.len();
        let mut t = throttle(&classes);
        let mut next = vec![0u32; n];
        let mut held: Vec<VecDeque<u32>> = vec![VecDeque::new(); n];
        // Per container: dispatches of higher priority since its first held became first.
        let mut passed = vec![0u32; n];
        let mut went: Vec<Vec<u32>> = vec![Vec::new(); n];
        let record = |r: Req, held: &mut Vec<VecDeque<u32>>, passed: &mut Vec<u32>| -> Result<(), proptest::test_runner::TestCaseError> {
            proptest::prop_assert_eq!(held[r.0].pop_front(), Some(r.1), "in order");
            for c in 0..n {
                if c != r.0 && !held[c].is_empty() && classes[c].priority < classes[r.0].priority {
                    passed[c] += 1;
                    proptest::prop_assert!(passed[c] <= STARVATION_SKIPS + 4, "starved: {:?}", passed);
                }
            }
            passed[r.0] = 0;
            Ok(())
        };
        for (c, arrive) in steps.into_iter().chain((0..2000).map(|_| (0, false))) {
            if arrive && c < n {
                let r = Req(c, next[c]);
                next[c] += 1;
                match t.admit(Some(c as u64), 0) {
                    Some(k) => {
                        held[c].push_back(r.1);
                        t.hold(k, r);
                    }
                    None => {
                        proptest::prop_assert!(held[c].is_empty(), "went past its own held work");
                        went[c].push(r.1);
                    }
                }
            } else {
                let out = tick(&mut t);
                proptest::prop_assert!(out.len() <= 1, "more than the tokens: {:?}", out);
                for r in out {
                    record(r, &mut held, &mut passed)?;
                    went[r.0].push(r.1);
                }
            }
        }
        proptest::prop_assert_eq!(t.held(), 0);
        for c in 0..n {
            proptest::prop_assert_eq!(&went[c], &(0..next[c]).collect::<Vec<_>>(), "each once, in order");
        }
    }

    /// Two backlogged containers of equal priority go in proportion to
    /// their shares, within one request each.
    #[test]
    fn backlogged_containers_go_by_their_shares(s0 in 1u32..=8, s1 in 1u32..=8, ticks in 50u32..400) {
        let c = |share| SchedClass { priority: 3, share };
        let mut t = throttle(&[c(s0), c(s1)]);
        t.admit(Some(0), 0); // takes the full bucket's token
        for i in 0..ticks {
            for q in 0..2u8 {
                let k = t.admit(Some(q.into()), 0).expect("held");
                t.hold(k, Req(q.into(), i));
            }
        }
        let mut n = [0u64; 2];
        for _ in 0..ticks {
            for r in tick(&mut t) {
                n[r.0] += 1;
            }
        }
        proptest::prop_assert_eq!(n[0] + n[1], u64::from(ticks));
        let lag = (n[0] * u64::from(s1)).abs_diff(n[1] * u64::from(s0));
        proptest::prop_assert!(lag <= u64::from(s0 + s1), "{:?} for shares {}:{}", n, s0, s1);
    }
}
