//! The order in which held work of several limits goes when they contend
//! for the same tokens (the tenant limit's bucket): priorities with bounded
//! starvation, and shares among equal priorities
//! (docs/limits-per-container.md, "Priorities and shares").
//!
//! Each limit (one FIFO of held work in [`crate::virtio::throttle`]) has a
//! [`SchedClass`]. Among the FIFOs whose first held work waits only for
//! the shared tokens, the next to go is:
//!
//! 1. a **starved** one: its first work was passed over by
//!    [`STARVATION_SKIPS`] dispatches of strictly higher priority (the most
//!    passed over first);
//! 2. else the one of the **highest priority**;
//! 3. among equal priorities, the one whose first work has the smallest
//!    **start tag** (start-time fair queueing: work held in FIFO `q` gets
//!    the start tag `max(V, F_q)` and moves `F_q` on by `cost / share`; `V`
//!    is the start tag of the work that went last), so FIFOs that stay
//!    backlogged go in proportion to their shares;
//! 4. ties by the order of the limits.

/// A limit's scheduling class, when one is set (`priority` and/or `share`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedClass {
    /// `0..=MAX_PRIORITY`, higher served first.
    pub priority: u8,
    /// `1..=MAX_SHARE`: a weight among equal priorities.
    pub share: u32,
}

/// The class of a limit that sets none, and of the tenant limit's FIFO
/// (the work of containers without a limit of their own).
pub const DEFAULT_CLASS: SchedClass = SchedClass {
    priority: DEFAULT_PRIORITY,
    share: DEFAULT_SHARE,
};

/// The priority of a limit that sets none: the lowest.
pub const DEFAULT_PRIORITY: u8 = 0;
/// The highest priority.
pub const MAX_PRIORITY: u8 = 7;
/// The share of a limit that sets none.
pub const DEFAULT_SHARE: u32 = 1;
/// The largest share.
pub const MAX_SHARE: u32 = 1000;

/// The starvation bound: work that waits only for the shared tokens goes
/// after at most this many dispatches of higher priority (plus one per
/// other starved limit, served the most passed over first).
pub const STARVATION_SKIPS: u32 = 8;

/// Start tags are in units of `1 / TAG_SCALE` of a cost unit per share.
const TAG_SCALE: u128 = 1 << 20;

/// The scheduler's state over one device's limits, indexed like them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sched {
    /// Each limit's class; `None`: it sets none ([`DEFAULT_CLASS`]).
    classes: Vec<Option<SchedClass>>,
    /// Each limit's finish tag `F_q`.
    finish: Vec<u128>,
    /// How many higher-priority dispatches passed over each limit's first
    /// held work since it last went.
    skips: Vec<u32>,
    /// Virtual time `V`.
    vtime: u128,
}

/// A FIFO that may go now (its first work waits only for shared tokens).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    /// The limit's index.
    pub q: usize,
    /// Its first held work's start tag.
    pub start: u128,
}

impl Sched {
    /// Over limits of `classes`, nothing held yet.
    pub fn new(classes: Vec<Option<SchedClass>>) -> Self {
        let n = classes.len();
        Self {
            classes,
            finish: vec![0; n],
            skips: vec![0; n],
            vtime: 0,
        }
    }

    /// Whether any limit sets a class (else the throttle keeps its order
    /// without a scheduler).
    pub fn active(&self) -> bool {
        self.classes.iter().any(Option::is_some)
    }

    fn class(&self, q: usize) -> SchedClass {
        self.classes.get(q).copied().flatten().unwrap_or(DEFAULT_CLASS)
    }

    /// The priority of limit `q` (`None`: no such limit), the default
    /// where it sets no class.
    pub fn priority_of(&self, q: Option<usize>) -> u8 {
        q.map_or(DEFAULT_PRIORITY, |q| self.class(q).priority)
    }

    /// The highest priority a limit sets (`None`: none sets a class).
    pub fn top_priority(&self) -> Option<u8> {
        self.classes.iter().flatten().map(|c| c.priority).max()
    }

