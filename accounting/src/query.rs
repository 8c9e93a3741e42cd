//! Reads of the live books for the host API that stay fast with 10,000s of
//! containers and 1,000,000s of retained requests, and never hold the
//! registry lock for long.
//!
//! A vCPU takes the registry lock on its rare path (declarations, first
//! sight of a tag), so a read here takes it in *steps*: each step does a
//! bounded amount of work ([`REQUEST_STEP`] requests or [`CONTAINER_STEP`]
//! containers plus their live requests), then lets go. Between steps the
//! read's place is kept in a cursor that survives new declarations and
//! eviction ([`crate::registry::RequestCursor`] says what a read sees).
//! Work that needs no lock (summing a container's per-writer columns,
//! building JSON) is done after letting go.
//!
//! - [`Accounting::containers_view`]: every container with its charges and
//!   its requests' summary, O(containers + live requests): the finished
//!   requests are never walked (their charges are kept per container).
//! - [`Accounting::select_requests`]: the first `limit` requests in begin
//!   or cost order, optionally of one container, by partial selection (a
//!   bounded heap, O(n log limit)): one pass over compact 24-byte keys.
//!
//! [`ContainerView`] serialises to exactly the JSON of
//! [`crate::report::ContainerReport`] (tests check it), without building the
//! report's maps.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::ledger::Accounting;
use crate::registry::{ContainerRow, Prune, Registry, RequestCursor, RequestRow};
use crate::report::{
    is_zero, ChargesReport, ContainerReport, ProvenanceReport, RequestReport, RequestSummary,
};
use crate::resource::{Charges, ExitReason, Provenance};

/// Requests visited per lock hold by [`Accounting::select_requests`].
pub const REQUEST_STEP: usize = 4096;
/// Requests visited per lock hold by [`Accounting::top_requests_by`]:
/// fewer than [`REQUEST_STEP`], since each one's charges are decoded.
pub const VALUE_STEP: usize = 1024;
/// Containers (plus their live requests) read per lock hold by
/// [`Accounting::containers_view`].
pub const CONTAINER_STEP: usize = 512;

/// Longest a read waits between two steps for blocked threads to take the
/// registry lock first.
const YIELD_LIMIT: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a read held the registry lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Times the lock was taken.
    pub steps: u32,
    /// Longest single hold, ns.
    pub longest_step_ns: u64,
    /// All holds together, ns.
    pub held_ns: u64,
}

impl ReadStats {
    fn record(&mut self, ns: u64) {
        self.steps += 1;
        self.longest_step_ns = self.longest_step_ns.max(ns);
        self.held_ns = self.held_ns.saturating_add(ns);
    }
}

/// The order of a request selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOrder {
    /// By `seq` (begin order), ascending.
    Begin,
    /// By cost ([`crate::registry::cost_of`]), most expensive first; ties by
    /// `seq`.
    Cost,
}

/// Which requests to select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFilter {
    /// Only requests of this container index.
    pub container: Option<usize>,
    /// The order.
    pub order: RequestOrder,
    /// At most this many.
    pub limit: usize,
    /// Only requests begun with this W3C trace id (`None`: any).
    pub trace_id: Option<[u8; 16]>,
}

/// A selected request and its container's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedRequest {
    /// The request.
    pub row: RequestRow,
    /// Its container's path.
    pub container_path: Arc<str>,
}

impl SelectedRequest {
    /// In report form (the JSON of `GET /v1/requests`).
    pub fn to_report(&self) -> RequestReport {
        RequestReport::from_row(&self.row, &self.container_path)
    }
}

/// One container as of now.
#[derive(Clone, Debug)]
pub struct ContainerView {
    /// Registry data of the container, its requests' charges included.
    pub row: ContainerRow,
    /// Everything charged to it (sum of its ledger's columns).
    pub charges: Charges,
    /// All of its guest run time was placed by switch logs (`exact`).
    pub run_exact: bool,
}

