//! The principal tree that guest declarations build.
//!
//! ```text
//! tenant (set by the host)
//! ├── unattributed           (always present, index 0)
//! └── container … (declared by the guest, may nest)
//!     └── request …          (begun and ended by the guest)
//! ```
//!
//! Everything is bounded by [`Limits`]: container incarnations (live and
//! retired) per VM, live requests, and retained finished requests (the oldest
//! are evicted first; their charges are folded into their container's
//! `evicted` totals so nothing disappears). Every rejected declaration is a
//! [`GuestError`]. The registry is only touched under the
//! [`crate::ledger::Accounting`] lock, on the rare path (declarations and
//! first sight of a tag), never per charged exit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::abi::{self, EntryKind, RingEntry};
use crate::errors::GuestError;
use crate::resource::{Charges, Columns, Counters};

/// Name of every tenant's catch-all container.
pub const UNATTRIBUTED: &str = "unattributed";

/// Bounds on guest-declared state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Containers a VM may declare over its life (live and retired).
    pub max_containers: u32,
    /// Requests that may be live at once.
    pub max_live_requests: u32,
    /// Finished requests retained with their charges; older ones are evicted.
    pub retained_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_containers: 1024,
            max_live_requests: 4096,
            retained_requests: 65_536,
        }
    }
}

/// A container (or the tenant's `unattributed` one, index 0).
#[derive(Debug)]
pub struct Container {
    /// Guest id (0 for `unattributed`).
    pub guest_id: u32,
    /// Name.
    pub name: String,
    /// Index of the parent container, `None` for top-level.
    pub parent: Option<usize>,
    /// Whether the guest retired it.
    pub retired: bool,
    /// Its ledger, one column per writer.
    pub cells: Arc<Columns>,
    /// Requests begun in it.
    pub requests_begun: u64,
    /// Requests ended in it (including those ended by retirement).
    pub requests_ended: u64,
    /// Finished requests evicted from retention.
    pub requests_evicted: u64,
    /// Sum of the charges of evicted requests.
    pub evicted: Charges,
}

/// A request, live or finished.
#[derive(Debug, Clone)]
pub struct Request {
    /// Guest id.
    pub guest_id: u32,
    /// Index of its container.
    pub container: usize,
    /// The guest's optional 64-bit identifier.
    pub external_id: u64,
    /// Order of `begin` over the VM's life (unique, unlike guest ids).
    pub seq: u64,
    /// When the VMM applied its begin, ns since the books were opened (just
    /// before the vCPUs were created).
    pub begin_ns: u64,
    /// When the VMM applied its end, same clock, if it did.
    pub end_ns: Option<u64>,
    /// Its ledger, shared by every writer that charges it.
    pub cells: Arc<Counters>,
}

/// Who a tag resolves to.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Index of the container charged.
    pub container: usize,
    /// Its ledger.
    pub container_cells: Arc<Columns>,
    /// The request charged as well, if any.
    pub request: Option<Arc<Counters>>,
    /// The guest mistake this tag represents, counted per exit charged.
    pub error: Option<GuestError>,
}

/// Counts of declarations applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryStats {
    /// Containers declared.
    pub containers_declared: u64,
    /// Containers retired.
    pub containers_retired: u64,
    /// Requests begun.
    pub requests_begun: u64,
    /// Requests ended by the guest.
    pub requests_ended: u64,
    /// Requests ended because their container was retired.
    pub requests_ended_by_retire: u64,
    /// Finished requests evicted from retention.
    pub requests_evicted: u64,
}

/// The principal tree of one VM (one tenant).
#[derive(Debug)]
pub struct Registry {
    writers: usize,
    limits: Limits,
    containers: Vec<Container>,
    live_containers: HashMap<u32, usize>,
    live_requests: HashMap<u32, Request>,
    finished: VecDeque<Request>,
    next_seq: u64,
    stats: RegistryStats,
}