    /// Takes up new limits (a live change): `old[i]` is the index new
    /// limit `i` had, if it was kept (its finish tag and skips are kept).
    pub fn remap(&mut self, classes: Vec<Option<SchedClass>>, old: &[Option<usize>]) {
        let keep = |v: &[u128], i: Option<usize>| i.and_then(|i| v.get(i).copied()).unwrap_or(0);
        self.finish = old.iter().map(|&i| keep(&self.finish, i)).collect();
        self.skips = (old.iter())
            .map(|&i| i.and_then(|i| self.skips.get(i).copied()).unwrap_or(0))
            .collect();
        self.classes = classes;
    }

    /// The start tag work would get in FIFO `q` now (empty), without
    /// taking it ([`Self::tag`] takes it).
    pub fn start_of(&self, q: usize) -> u128 {
        self.finish.get(q).map_or(self.vtime, |f| self.vtime.max(*f))
    }

    /// The start tag of work of `cost` (at least 1) held now in FIFO `q`.
    pub fn tag(&mut self, q: usize, cost: u64) -> u128 {
        let share = u128::from(self.class(q).share.max(1));
        let Some(f) = self.finish.get_mut(q) else {
            return self.vtime;
        };
        let start = self.vtime.max(*f);
        *f = start.saturating_add(u128::from(cost.max(1)) * TAG_SCALE / share);
        start
    }

    /// Which of `cands` goes next (see the module's rules).
    pub fn pick(&self, cands: &[Candidate]) -> Option<Candidate> {
        let skips = |c: &Candidate| self.skips.get(c.q).copied().unwrap_or(0);
        let starved = cands
            .iter()
            .filter(|c| skips(c) >= STARVATION_SKIPS)
            .max_by(|a, b| skips(a).cmp(&skips(b)).then(b.q.cmp(&a.q)));
        if let Some(c) = starved {
            return Some(*c);
        }
        cands
            .iter()
            .max_by(|a, b| {
                let (pa, pb) = (self.class(a.q).priority, self.class(b.q).priority);
                pa.cmp(&pb).then(b.start.cmp(&a.start)).then(b.q.cmp(&a.q))
            })
            .copied()
    }

    /// `went` went (picked from `cands`): virtual time moves to its start
    /// tag, every other candidate of lower priority was passed over once.
    pub fn served(&mut self, went: Candidate, cands: &[Candidate]) {
        self.vtime = self.vtime.max(went.start);
        let prio = self.class(went.q).priority;
        for c in cands.iter().filter(|c| c.q != went.q) {
            if self.class(c.q).priority < prio {
                if let Some(s) = self.skips.get_mut(c.q) {
                    *s = s.saturating_add(1);
                }
            }
        }
        if let Some(s) = self.skips.get_mut(went.q) {
            *s = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(priority: u8, share: u32) -> Option<SchedClass> {
        Some(SchedClass { priority, share })
    }

    #[test]
    fn higher_priority_first_but_a_lower_one_goes_after_the_bound() {
        let mut s = Sched::new(vec![class(7, 1), class(0, 1)]);
        let mut order = Vec::new();
        for _ in 0..20 {
            let cands = [
                Candidate {
                    q: 0,
                    start: s.tag(0, 1),
                },
                Candidate { q: 1, start: 0 },
            ];
            let went = s.pick(&cands).unwrap();
            s.served(went, &cands);
            order.push(went.q);
        }
        // 8 high, 1 low, 8 high, 1 low, 2 high.
        let lows: Vec<usize> = (order.iter().enumerate())
            .filter(|(_, &q)| q == 1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(lows, vec![8, 17]);
    }

    #[test]
    fn equal_priorities_go_by_share() {
        let mut s = Sched::new(vec![class(0, 2), class(0, 1)]);
        let (mut fronts, mut n) = ([s.tag(0, 10), s.tag(1, 10)], [0u32; 2]);
        for _ in 0..300 {
            let cands = [
                Candidate {
                    q: 0,
                    start: fronts[0],
                },
                Candidate {
                    q: 1,
                    start: fronts[1],
                },
            ];
            let went = s.pick(&cands).unwrap();
            s.served(went, &cands);
            n[went.q] += 1;
            fronts[went.q] = s.tag(went.q, 10);
        }
        assert_eq!(n, [200, 100]);
    }
}