/// How container `index`'s charges were attributed; `run_exact`: all of its
/// run time was placed by switch logs.
pub(crate) fn provenance(index: usize, run_exact: bool) -> ProvenanceReport {
    if index == 0 {
        ProvenanceReport {
            exits: Provenance::Unattributed,
            guest_run: Provenance::Unattributed,
            devices: Provenance::Unattributed,
        }
    } else {
        ProvenanceReport {
            exits: Provenance::Exact,
            guest_run: if run_exact {
                Provenance::Exact
            } else {
                Provenance::Sampled
            },
            devices: Provenance::Exact,
        }
    }
}

impl ContainerView {
    /// Its name (the last part of its path: names never contain `/`).
    pub fn name(&self) -> &str {
        let p = &*self.row.path;
        p.rsplit('/').next().unwrap_or(p)
    }

    /// In report form.
    pub fn to_report(&self) -> ContainerReport {
        let r = &self.row;
        ContainerReport {
            index: r.index,
            id: r.guest_id,
            name: self.name().to_string(),
            path: r.path.to_string(),
            parent: r.parent,
            retired: r.retired,
            provenance: provenance(r.index, self.run_exact),
            charges: ChargesReport::from(&self.charges),
            requests: RequestSummary {
                begun: r.begun,
                ended: r.ended,
                live: r.live,
                retained: r.retained,
                evicted: r.evicted,
                charged: ChargesReport::from(&r.charged),
            },
        }
    }
}

/// Exit reasons in the order of their names (the order of
/// [`ChargesReport::exits`], a `BTreeMap`).
fn reasons_by_name() -> &'static [ExitReason; ExitReason::COUNT] {
    static SORTED: OnceLock<[ExitReason; ExitReason::COUNT]> = OnceLock::new();
    SORTED.get_or_init(|| {
        let mut r = ExitReason::ALL;
        r.sort_by_key(|r| r.name());
        r
    })
}

struct ExitsJson<'a>(&'a Charges);

impl Serialize for ExitsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(ExitReason::COUNT))?;
        for r in reasons_by_name() {
            let e = &self.0.exits[r.index()];
            if !is_zero(e) {
                m.serialize_entry(r.name(), e)?;
            }
        }
        m.end()
    }
}

/// [`Charges`] serialised as [`ChargesReport`] is, without building it.
pub struct ChargesJson<'a>(pub &'a Charges);

impl Serialize for ChargesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut st = s.serialize_struct("ChargesReport", 9)?;
        st.serialize_field("exits", &ExitsJson(c))?;
        st.serialize_field("exits_total", &c.exits_total())?;
        st.serialize_field("guest_run_ns", &c.guest_run_ns)?;
        st.serialize_field("run_samples", &c.run_samples)?;
        // Sparse, as `ChargesReport` is: all-zero groups are left out.
        if !is_zero(&c.block) {
            st.serialize_field("block", &c.block)?;
        }
        if c.interrupts != 0 {
            st.serialize_field("interrupts", &c.interrupts)?;
        }
        if !is_zero(&c.net) {
            st.serialize_field("net", &c.net)?;
        }
        if !is_zero(&c.vsock) {
            st.serialize_field("vsock", &c.vsock)?;
        }
        if !is_zero(&c.agent) {
            st.serialize_field("agent", &c.agent)?;
        }
        if !is_zero(&c.ring) {
            st.serialize_field("ring", &c.ring)?;
        }
        if !is_zero(&c.cpu) {
            st.serialize_field("cpu", &c.cpu)?;
        }
        st.end()
    }
}

/// A container's request summary; `charged` (the sums of its requests'
/// charges) only in the detailed form.
struct SummaryJson<'a>(&'a ContainerRow, bool);