impl Registry {
    /// A registry with only `unattributed`, for `writers` ledger columns.
    pub fn new(writers: usize, limits: Limits) -> Self {
        let unattributed = Container {
            guest_id: abi::NO_CONTAINER,
            name: UNATTRIBUTED.to_string(),
            parent: None,
            retired: false,
            cells: Arc::new(Columns::new(writers)),
            requests_begun: 0,
            requests_ended: 0,
            requests_evicted: 0,
            evicted: Charges::default(),
        };
        Self {
            writers,
            limits,
            containers: vec![unattributed],
            live_containers: HashMap::new(),
            live_requests: HashMap::new(),
            finished: VecDeque::new(),
            next_seq: 0,
            stats: RegistryStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Every container ever declared, `unattributed` first.
    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    /// Live requests, in no particular order.
    pub fn live_requests(&self) -> impl Iterator<Item = &Request> {
        self.live_requests.values()
    }

    /// Retained finished requests, oldest first.
    pub fn finished_requests(&self) -> impl Iterator<Item = &Request> {
        self.finished.iter()
    }

    /// Declaration counts.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Applies one ring entry (its `seq` already checked by the consumer).
    /// `now_ns` is the time since the VM started.
    pub fn apply(&mut self, e: &RingEntry, now_ns: u64) -> Result<(), GuestError> {
        let kind = EntryKind::from_u16(e.kind).ok_or(GuestError::RingBadKind)?;
        if e.id == 0 {
            return Err(GuestError::RingZeroId);
        }
        match kind {
            EntryKind::DeclareContainer => self.declare(e),
            EntryKind::RetireContainer => self.retire(e.id, now_ns),
            EntryKind::BeginRequest => self.begin(e.id, e.arg, e.arg64, now_ns),
            EntryKind::EndRequest => self.end(e.id, now_ns),
        }
    }

    fn declare(&mut self, e: &RingEntry) -> Result<(), GuestError> {
        let len = usize::from(e.name_len);
        let name = e
            .name
            .get(..len)
            .filter(|n| abi::valid_name(n))
            .ok_or(GuestError::RingBadName)?;
        if name == UNATTRIBUTED.as_bytes() {
            return Err(GuestError::RingBadName);
        }
        if self.live_containers.contains_key(&e.id) {
            return Err(GuestError::RingDuplicateContainer);
        }
        let parent = match e.arg {
            abi::NO_CONTAINER => None,
            p => Some(
                *self
                    .live_containers
                    .get(&p)
                    .ok_or(GuestError::RingUnknownParent)?,
            ),
        };
        // `containers` holds `unattributed` plus every declared incarnation.
        if self.containers.len() > self.limits.max_containers as usize {
            return Err(GuestError::RingContainerLimit);
        }
        let name = String::from_utf8_lossy(name).into_owned();
        self.containers.push(Container {
            guest_id: e.id,
            name,
            parent,
            retired: false,
            cells: Arc::new(Columns::new(self.writers)),
            requests_begun: 0,
            requests_ended: 0,
            requests_evicted: 0,
            evicted: Charges::default(),
        });
        self.live_containers.insert(e.id, self.containers.len() - 1);
        self.stats.containers_declared += 1;
        Ok(())
    }

    fn retire(&mut self, id: u32, now_ns: u64) -> Result<(), GuestError> {
        let idx = self
            .live_containers
            .remove(&id)
            .ok_or(GuestError::RingUnknownContainer)?;
        self.containers[idx].retired = true;
        self.stats.containers_retired += 1;
        let ending: Vec<u32> = self
            .live_requests
            .values()
            .filter(|r| r.container == idx)
            .map(|r| r.guest_id)
            .collect();
        for rid in ending {
            self.finish(rid, now_ns);
            self.stats.requests_ended_by_retire += 1;
        }
        Ok(())
    }

    fn begin(&mut self, id: u32, container: u32, external_id: u64, now_ns: u64) -> Result<(), GuestError> {
        let idx = *self
            .live_containers
            .get(&container)
            .ok_or(GuestError::RingUnknownContainer)?;
        if self.live_requests.contains_key(&id) {
            return Err(GuestError::RingDuplicateRequest);
        }
        if self.live_requests.len() >= self.limits.max_live_requests as usize {
            return Err(GuestError::RingRequestLimit);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.live_requests.insert(
            id,
            Request {
                guest_id: id,
                container: idx,
                external_id,
                seq,
                begin_ns: now_ns,
                end_ns: None,
                cells: Arc::new(Counters::default()),
            },
        );
        self.containers[idx].requests_begun += 1;
        self.stats.requests_begun += 1;
        Ok(())
    }

    fn end(&mut self, id: u32, now_ns: u64) -> Result<(), GuestError> {
        if !self.live_requests.contains_key(&id) {
            return Err(GuestError::RingUnknownRequest);
        }
        self.finish(id, now_ns);
        self.stats.requests_ended += 1;
        Ok(())
    }

    /// Moves a live request to the finished list, evicting the oldest
    /// finished ones beyond the retention limit.
    fn finish(&mut self, id: u32, now_ns: u64) {
        let Some(mut r) = self.live_requests.remove(&id) else {
            return;
        };
        r.end_ns = Some(now_ns);
        self.containers[r.container].requests_ended += 1;
        self.finished.push_back(r);
        while self.finished.len() > self.limits.retained_requests as usize {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            let c = &mut self.containers[old.container];
            c.requests_evicted += 1;
            c.evicted.add(&old.cells.read());
            self.stats.requests_evicted += 1;
        }
    }

    /// Resolves a tag slot value to the principals it charges.
    pub fn resolve(&self, tag: u64) -> Resolved {
        let (c, r) = abi::untag(tag);
        if c == abi::NO_CONTAINER {
            let error = (r != abi::NO_REQUEST).then_some(GuestError::TagRequestWithoutContainer);
            return self.unattributed(error);
        }
        let Some(&idx) = self.live_containers.get(&c) else {
            return self.unattributed(Some(GuestError::TagUnknownContainer));
        };
        let (request, error) = match r {
            abi::NO_REQUEST => (None, None),
            r => match self.live_requests.get(&r) {
                None => (None, Some(GuestError::TagUnknownRequest)),
                Some(req) if req.container != idx => (None, Some(GuestError::TagRequestMismatch)),
                Some(req) => (Some(Arc::clone(&req.cells)), None),
            },
        };
        Resolved {
            container: idx,
            container_cells: Arc::clone(&self.containers[idx].cells),
            request,
            error,
        }
    }

    /// What a vCPU without a tag (no region registered) charges.
    pub fn unattributed(&self, error: Option<GuestError>) -> Resolved {
        Resolved {
            container: 0,
            container_cells: Arc::clone(&self.containers[0].cells),
            request: None,
            error,
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::abi::tag;

    fn entry(kind: EntryKind, id: u32, arg: u32, name: &str) -> RingEntry {
        let mut e = RingEntry {
            kind: kind as u16,
            id,
            arg,
            name_len: name.len() as u16,
            ..Default::default()
        };
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e
    }

    fn declare(r: &mut Registry, id: u32, parent: u32, name: &str) -> Result<(), GuestError> {
        r.apply(&entry(EntryKind::DeclareContainer, id, parent, name), 0)
    }

    #[test]
    fn declared_container_and_request_resolve_exactly() {
        let mut r = Registry::new(2, Limits::default());
        declare(&mut r, 5, 0, "web").unwrap();
        r.apply(&entry(EntryKind::BeginRequest, 42, 5, ""), 10).unwrap();
        let res = r.resolve(tag(5, 42));
        assert_eq!(res.container, 1);
        assert!(res.request.is_some());
        assert_eq!(res.error, None);
    }

    #[test]
    fn unknown_tags_fall_back_and_are_flagged() {
        let mut r = Registry::new(1, Limits::default());
        declare(&mut r, 5, 0, "web").unwrap();
        declare(&mut r, 6, 0, "db").unwrap();
        r.apply(&entry(EntryKind::BeginRequest, 1, 6, ""), 0).unwrap();
        assert_eq!(r.resolve(tag(9, 0)).error, Some(GuestError::TagUnknownContainer));
        assert_eq!(r.resolve(tag(9, 0)).container, 0);
        let res = r.resolve(tag(5, 77));
        assert_eq!(
            (res.container, res.error),
            (1, Some(GuestError::TagUnknownRequest))
        );
        let res = r.resolve(tag(5, 1));
        assert_eq!(
            (res.container, res.request.is_none(), res.error),
            (1, true, Some(GuestError::TagRequestMismatch))
        );
        assert_eq!(
            r.resolve(tag(0, 3)).error,
            Some(GuestError::TagRequestWithoutContainer)
        );
        assert_eq!(r.resolve(0).error, None);
    }

    #[test]
    fn malformed_declarations_are_rejected_with_their_reason() {
        let mut r = Registry::new(1, Limits::default());
        assert_eq!(
            r.apply(
                &RingEntry {
                    kind: 99,
                    id: 1,
                    ..Default::default()
                },
                0
            ),
            Err(GuestError::RingBadKind)
        );
        assert_eq!(declare(&mut r, 0, 0, "x"), Err(GuestError::RingZeroId));
        assert_eq!(declare(&mut r, 1, 0, ""), Err(GuestError::RingBadName));
        assert_eq!(declare(&mut r, 1, 0, UNATTRIBUTED), Err(GuestError::RingBadName));
        let mut long = entry(EntryKind::DeclareContainer, 1, 0, "a");
        long.name_len = 40;
        assert_eq!(r.apply(&long, 0), Err(GuestError::RingBadName));
        assert_eq!(
            declare(&mut r, 1, 7, "orphan"),
            Err(GuestError::RingUnknownParent)
        );
        declare(&mut r, 1, 0, "ok").unwrap();
        assert_eq!(
            declare(&mut r, 1, 0, "again"),
            Err(GuestError::RingDuplicateContainer)
        );
        assert_eq!(
            r.apply(&entry(EntryKind::RetireContainer, 3, 0, ""), 0),
            Err(GuestError::RingUnknownContainer)
        );
        assert_eq!(
            r.apply(&entry(EntryKind::BeginRequest, 1, 3, ""), 0),
            Err(GuestError::RingUnknownContainer)
        );
        assert_eq!(
            r.apply(&entry(EntryKind::EndRequest, 8, 0, ""), 0),
            Err(GuestError::RingUnknownRequest)
        );
        r.apply(&entry(EntryKind::BeginRequest, 1, 1, ""), 0).unwrap();
        assert_eq!(
            r.apply(&entry(EntryKind::BeginRequest, 1, 1, ""), 0),
            Err(GuestError::RingDuplicateRequest)
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_containers: 2,
            max_live_requests: 1,
            retained_requests: 2,
        };
        let mut r = Registry::new(1, limits);
        declare(&mut r, 1, 0, "a").unwrap();
        declare(&mut r, 2, 1, "b").unwrap();
        assert_eq!(declare(&mut r, 3, 0, "c"), Err(GuestError::RingContainerLimit));
        r.apply(&entry(EntryKind::BeginRequest, 10, 1, ""), 0).unwrap();
        assert_eq!(
            r.apply(&entry(EntryKind::BeginRequest, 11, 1, ""), 0),
            Err(GuestError::RingRequestLimit)
        );
    }

    #[test]
    fn eviction_folds_charges_into_the_container() {
        let limits = Limits {
            max_containers: 4,
            max_live_requests: 4,
            retained_requests: 1,
        };
        let mut r = Registry::new(1, limits);
        declare(&mut r, 1, 0, "a").unwrap();
        for id in 1..=3 {
            r.apply(&entry(EntryKind::BeginRequest, id, 1, ""), 0).unwrap();
            r.live_requests[&id]
                .cells
                .add_exit_shared(crate::resource::ExitReason::PortOut, 5);
            r.apply(&entry(EntryKind::EndRequest, id, 0, ""), 1).unwrap();
        }
        assert_eq!(r.finished_requests().count(), 1);
        let c = &r.containers()[1];
        assert_eq!(
            (c.requests_begun, c.requests_ended, c.requests_evicted),
            (3, 3, 2)
        );
        assert_eq!(c.evicted.exits_total().count, 2);
        assert_eq!(r.stats().requests_evicted, 2);
    }

    #[test]
    fn retiring_a_container_ends_its_requests_and_frees_its_id() {
        let mut r = Registry::new(1, Limits::default());
        declare(&mut r, 1, 0, "a").unwrap();
        r.apply(&entry(EntryKind::BeginRequest, 7, 1, ""), 0).unwrap();
        r.apply(&entry(EntryKind::RetireContainer, 1, 0, ""), 5).unwrap();
        assert_eq!(r.live_requests().count(), 0);
        assert_eq!(r.stats().requests_ended_by_retire, 1);
        assert_eq!(r.resolve(tag(1, 0)).error, Some(GuestError::TagUnknownContainer));
        declare(&mut r, 1, 0, "a").unwrap();
        assert_eq!(r.resolve(tag(1, 0)).container, 2);
    }

    fn arb_entry() -> impl proptest::strategy::Strategy<Value = RingEntry> {
        use proptest::prelude::*;
        (
            0u16..6,
            0u32..24,
            0u32..24,
            0u16..40,
            any::<[u8; 32]>(),
            any::<u64>(),
        )
            .prop_map(|(kind, id, arg, name_len, mut name, arg64)| {
                // Mostly valid names, so that declarations also succeed.
                if name_len % 3 != 0 {
                    for b in name.iter_mut() {
                        *b = b'a' + (*b % 26);
                    }
                }
                RingEntry {
                    seq: 0,
                    kind,
                    name_len,
                    reserved: 0,
                    id,
                    arg,
                    arg64,
                    name,
                }
            })
    }

    proptest::proptest! {
        /// Any stream of declarations keeps the registry within its bounds,
        /// and every tag still resolves to a container that exists.
        #[test]
        fn any_declaration_stream_stays_bounded_and_consistent(
            entries in proptest::collection::vec(arb_entry(), 0..400),
            tags in proptest::collection::vec((0u32..24, 0u32..24), 0..20),
        ) {
            let limits = Limits { max_containers: 6, max_live_requests: 5, retained_requests: 4 };
            let mut r = Registry::new(2, limits);
            for (i, e) in entries.iter().enumerate() {
                let _ = r.apply(e, i as u64);
            }
            proptest::prop_assert!(r.containers().len() <= 7);
            proptest::prop_assert!(r.live_requests().count() <= 5);
            proptest::prop_assert!(r.finished_requests().count() <= 4);
            let s = r.stats();
            proptest::prop_assert_eq!(s.requests_begun, r.live_requests().count() as u64
                + s.requests_ended + s.requests_ended_by_retire);
            for req in r.live_requests().chain(r.finished_requests()) {
                proptest::prop_assert!(req.container > 0 && req.container < r.containers().len());
            }
            for (c, q) in tags {
                let res = r.resolve(tag(c, q));
                proptest::prop_assert!(res.container < r.containers().len());
            }
        }
    }
}