impl Serialize for SummaryJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut st = s.serialize_struct("RequestSummary", 6)?;
        st.serialize_field("begun", &r.begun)?;
        st.serialize_field("ended", &r.ended)?;
        st.serialize_field("live", &r.live)?;
        st.serialize_field("retained", &r.retained)?;
        st.serialize_field("evicted", &r.evicted)?;
        if self.1 {
            st.serialize_field("charged", &ChargesJson(&r.charged))?;
        }
        st.end()
    }
}

impl Serialize for ContainerView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_as(s, true)
    }
}

/// A [`ContainerView`] as a list shows it: without `requests.charged`, which
/// only the single-container view carries (it is half the bytes of a
/// container, and a list of 10,000 must stay small).
pub struct ListedView<'a>(pub &'a ContainerView);

impl Serialize for ListedView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_as(s, false)
    }
}

impl ContainerView {
    fn serialize_as<S: Serializer>(&self, s: S, detailed: bool) -> Result<S::Ok, S::Error> {
        let r = &self.row;
        let mut st = s.serialize_struct("ContainerReport", 9)?;
        st.serialize_field("index", &r.index)?;
        st.serialize_field("id", &r.guest_id)?;
        st.serialize_field("name", self.name())?;
        st.serialize_field("path", &*r.path)?;
        st.serialize_field("parent", &r.parent)?;
        st.serialize_field("retired", &r.retired)?;
        st.serialize_field("provenance", &provenance(r.index, self.run_exact))?;
        st.serialize_field("charges", &ChargesJson(&self.charges))?;
        st.serialize_field("requests", &SummaryJson(r, detailed))?;
        st.end()
    }
}

/// A heap entry ranked by `key` alone: greater is worse, so the heap's top
/// is the one to drop.
struct Keyed<T> {
    key: (u64, u64),
    item: T,
}

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key.cmp(&o.key)
    }
}

/// The sort key of a request under `order`: smaller comes first.
pub fn rank_key(order: RequestOrder, seq: u64, cost: u64) -> (u64, u64) {
    match order {
        RequestOrder::Begin => (0, seq),
        RequestOrder::Cost => (u64::MAX - cost, seq),
    }
}

impl Accounting {
    /// Runs `f` under the registry lock, timing the hold into `stats`.
    /// First lets any thread blocked on the lock (a vCPU on its rare path)
    /// have it: `std`'s mutex is not fair, and a reader that re-locks at once
    /// after each step would otherwise keep a waiter out for the whole read.
    fn step<T>(&self, stats: &mut ReadStats, f: impl FnOnce(&mut Registry) -> T) -> T {
        let deadline = Instant::now() + YIELD_LIMIT;
        while self.registry_waiters() > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let mut reg = self.registry();
        let t = Instant::now();
        let out = f(&mut reg);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        drop(reg);
        stats.record(ns);
        out
    }

    /// Tenant totals: the sum over every ledger writer (no lock taken).
    pub fn totals(&self) -> Charges {
        let mut total = Charges::default();
        for w in &self.writer_totals() {
            total.add(w);
        }
        total
    }

    /// Every container, `unattributed` first, as of now: the report's
    /// `containers` without building the report. The lock is taken once per
    /// [`CONTAINER_STEP`] containers (and their live requests).
    pub fn containers_view(&self) -> (Vec<ContainerView>, ReadStats) {
        let (views, _, stats) = self.containers_page(0, usize::MAX);
        (views, stats)
    }

    /// At most `limit` containers from index `start` on, as of now, and how
    /// many containers there are in all: a page of
    /// [`Accounting::containers_view`], read in the same steps.
    pub fn containers_page(&self, start: usize, limit: usize) -> (Vec<ContainerView>, usize, ReadStats) {
        let mut stats = ReadStats::default();
        let mut rows = Vec::new();
        let mut next = start;
        let mut first = true;
        let mut total = 0;
        loop {
            let done = self.step(&mut stats, |reg| {
                total = reg.containers().len();
                if first {
                    reg.sweep();
                    rows.reserve(total.saturating_sub(start).min(limit));
                }
                let want = limit.saturating_sub(rows.len()).min(CONTAINER_STEP);
                want == 0 || reg.container_rows(&mut next, want, &mut rows) || rows.len() >= limit
            });
            first = false;
            if done {
                break;
            }
        }
        // Column sums need no lock: the rows hold the ledgers.
        let views = rows
            .into_iter()
            .map(|row| ContainerView {
                charges: row.cells.sum(),
                run_exact: self.run_logged() && !row.cells.run_sampled(),
                row,
            })
            .collect();
        (views, total, stats)
    }

    /// One container by index, as of now (one short lock hold).
    pub fn container_view(&self, index: usize) -> Option<ContainerView> {
        let mut stats = ReadStats::default();
        let mut rows = Vec::with_capacity(1);
        let mut next = index;
        self.step(&mut stats, |reg| {
            reg.sweep();
            if index < reg.containers().len() {
                reg.container_rows(&mut next, 1, &mut rows);
            }
        });
        rows.pop().map(|row| ContainerView {
            charges: row.cells.sum(),
            run_exact: self.run_logged() && !row.cells.run_sampled(),
            row,
        })
    }

    /// Number of containers ever declared, `unattributed` included.
    pub fn container_count(&self) -> usize {
        self.registry().containers().len()
    }

    /// The first `f.limit` live and retained requests in `f.order`,
    /// optionally of one container. One pass over the requests by partial
    /// selection (a heap of at most `limit`), in lock holds of
    /// [`REQUEST_STEP`] requests; see [`RequestCursor`] for what a read
    /// sees while requests begin, end and are evicted.
    pub fn select_requests(&self, f: RequestFilter) -> (Vec<SelectedRequest>, ReadStats) {
        let mut stats = ReadStats::default();
        if f.limit == 0 {
            return (Vec::new(), stats);
        }
        let mut heap: BinaryHeap<Keyed<(u64, SelectedRequest)>> =
            BinaryHeap::with_capacity(f.limit.min(1 << 16));
        let mut cur = RequestCursor::default();
        let mut first = true;
        while !cur.done() {
            self.step(&mut stats, |reg| {
                if first {
                    reg.sweep();
                }
                let reg: &Registry = reg;
                // Once the heap is full, finished requests that cannot beat
                // its worst are skipped on one column.
                let prune = match (heap.len() >= f.limit, heap.peek(), f.order) {
                    (true, Some(w), RequestOrder::Cost) => Prune {
                        min_cost: w.item.0,
                        max_seq: u64::MAX,
                    },
                    (true, Some(w), RequestOrder::Begin) => Prune {
                        min_cost: 0,
                        max_seq: w.item.1.row.seq,
                    },
                    _ => Prune::NONE,
                };
                reg.scan_requests(&mut cur, f.container, REQUEST_STEP, prune, |cand| {
                    if f.trace_id.is_some() && cand.trace_id() != f.trace_id {
                        return;
                    }
                    let key = rank_key(f.order, cand.seq, cand.cost);
                    let take = heap.len() < f.limit || heap.peek().is_some_and(|worst| key < worst.key);
                    if !take {
                        return;
                    }
                    let path = reg
                        .containers()
                        .get(cand.container)
                        .map(|c| Arc::clone(&c.path))
                        .unwrap_or_else(|| Arc::from(""));
                    let item = SelectedRequest {
                        row: cand.row(),
                        container_path: path,
                    };
                    if heap.len() >= f.limit {
                        heap.pop();
                    }
                    heap.push(Keyed {
                        key,
                        item: (cand.cost, item),
                    });
                });
            });
            first = false;
        }
        let rows = heap.into_sorted_vec().into_iter().map(|r| r.item.1).collect();
        (rows, stats)
    }
}

impl Accounting {
    /// The `limit` live and retained requests with the largest non-zero
    /// `value` of their charges, largest first (ties: earlier `seq` first):
    /// a selection by something other than [`crate::registry::cost_of`]
    /// (the flame graphs of the host API rank by the resource drawn). Every
    /// request's charges are read (no column prunes them), in lock holds of
    /// [`VALUE_STEP`] requests; the heap holds at most `limit` rows.
    pub fn top_requests_by(
        &self,
        limit: usize,
        value: impl Fn(&Charges) -> u64,
    ) -> (Vec<RequestRow>, ReadStats) {
        let mut stats = ReadStats::default();
        if limit == 0 {
            return (Vec::new(), stats);
        }
        let mut heap: BinaryHeap<Keyed<RequestRow>> = BinaryHeap::with_capacity(limit.min(1 << 16));
        let mut cur = RequestCursor::default();
        let mut first = true;
        while !cur.done() {
            self.step(&mut stats, |reg| {
                if first {
                    reg.sweep();
                }
                reg.scan_requests(&mut cur, None, VALUE_STEP, Prune::NONE, |cand| {
                    let charges = cand.charges();
                    let v = value(&charges);
                    if v == 0 {
                        return;
                    }
                    let key = rank_key(RequestOrder::Cost, cand.seq, v);
                    if heap.len() >= limit && heap.peek().is_some_and(|worst| key >= worst.key) {
                        return;
                    }
                    let mut row = cand.row();
                    // The value ranked is the value shown.
                    row.charges = charges;
                    if heap.len() >= limit {
                        heap.pop();
                    }
                    heap.push(Keyed { key, item: row });
                });
            });
            first = false;
        }
        let rows = heap.into_sorted_vec().into_iter().map(|r| r.item).collect();
        (rows, stats)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::abi::{tag, EntryKind, RingEntry};
    use crate::registry::{Limits, RequestMeta};
    use crate::report::{Report, VmInfo};
    use proptest::prelude::*;

    fn declare(acct: &Accounting, id: u32, parent: u32, name: &str) {
        let e = RingEntry::new(EntryKind::DeclareContainer, id, parent, 0, name.as_bytes());
        acct.apply(&e).unwrap();
    }

    fn ring(acct: &Accounting, kind: EntryKind, id: u32, arg: u32) -> Result<(), crate::errors::GuestError> {
        acct.apply(&RingEntry {
            kind: kind as u16,
            id,
            arg,
            ..Default::default()
        })
    }

    /// Books with three containers and `n` requests of random cost, a few
    /// still live, some evicted.
    fn books(costs: &[(u8, u32)], retained: u32) -> std::sync::Arc<Accounting> {
        let limits = Limits {
            max_containers: 16,
            max_live_requests: 64,
            retained_requests: retained,
        };
        let acct = Accounting::new("t", 1, 1, limits);
        declare(&acct, 1, 0, "web");
        declare(&acct, 2, 1, "api");
        declare(&acct, 3, 0, "db");
        let mut w = acct.writer(0);
        let mut sampler = acct.writer(1);
        for (i, &(c, ns)) in costs.iter().enumerate() {
            let (id, c) = (i as u32 + 1, u32::from(c % 3) + 1);
            ring(&acct, EntryKind::BeginRequest, id, c).unwrap();
            w.charge_exit(Some(tag(c, id)), ExitReason::PortOut, u64::from(ns));
            sampler.charge_run(0, Some(tag(c, id)), u64::from(ns % 1000));
            if i % 7 != 3 {
                ring(&acct, EntryKind::EndRequest, id, 0).unwrap();
            }
        }
        acct
    }

    proptest! {
        /// Partial selection returns what a full sort returns.
        #[test]
        fn selection_equals_a_full_sort(
            costs in proptest::collection::vec((0u8..3, 0u32..50), 0..200),
            limit in 0usize..40,
            container in proptest::option::of(0usize..5),
            by_cost in proptest::bool::ANY,
            retained in 1u32..300,
        ) {
            let acct = books(&costs, retained);
            let order = if by_cost { RequestOrder::Cost } else { RequestOrder::Begin };
            let (got, stats) = acct.select_requests(RequestFilter { container, order, limit, trace_id: None });
            let mut all = acct.registry().request_rows();
            all.retain(|r| container.is_none_or(|c| r.container == c));
            all.sort_by_key(|r| rank_key(order, r.seq, crate::registry::cost_of(&r.charges)));
            all.truncate(limit);
            let got: Vec<RequestRow> = got.into_iter().map(|s| s.row).collect();
            prop_assert_eq!(got, all);
            prop_assert!(limit == 0 || stats.steps >= 1);
        }
    }

    /// `trace_id` keeps only the requests begun with that trace id, live
    /// and finished alike, in the order asked and within the limit.
    #[test]
    fn requests_are_selected_by_trace_id() {
        let acct = books(&[(0, 10), (1, 20), (2, 30)], 16);
        let trace = |t: &str| {
            Some(RequestMeta {
                trace_id: RequestMeta::parse_trace_id(t),
                attributes: Vec::new(),
            })
        };
        let (t, other) = (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "0af7651916cd43dd8448eb211c80319c",
        );
        acct.begin_with_meta(50, 1, 0, trace(t)).unwrap();
        acct.begin_with_meta(51, 3, 0, trace(other)).unwrap();
        acct.begin_with_meta(52, 2, 0, trace(t)).unwrap();
        let mut w = acct.writer(0);
        w.charge_exit(Some(tag(2, 52)), ExitReason::PortOut, 500);
        drop(w);
        // One of the two finished (retained), the other live.
        ring(&acct, EntryKind::EndRequest, 50, 0).unwrap();
        let select = |trace_id, order, limit| {
            let f = RequestFilter {
                container: None,
                order,
                limit,
                trace_id,
            };
            acct.select_requests(f)
                .0
                .iter()
                .map(|r| r.row.guest_id)
                .collect::<Vec<_>>()
        };
        let want = RequestMeta::parse_trace_id(t);
        assert_eq!(select(want, RequestOrder::Begin, 10), [50, 52]);
        assert_eq!(select(want, RequestOrder::Cost, 10), [52, 50]);
        assert_eq!(select(want, RequestOrder::Cost, 1), [52]);
        assert_eq!(
            select(RequestMeta::parse_trace_id(other), RequestOrder::Begin, 10),
            [51]
        );
        let unknown = RequestMeta::parse_trace_id("11111111111111111111111111111111");
        assert!(select(unknown, RequestOrder::Begin, 10).is_empty());
        assert_eq!(select(None, RequestOrder::Begin, 100).len(), 6);
    }

    #[test]
    fn views_serialise_exactly_as_the_report() {
        let acct = books(&[(0, 10), (1, 20), (2, 30), (1, 5), (0, 7)], 2);
        acct.begin_with_meta(
            99,
            2,
            5,
            Some(RequestMeta {
                trace_id: RequestMeta::parse_trace_id("0af7651916cd43dd8448eb211c80319c"),
                attributes: vec![("route".into(), "/x".into())],
            }),
        )
        .unwrap();
        let report = Report::build(&acct, VmInfo::default());
        let (views, stats) = acct.containers_view();
        assert_eq!(stats.steps, 1);
        assert_eq!(
            serde_json::to_value(&views).unwrap(),
            serde_json::to_value(&report.containers).unwrap()
        );
        let reports: Vec<ContainerReport> = views.iter().map(ContainerView::to_report).collect();
        assert_eq!(reports, report.containers);
        let one = acct.container_view(2).unwrap();
        assert_eq!(one.to_report(), report.containers[2]);
        assert!(acct.container_view(4).is_none());

        let f = RequestFilter {
            container: None,
            order: RequestOrder::Begin,
            limit: 100,
            trace_id: None,
        };
        let rows: Vec<RequestReport> = acct
            .select_requests(f)
            .0
            .iter()
            .map(SelectedRequest::to_report)
            .collect();
        assert_eq!(rows, report.requests);
        let traced = rows.iter().find(|r| r.id == 99).unwrap();
        assert_eq!(
            traced.trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        let json = serde_json::to_value(traced).unwrap();
        assert_eq!(json["attributes"]["route"], "/x");
        let plain = serde_json::to_value(rows.iter().find(|r| r.id != 99).unwrap()).unwrap();
        assert!(plain.get("trace_id").is_none() && plain.get("attributes").is_none());
        assert_eq!(acct.totals(), {
            let mut t = Charges::default();
            for w in acct.writer_totals() {
                t.add(&w);
            }
            t
        });
    }

    proptest! {
        /// `ChargesJson` writes what `ChargesReport` would, for any charges
        /// (a field added to the report and not here fails this).
        #[test]
        fn charges_json_matches_the_report_form(
            words in proptest::collection::vec(0u64..1_000_000, Charges::WORDS)
        ) {
            let c = Charges::from_words(&words.try_into().unwrap());
            prop_assert_eq!(
                serde_json::to_string(&ChargesJson(&c)).unwrap(),
                serde_json::to_string(&ChargesReport::from(&c)).unwrap()
            );
        }
    }

    proptest! {
        /// Selection by any value returns what a full sort by it returns.
        #[test]
        fn selection_by_value_equals_a_full_sort(
            costs in proptest::collection::vec((0u8..3, 0u32..50), 0..200),
            limit in 0usize..40,
            retained in 1u32..300,
        ) {
            let acct = books(&costs, retained);
            // The exits' host ns alone: not the cost (which adds run time).
            let value = |c: &Charges| c.exits_total().host_ns;
            let (got, _) = acct.top_requests_by(limit, value);
            let mut all = acct.registry().request_rows();
            all.retain(|r| value(&r.charges) > 0);
            all.sort_by_key(|r| rank_key(RequestOrder::Cost, r.seq, value(&r.charges)));
            all.truncate(limit);
            prop_assert_eq!(got, all);
        }
    }

    /// A reader on one thread while another begins, ends and evicts: no
    /// request twice, every row well-formed, the lock held in short steps.
    #[test]
    fn reads_under_concurrent_churn_see_no_request_twice() {
        let limits = Limits {
            max_containers: 8,
            max_live_requests: 512,
            retained_requests: 5_000,
        };
        let acct = Accounting::new("t", 1, 0, limits);
        declare(&acct, 1, 0, "a");
        declare(&acct, 2, 0, "b");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (acct, stop) = (std::sync::Arc::clone(&acct), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut w = acct.writer(0);
                let mut id = 1u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let c = 1 + id % 2;
                    ring(&acct, EntryKind::BeginRequest, id, c).unwrap();
                    w.charge_exit(Some(tag(c, id)), ExitReason::PortOut, u64::from(id % 97));
                    ring(&acct, EntryKind::EndRequest, id, 0).unwrap();
                    id = if id == 1_000_000 { 1 } else { id + 1 };
                }
            })
        };
        for round in 0..40 {
            let order = if round % 2 == 0 {
                RequestOrder::Begin
            } else {
                RequestOrder::Cost
            };
            let (rows, stats) = acct.select_requests(RequestFilter {
                container: None,
                order,
                limit: 10_000,
                trace_id: None,
            });
            let mut seqs: Vec<u64> = rows.iter().map(|r| r.row.seq).collect();
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "duplicate request in a read");
            assert!(rows
                .iter()
                .all(|r| r.row.container == 1 + (r.row.guest_id % 2) as usize));
            assert!(stats.steps >= 1);
            let (views, _) = acct.containers_view();
            assert_eq!(views.len(), 3);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }
}
