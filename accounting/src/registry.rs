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
//!
//! # Live and finished requests
//!
//! A live [`Request`] owns an `Arc<Counters>` that writers charge without a
//! lock (their tag caches hold clones). When it ends it moves to the retained
//! list, in end order, numbered by a monotonic *finish number*. It is
//! *compacted* — its counters replaced by a [`CompactCharges`] of its
//! non-zero words, and its cost key fixed — as soon as the registry holds the
//! only reference to its counters (`Arc::get_mut`): from then on no charge
//! can land on it (new references only come from [`Registry::resolve`],
//! which never hands out a finished request). Until then it is *pending*:
//! still read from its atomics, so a late charge by a writer whose cache
//! still held it is counted. Pending requests are retried on every
//! declaration and every API read ([`Registry::sweep`]); there are at most
//! as many as writers' cache slots hold.
//!
//! Each container keeps `settled`: the charges of its requests that can no
//! longer change (compacted retained ones and evicted ones). Its requests'
//! total is `settled` plus what its live and pending requests read now, so a
//! container view never walks the finished requests.
//!
//! # Reading without holding the lock for long
//!
//! [`Registry::scan_requests`] and [`Registry::container_rows`] do a bounded
//! amount of work per call and keep their place in a cursor that survives
//! the lock being released, new requests and eviction: the caller
//! (`accounting::query`) takes the lock once per step. See
//! [`RequestCursor`] for what a multi-step read sees.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::abi::{self, EntryKind, RingEntry};
use crate::compact::CompactCharges;
use crate::errors::GuestError;
use crate::resource::{Charges, Columns, Counters};

/// Name of every tenant's catch-all container.
pub const UNATTRIBUTED: &str = "unattributed";

/// Most attributes kept per request (more are dropped).
pub const MAX_META_ATTRIBUTES: usize = 32;
/// Longest attribute key kept, in bytes (longer ones are cut).
pub const MAX_META_KEY: usize = 64;
/// Longest attribute value kept, in bytes (longer ones are cut).
pub const MAX_META_VALUE: usize = 256;

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
    /// Names from the top-level container down, joined with `/`.
    pub path: Arc<str>,
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
    /// Its live requests.
    pub requests_live: u64,
    /// Its finished requests still retained.
    pub requests_retained: u64,
    /// Sum of the charges of evicted requests (those still referenced by a
    /// writer when evicted are added once the writer lets go; see
    /// [`Registry::requests_charged`] for the exact figure meanwhile).
    pub evicted: Charges,
    /// Charges of its requests that can no longer change: compacted
    /// retained ones plus folded evicted ones.
    pub settled: Charges,
}

/// Optional facts about a request that the guest agent supplies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// W3C trace-context trace id.
    pub trace_id: Option<[u8; 16]>,
    /// Free-form attributes, at most [`MAX_META_ATTRIBUTES`].
    pub attributes: Vec<(String, String)>,
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl RequestMeta {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> Option<String> {
        use std::fmt::Write as _;
        self.trace_id.map(|t| {
            t.iter().fold(String::with_capacity(32), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
        })
    }

    /// Parses 32 hex digits (either case) into a trace id.
    pub fn parse_trace_id(hex: &str) -> Option<[u8; 16]> {
        let b = hex.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = std::str::from_utf8(b.get(2 * i..2 * i + 2)?).ok()?;
            *o = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(out)
    }

    /// Within the bounds: at most [`MAX_META_ATTRIBUTES`] attributes, keys
    /// and values cut to [`MAX_META_KEY`] and [`MAX_META_VALUE`] bytes;
    /// `None` when nothing is left.
    fn bounded(mut self) -> Option<Box<Self>> {
        self.attributes.truncate(MAX_META_ATTRIBUTES);
        for (k, v) in &mut self.attributes {
            cut(k, MAX_META_KEY);
            cut(v, MAX_META_VALUE);
        }
        self.attributes.shrink_to_fit();
        (self.trace_id.is_some() || !self.attributes.is_empty()).then(|| Box::new(self))
    }
}

/// A live request.
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
    /// Trace id and attributes, if the agent gave any (boxed: absent costs
    /// one word).
    pub meta: Option<Box<RequestMeta>>,
}

/// A request, live or finished, as read out of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRow {
    /// Guest id.
    pub guest_id: u32,
    /// Index of its container.
    pub container: usize,
    /// The guest's 64-bit identifier (0: none).
    pub external_id: u64,
    /// Order of `begin`.
    pub seq: u64,
    /// Begin, ns since the books were opened.
    pub begin_ns: u64,
    /// End, same clock; `None` while live.
    pub end_ns: Option<u64>,
    /// Its charges as of the read.
    pub charges: Charges,
    /// Trace id and attributes.
    pub meta: Option<Box<RequestMeta>>,
}

/// A request's cost: host time of its exits plus its sampled run time.
pub fn cost_of(c: &Charges) -> u64 {
    c.exits
        .iter()
        .fold(c.guest_run_ns, |acc, e| acc.saturating_add(e.host_ns))
}

impl Request {
    fn row(&self) -> RequestRow {
        RequestRow {
            guest_id: self.guest_id,
            container: self.container,
            external_id: self.external_id,
            seq: self.seq,
            begin_ns: self.begin_ns,
            end_ns: self.end_ns,
            charges: self.cells.read(),
            meta: self.meta.clone(),
        }
    }
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

/// The hot part of a retained finished request: what selection reads.
#[derive(Clone, Copy, Debug)]
struct Key {
    /// Cost as of compaction (re-read from the counters while pending).
    cost: u64,
    seq: u64,
    container: u32,
    /// Charges still in atomics (see the module doc).
    pending: bool,
}

/// Cost column value of a pending request: its cost must be read from its
/// counters.
const PENDING_COST: u64 = u64::MAX;

/// The keys of the retained requests, one column per field (20 bytes a
/// request), so a selection by cost reads 8 MB per million requests and
/// touches the other columns only for the few that can still win.
#[derive(Debug, Default)]
struct Keys {
    cost: VecDeque<u64>,
    seq: VecDeque<u64>,
    container: VecDeque<u32>,
}

impl Keys {
    fn len(&self) -> usize {
        self.cost.len()
    }

    fn push_back(&mut self, k: Key) {
        self.cost.push_back(if k.pending { PENDING_COST } else { k.cost });
        self.seq.push_back(k.seq);
        self.container.push_back(k.container);
    }

    fn pop_front(&mut self) -> Option<Key> {
        let (cost, seq, container) = (
            self.cost.pop_front()?,
            self.seq.pop_front()?,
            self.container.pop_front()?,
        );
        Some(Key {
            cost,
            seq,
            container,
            pending: cost == PENDING_COST,
        })
    }

    fn get(&self, i: usize) -> Option<Key> {
        let cost = *self.cost.get(i)?;
        Some(Key {
            cost,
            seq: *self.seq.get(i)?,
            container: *self.container.get(i)?,
            pending: cost == PENDING_COST,
        })
    }
}

#[derive(Debug)]
enum Stored {
    /// Still referenced by a writer: read the atomics.
    Pending(Arc<Counters>),
    /// Final.
    Compact(CompactCharges),
}

impl Stored {
    fn read(&self) -> Charges {
        match self {
            Self::Pending(c) => c.read(),
            Self::Compact(c) => c.decode(),
        }
    }
}

/// The cold part of a retained finished request.
#[derive(Debug)]
struct Cold {
    guest_id: u32,
    external_id: u64,
    begin_ns: u64,
    end_ns: u64,
    charges: Stored,
    meta: Option<Box<RequestMeta>>,
}

/// Where a multi-step read of the requests is (see
/// [`Registry::scan_requests`]).
///
/// A read first walks the retained finished requests by finish number, then
/// the live ones by `(container, seq)`; each step first catches up with the
/// requests that finished since the last step. A request that finishes after
/// its live position was passed was already seen live and is skipped; one
/// that finishes before is seen among the finished. So a read that spans
/// many steps sees every request that was live or retained for the whole
/// read exactly once, never one twice; a request evicted before the read
/// reached it is not seen (its charges are in its container's `evicted`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCursor {
    /// Next finish number to read.
    fin: u64,
    /// Next live position to read; `None` before the live phase.
    live: Option<(usize, u64)>,
    done: bool,
}

impl RequestCursor {
    /// Whether the read is complete.
    pub fn done(&self) -> bool {
        self.done
    }
}

/// Finished requests a step of [`Registry::scan_requests`] may skip without
/// calling its visitor: those cheaper than `min_cost` or begun after
/// `max_seq` (the worst a selection still holds, once it is full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prune {
    /// Skip costs below this.
    pub min_cost: u64,
    /// Skip seqs above this.
    pub max_seq: u64,
}

impl Prune {
    /// Skips nothing.
    pub const NONE: Prune = Prune {
        min_cost: 0,
        max_seq: u64::MAX,
    };
}

/// A request met by [`Registry::scan_requests`]: its sort keys, and its
/// whole row on demand.
pub struct Candidate<'a> {
    /// Order of `begin`.
    pub seq: u64,
    /// Cost as of now ([`cost_of`]).
    pub cost: u64,
    /// Index of its container.
    pub container: usize,
    src: CandidateSrc<'a>,
}

enum CandidateSrc<'a> {
    Live(&'a Request),
    /// The cold list and the index in it: only touched for a row.
    Retained(&'a VecDeque<Cold>, usize),
}

impl Candidate<'_> {
    /// Its W3C trace id, if it was begun with one (no copy of the row).
    pub fn trace_id(&self) -> Option<[u8; 16]> {
        let meta = match self.src {
            CandidateSrc::Live(r) => r.meta.as_deref(),
            CandidateSrc::Retained(cold, i) => cold[i].meta.as_deref(),
        };
        meta.and_then(|m| m.trace_id)
    }

    /// Its charges as of now (decodes them; no metadata is cloned).
    pub fn charges(&self) -> Charges {
        match self.src {
            CandidateSrc::Live(r) => r.cells.read(),
            CandidateSrc::Retained(cold, i) => cold[i].charges.read(),
        }
    }

    /// The whole row (decodes the charges, clones the metadata).
    pub fn row(&self) -> RequestRow {
        match self.src {
            CandidateSrc::Live(r) => r.row(),
            CandidateSrc::Retained(cold, i) => {
                let c = &cold[i];
                RequestRow {
                    guest_id: c.guest_id,
                    container: self.container,
                    external_id: c.external_id,
                    seq: self.seq,
                    begin_ns: c.begin_ns,
                    end_ns: Some(c.end_ns),
                    charges: c.charges.read(),
                    meta: c.meta.clone(),
                }
            }
        }
    }
}

/// One container as [`Registry::container_rows`] copies it out: everything
/// but its own ledger's sum, which the caller reads from `cells` after
/// letting go of the lock.
#[derive(Clone, Debug)]
pub struct ContainerRow {
    /// Position (0 is `unattributed`).
    pub index: usize,
    /// Guest id.
    pub guest_id: u32,
    /// Path from the top-level container.
    pub path: Arc<str>,
    /// Parent index.
    pub parent: Option<usize>,
    /// Retired by the guest.
    pub retired: bool,
    /// Its ledger.
    pub cells: Arc<Columns>,
    /// Requests begun.
    pub begun: u64,
    /// Requests ended.
    pub ended: u64,
    /// Live requests.
    pub live: u64,
    /// Finished requests retained.
    pub retained: u64,
    /// Finished requests evicted.
    pub evicted: u64,
    /// Sum of the charges of all its requests, evicted ones included.
    pub charged: Charges,
}

/// The principal tree of one VM (one tenant).
#[derive(Debug)]
pub struct Registry {
    writers: usize,
    limits: Limits,
    containers: Vec<Container>,
    live_containers: HashMap<u32, usize>,
    /// Paths (`parent/…/name`) of the live containers: names are unique
    /// among the live children of a parent.
    live_paths: HashSet<Arc<str>>,
    /// The highest container or request id ever declared or begun.
    max_id: u32,
    /// Guest request id → its key in `live`.
    live_ids: HashMap<u32, (usize, u64)>,
    /// Live requests by `(container, seq)`.
    live: BTreeMap<(usize, u64), Request>,
    /// Finish number of `keys[0]` / `cold[0]`.
    front_fin: u64,
    /// Retained finished requests, oldest first (same length as `cold`).
    keys: Keys,
    cold: VecDeque<Cold>,
    /// Finish numbers of retained requests not compacted yet.
    pending: Vec<u64>,
    /// Evicted requests whose counters a writer still holds: `(container,
    /// counters)`, folded into the container once it lets go.
    evicted_pending: Vec<(usize, Arc<Counters>)>,
    /// Zeroed counter blocks of compacted requests, reused by `begin`:
    /// freeing and re-allocating a cache-aligned block per request leaves
    /// holes the small compact allocations cannot fill (heap growth).
    spare: Vec<Arc<Counters>>,
    next_seq: u64,
    stats: RegistryStats,
}

/// Most zeroed counter blocks kept for reuse.
const SPARE_MAX: usize = 1024;

/// Keeps `cells` (no longer referenced by anyone else) for reuse, zeroed.
fn recycle(spare: &mut Vec<Arc<Counters>>, mut cells: Arc<Counters>) {
    if spare.len() < SPARE_MAX {
        if let Some(c) = Arc::get_mut(&mut cells) {
            *c = Counters::default();
            spare.push(cells);
        }
    }
}

fn new_container(
    guest_id: u32,
    name: String,
    path: Arc<str>,
    parent: Option<usize>,
    writers: usize,
) -> Container {
    Container {
        guest_id,
        name,
        path,
        parent,
        retired: false,
        cells: Arc::new(Columns::new(writers)),
        requests_begun: 0,
        requests_ended: 0,
        requests_evicted: 0,
        requests_live: 0,
        requests_retained: 0,
        evicted: Charges::default(),
        settled: Charges::default(),
    }
}

impl Registry {
    /// A registry with only `unattributed`, for `writers` ledger columns.
    pub fn new(writers: usize, limits: Limits) -> Self {
        let unattributed = new_container(
            abi::NO_CONTAINER,
            UNATTRIBUTED.to_string(),
            Arc::from(UNATTRIBUTED),
            None,
            writers,
        );
        Self {
            writers,
            limits,
            containers: vec![unattributed],
            live_containers: HashMap::new(),
            live_paths: HashSet::new(),
            max_id: 0,
            live_ids: HashMap::new(),
            live: BTreeMap::new(),
            front_fin: 0,
            keys: Keys::default(),
            cold: VecDeque::new(),
            pending: Vec::new(),
            evicted_pending: Vec::new(),
            spare: Vec::new(),
            next_seq: 0,
            stats: RegistryStats::default(),
        }
    }

    /// The highest container or request id ever declared or begun (0 if
    /// none): ids above it collide with nothing live or retained.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Every container ever declared, `unattributed` first.
    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    /// Live requests, by container then begin order.
    pub fn live_requests(&self) -> impl Iterator<Item = &Request> {
        self.live.values()
    }

    /// Number of live requests.
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Retained finished requests, oldest (first finished) first, as rows
    /// (charges decoded on the way).
    pub fn finished_requests(&self) -> impl Iterator<Item = RequestRow> + '_ {
        (0..self.keys.len()).filter_map(|i| self.finished_row(i))
    }

    /// The retained finished request at position `i` (0: oldest), as a row.
    fn finished_row(&self, i: usize) -> Option<RequestRow> {
        let (k, c) = (self.keys.get(i)?, self.cold.get(i)?);
        Some(RequestRow {
            guest_id: c.guest_id,
            container: k.container as usize,
            external_id: c.external_id,
            seq: k.seq,
            begin_ns: c.begin_ns,
            end_ns: Some(c.end_ns),
            charges: c.charges.read(),
            meta: c.meta.clone(),
        })
    }

    /// The finish number of the oldest retained finished request: those
    /// below it were evicted. Finish numbers count ends from 0 over the
    /// VM's life.
    pub fn front_fin(&self) -> u64 {
        self.front_fin
    }

    /// The finish number the next request to end will get.
    pub fn next_fin(&self) -> u64 {
        self.front_fin + self.keys.len() as u64
    }

    /// The retained finished request with finish number `fin`, and whether
    /// its charges are still pending (a writer may still add to them), or
    /// `None` if it was evicted or has not finished yet. A cursor over
    /// finish numbers reads every request once, in end order (the OTLP
    /// exporter's).
    pub fn finished_at(&self, fin: u64) -> Option<(RequestRow, bool)> {
        let i = usize::try_from(fin.checked_sub(self.front_fin)?).ok()?;
        let pending = self.keys.get(i)?.pending;
        Some((self.finished_row(i)?, pending))
    }

    /// Number of retained finished requests.
    pub fn retained_len(&self) -> usize {
        self.keys.len()
    }

    /// Retained finished requests whose charges are still in atomics
    /// (a writer still holds them), and evicted ones likewise.
    pub fn pending_len(&self) -> (usize, usize) {
        (self.pending.len(), self.evicted_pending.len())
    }

    /// Every live and retained request, in begin order (`seq`).
    pub fn request_rows(&self) -> Vec<RequestRow> {
        self.requests_by_seq().collect()
    }

    /// Every live and retained request, in begin order (`seq`), one row at
    /// a time: what a streamed report walks. It holds a sort permutation
    /// of the retained requests (4 bytes each) and a reference per live
    /// one, never a row per request.
    pub fn requests_by_seq(&self) -> impl Iterator<Item = RequestRow> + '_ {
        // Retention is bounded by `Limits::retained_requests`, a u32.
        let mut order: Vec<u32> = (0..u32::try_from(self.keys.len()).unwrap_or(u32::MAX)).collect();
        order.sort_unstable_by_key(|&i| self.keys.seq.get(i as usize).copied());
        let mut finished = order
            .into_iter()
            .filter_map(move |i| self.finished_row(i as usize))
            .peekable();
        // `live` is ordered by (container, seq): sort the references.
        let mut live: Vec<&Request> = self.live.values().collect();
        live.sort_unstable_by_key(|r| r.seq);
        let mut live = live.into_iter().map(Request::row).peekable();
        std::iter::from_fn(move || match (finished.peek(), live.peek()) {
            (Some(f), Some(l)) if l.seq < f.seq => live.next(),
            (Some(_), _) => finished.next(),
            (None, _) => live.next(),
        })
    }

    /// Per container, the charges of all its requests, evicted ones
    /// included: `settled` plus what live and pending requests read now.
    /// O(containers + live requests), never O(finished requests).
    pub fn requests_charged(&self) -> Vec<Charges> {
        let unsettled = self.requests_unsettled();
        self.containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut sum = c.settled;
                if let Some(u) = unsettled.get(&i) {
                    sum.add(u);
                }
                sum
            })
            .collect()
    }

    /// Per container that has any, the charges of its requests that are
    /// not settled into it yet: live requests, pending retained ones and
    /// pending evicted ones. O(live + pending): add it to a container's
    /// `settled` for the whole of its requests' charges.
    pub fn requests_unsettled(&self) -> HashMap<usize, Charges> {
        let mut out: HashMap<usize, Charges> = HashMap::new();
        for r in self.live.values() {
            r.cells.add_into(out.entry(r.container).or_default());
        }
        for &fin in &self.pending {
            if let Some((k, c)) = self.retained_at(fin) {
                if let Stored::Pending(cells) = &c.charges {
                    cells.add_into(out.entry(k.container as usize).or_default());
                }
            }
        }
        for (idx, cells) in &self.evicted_pending {
            cells.add_into(out.entry(*idx).or_default());
        }
        out
    }

    /// Declaration counts.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Index of the live (not retired) container with guest id `id`.
    pub fn live_container_index(&self, id: u32) -> Option<usize> {
        self.live_containers.get(&id).copied()
    }

    /// The live (not retired) container with guest id `id`.
    pub fn live_container(&self, id: u32) -> Option<&Container> {
        self.live_container_index(id).and_then(|i| self.containers.get(i))
    }

    /// Index of the live request with guest id `id`'s container.
    pub fn live_request_container(&self, id: u32) -> Option<usize> {
        self.live_ids.get(&id).map(|&(c, _)| c)
    }

    /// Applies one ring entry (its `seq` already checked by the consumer).
    /// `now_ns` is the time since the VM started.
    pub fn apply(&mut self, e: &RingEntry, now_ns: u64) -> Result<(), GuestError> {
        let kind = EntryKind::from_u16(e.kind).ok_or(GuestError::RingBadKind)?;
        if e.id == 0 {
            return Err(GuestError::RingZeroId);
        }
        let result = match kind {
            EntryKind::DeclareContainer => self.declare(e),
            EntryKind::RetireContainer => self.retire(e.id, now_ns),
            EntryKind::BeginRequest => self.begin_with_meta(e.id, e.arg, e.arg64, None, now_ns),
            EntryKind::EndRequest => self.end(e.id, now_ns),
        };
        self.sweep();
        result
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
        let path: Arc<str> = match parent {
            Some(p) => Arc::from(format!("{}/{name}", self.containers[p].path)),
            None => Arc::from(name.as_str()),
        };
        if self.live_paths.contains(&path) {
            return Err(GuestError::RingDuplicateName);
        }
        self.live_paths.insert(Arc::clone(&path));
        self.containers
            .push(new_container(e.id, name, path, parent, self.writers));
        self.live_containers.insert(e.id, self.containers.len() - 1);
        self.max_id = self.max_id.max(e.id);
        self.stats.containers_declared += 1;
        Ok(())
    }

    fn retire(&mut self, id: u32, now_ns: u64) -> Result<(), GuestError> {
        let idx = self
            .live_containers
            .remove(&id)
            .ok_or(GuestError::RingUnknownContainer)?;
        self.containers[idx].retired = true;
        self.live_paths.remove(&self.containers[idx].path);
        self.stats.containers_retired += 1;
        let ending: Vec<u32> = self
            .live
            .range((idx, 0)..=(idx, u64::MAX))
            .map(|(_, r)| r.guest_id)
            .collect();
        for rid in ending {
            self.finish(rid, now_ns);
            self.stats.requests_ended_by_retire += 1;
        }
        Ok(())
    }

    /// Begins request `id` in the live container with guest id `container`,
    /// with the agent's optional metadata (bounded: see [`RequestMeta`]).
    /// The ring's `begin` is this without metadata.
    pub fn begin_with_meta(
        &mut self,
        id: u32,
        container: u32,
        external_id: u64,
        meta: Option<RequestMeta>,
        now_ns: u64,
    ) -> Result<(), GuestError> {
        if id == 0 {
            return Err(GuestError::RingZeroId);
        }
        let idx = *self
            .live_containers
            .get(&container)
            .ok_or(GuestError::RingUnknownContainer)?;
        if self.live_ids.contains_key(&id) {
            return Err(GuestError::RingDuplicateRequest);
        }
        if self.live.len() >= self.limits.max_live_requests as usize {
            return Err(GuestError::RingRequestLimit);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.max_id = self.max_id.max(id);
        self.live_ids.insert(id, (idx, seq));
        self.live.insert(
            (idx, seq),
            Request {
                guest_id: id,
                container: idx,
                external_id,
                seq,
                begin_ns: now_ns,
                end_ns: None,
                cells: self.spare.pop().unwrap_or_default(),
                meta: meta.and_then(RequestMeta::bounded),
            },
        );
        let c = &mut self.containers[idx];
        c.requests_begun += 1;
        c.requests_live += 1;
        self.stats.requests_begun += 1;
        Ok(())
    }

    fn end(&mut self, id: u32, now_ns: u64) -> Result<(), GuestError> {
        if !self.live_ids.contains_key(&id) {
            return Err(GuestError::RingUnknownRequest);
        }
        self.finish(id, now_ns);
        self.stats.requests_ended += 1;
        Ok(())
    }

    /// Moves a live request to the retained list (compacted at once if no
    /// writer holds it), evicting the oldest finished ones beyond the
    /// retention limit.
    fn finish(&mut self, id: u32, now_ns: u64) {
        let Some(key) = self.live_ids.remove(&id) else {
            return;
        };
        let Some(mut r) = self.live.remove(&key) else {
            return;
        };
        let c = &mut self.containers[r.container];
        c.requests_live -= 1;
        c.requests_ended += 1;
        c.requests_retained += 1;
        let fin = self.front_fin + self.keys.len() as u64;
        let (charges, cost, pending) = match Arc::get_mut(&mut r.cells) {
            Some(cells) => {
                let charges = cells.read();
                c.settled.add(&charges);
                recycle(&mut self.spare, r.cells);
                (
                    Stored::Compact(CompactCharges::encode(&charges)),
                    cost_of(&charges).min(PENDING_COST - 1),
                    false,
                )
            }
            None => {
                self.pending.push(fin);
                let cost = cost_of(&r.cells.read());
                (Stored::Pending(r.cells), cost, true)
            }
        };
        self.keys.push_back(Key {
            cost,
            seq: r.seq,
            container: u32::try_from(r.container).unwrap_or(u32::MAX),
            pending,
        });
        self.cold.push_back(Cold {
            guest_id: r.guest_id,
            external_id: r.external_id,
            begin_ns: r.begin_ns,
            end_ns: now_ns,
            charges,
            meta: r.meta,
        });
        while self.keys.len() > self.limits.retained_requests as usize {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let (Some(k), Some(old)) = (self.keys.pop_front(), self.cold.pop_front()) else {
            return;
        };
        self.front_fin += 1;
        let idx = k.container as usize;
        let c = &mut self.containers[idx];
        c.requests_evicted += 1;
        c.requests_retained -= 1;
        self.stats.requests_evicted += 1;
        match old.charges {
            // Already in `settled`.
            Stored::Compact(cc) => cc.add_into(&mut c.evicted),
            Stored::Pending(mut cells) => {
                if Arc::get_mut(&mut cells).is_some() {
                    let charges = cells.read();
                    c.evicted.add(&charges);
                    c.settled.add(&charges);
                    recycle(&mut self.spare, cells);
                } else {
                    self.evicted_pending.push((idx, cells));
                }
            }
        }
        // Its finish number leaves `pending` at the next sweep.
    }

    fn retained_at(&self, fin: u64) -> Option<(Key, &Cold)> {
        let i = usize::try_from(fin.checked_sub(self.front_fin)?).ok()?;
        Some((self.keys.get(i)?, self.cold.get(i)?))
    }

    /// Compacts the retained requests no writer holds any more, and folds
    /// evicted ones likewise. O(pending), which is at most what the
    /// writers' tag caches hold.
    pub fn sweep(&mut self) {
        let front = self.front_fin;
        let (keys, cold, containers, spare) = (
            &mut self.keys,
            &mut self.cold,
            &mut self.containers,
            &mut self.spare,
        );
        self.pending.retain(|&fin| {
            let Some(i) = fin.checked_sub(front).and_then(|i| usize::try_from(i).ok()) else {
                return false; // evicted meanwhile
            };
            let (Some(container), Some(cost), Some(c)) =
                (keys.container.get(i), keys.cost.get_mut(i), cold.get_mut(i))
            else {
                return false;
            };
            let Stored::Pending(cells) = &mut c.charges else {
                return false;
            };
            if Arc::get_mut(cells).is_none() {
                return true;
            }
            let charges = cells.read();
            containers[*container as usize].settled.add(&charges);
            // Never the pending mark: a cost that large is capped below it.
            *cost = cost_of(&charges).min(PENDING_COST - 1);
            let old = std::mem::replace(&mut c.charges, Stored::Compact(CompactCharges::encode(&charges)));
            if let Stored::Pending(cells) = old {
                recycle(spare, cells);
            }
            false
        });
        let mut folded = Vec::new();
        self.evicted_pending.retain_mut(|(idx, cells)| {
            if Arc::get_mut(cells).is_none() {
                return true;
            }
            let charges = cells.read();
            let c = &mut containers[*idx];
            c.evicted.add(&charges);
            c.settled.add(&charges);
            folded.push(Arc::clone(cells));
            false
        });
        for cells in folded {
            recycle(spare, cells);
        }
    }

    /// One bounded step of a read of the requests: visits at most about
    /// `budget` requests, calling `visit` for each one that belongs to
    /// `container` (all when `None`), and moves `cur` on. Repeat (taking
    /// the lock each time) until `cur.done()`; see [`RequestCursor`].
    pub fn scan_requests(
        &self,
        cur: &mut RequestCursor,
        container: Option<usize>,
        budget: usize,
        prune: Prune,
        mut visit: impl FnMut(Candidate<'_>),
    ) {
        if cur.done {
            return;
        }
        let mut budget = budget.max(1);
        // Finished requests first (evicted ones are skipped over). Only the
        // key columns `prune` needs are read; a request's cold part only for
        // its row.
        cur.fin = cur.fin.max(self.front_fin);
        let len = self.keys.len();
        let start = usize::try_from(cur.fin - self.front_fin).unwrap_or(len).min(len);
        let n = budget.min(len - start);
        let k = &self.keys;
        for i in start..start + n {
            let cost = k.cost[i];
            if cost < prune.min_cost {
                continue;
            }
            let seq = k.seq[i];
            if seq > prune.max_seq {
                continue;
            }
            let idx = k.container[i] as usize;
            if container.is_some_and(|want| want != idx) {
                continue;
            }
            // Seen while it was live.
            if cur.live.is_some_and(|pos| (idx, seq) < pos) {
                continue;
            }
            let cost = if cost == PENDING_COST {
                cost_of(&self.cold[i].charges.read())
            } else {
                cost
            };
            visit(Candidate {
                seq,
                cost,
                container: idx,
                src: CandidateSrc::Retained(&self.cold, i),
            });
        }
        cur.fin += n as u64;
        budget -= n;
        if start + n < len {
            return;
        }
        // Then the live ones, in key order.
        let lower = cur.live.unwrap_or((0, 0));
        let (lower, upper) = match container {
            Some(want) => (lower.max((want, 0)), Bound::Included((want, u64::MAX))),
            None => (lower, Bound::Unbounded),
        };
        let mut range = self.live.range((Bound::Included(lower), upper));
        let mut next = lower;
        loop {
            if budget == 0 {
                cur.live = Some(next);
                return;
            }
            let Some((&(idx, seq), r)) = range.next() else {
                break;
            };
            budget -= 1;
            next = (idx, seq.saturating_add(1));
            let charges = r.cells.read();
            visit(Candidate {
                seq,
                cost: cost_of(&charges),
                container: idx,
                src: CandidateSrc::Live(r),
            });
        }
        // Every live position has been passed.
        cur.live = Some((usize::MAX, u64::MAX));
        cur.done = true;
    }

    /// One bounded step of a read of the containers: appends rows for
    /// containers from `*next` on until about `budget` containers plus live
    /// requests have been read, and moves `*next` on. Each container's row
    /// (its settled charges, its live and pending requests) is taken in one
    /// step, so it is consistent. Returns whether every container is done.
    pub fn container_rows(&self, next: &mut usize, budget: usize, out: &mut Vec<ContainerRow>) -> bool {
        let first = *next;
        let mut budget = budget.max(1);
        while *next < self.containers.len() && budget > 0 {
            let i = *next;
            let c = &self.containers[i];
            let mut charged = c.settled;
            for r in self.live.range((i, 0)..=(i, u64::MAX)).map(|(_, r)| r) {
                r.cells.add_into(&mut charged);
                budget = budget.saturating_sub(1);
            }
            out.push(ContainerRow {
                index: i,
                guest_id: c.guest_id,
                path: Arc::clone(&c.path),
                parent: c.parent,
                retired: c.retired,
                cells: Arc::clone(&c.cells),
                begun: c.requests_begun,
                ended: c.requests_ended,
                live: c.requests_live,
                retained: c.requests_retained,
                evicted: c.requests_evicted,
                charged,
            });
            budget = budget.saturating_sub(1);
            *next += 1;
        }
        // Pending and evicted-but-held requests (few) of the containers of
        // this step.
        let start = out.len() - (*next - first);
        let rows = &mut out[start..];
        let mut add = |idx: usize, cells: &Counters| {
            if let Some(row) = idx.checked_sub(first).and_then(|j| rows.get_mut(j)) {
                cells.add_into(&mut row.charged);
            }
        };
        for &fin in &self.pending {
            if let Some((k, c)) = self.retained_at(fin) {
                if let Stored::Pending(cells) = &c.charges {
                    add(k.container as usize, cells);
                }
            }
        }
        for (idx, cells) in &self.evicted_pending {
            add(*idx, cells);
        }
        *next >= self.containers.len()
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
            r => match self.live_ids.get(&r).and_then(|k| self.live.get(k)) {
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
        RingEntry::new(kind, id, arg, 0, name.as_bytes())
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
    fn names_are_unique_among_live_siblings_and_max_id_remembers() {
        let mut r = Registry::new(1, Limits::default());
        declare(&mut r, 5, 0, "web").unwrap();
        assert_eq!(declare(&mut r, 6, 0, "web"), Err(GuestError::RingDuplicateName));
        // The same name under another parent is another path.
        declare(&mut r, 7, 0, "api").unwrap();
        declare(&mut r, 8, 7, "web").unwrap();
        assert_eq!(declare(&mut r, 9, 7, "web"), Err(GuestError::RingDuplicateName));
        // Retired, the name is free again.
        r.apply(&entry(EntryKind::RetireContainer, 5, 0, ""), 0).unwrap();
        declare(&mut r, 6, 0, "web").unwrap();
        r.apply(&entry(EntryKind::BeginRequest, 0x2000_0000, 6, ""), 0)
            .unwrap();
        r.apply(&entry(EntryKind::EndRequest, 0x2000_0000, 0, ""), 0)
            .unwrap();
        assert_eq!(r.max_id(), 0x2000_0000, "ended requests still count");
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
            r.live[&r.live_ids[&id]]
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
    fn finish_numbers_walk_the_ends_in_order_and_eviction_moves_the_front() {
        let limits = Limits {
            max_containers: 4,
            max_live_requests: 4,
            retained_requests: 2,
        };
        let mut r = Registry::new(1, limits);
        declare(&mut r, 1, 0, "a").unwrap();
        assert_eq!((r.front_fin(), r.next_fin()), (0, 0));
        assert!(r.finished_at(0).is_none());
        for id in [5, 6, 7] {
            r.apply(&entry(EntryKind::BeginRequest, id, 1, ""), 0).unwrap();
        }
        // Ended out of begin order: finish numbers follow the ends.
        let held = Arc::clone(&r.live[&r.live_ids[&7]].cells);
        for (now, id) in [(10, 6), (11, 7), (12, 5)] {
            r.apply(&entry(EntryKind::EndRequest, id, 0, ""), now).unwrap();
        }
        // Three ends, two retained: finish number 0 (request 6) was evicted.
        assert_eq!((r.front_fin(), r.next_fin()), (1, 3));
        assert!(r.finished_at(0).is_none());
        let (seven, pending) = r.finished_at(1).unwrap();
        assert_eq!((seven.guest_id, seven.end_ns, pending), (7, Some(11), true));
        let (five, pending) = r.finished_at(2).unwrap();
        assert_eq!((five.guest_id, five.end_ns, pending), (5, Some(12), false));
        assert!(r.finished_at(3).is_none());
        // Once the writer lets go, request 7 settles.
        drop(held);
        r.sweep();
        assert!(!r.finished_at(1).unwrap().1);
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

    use crate::resource::{BlockOp, BlockWork, ExitReason};

    fn begin(r: &mut Registry, id: u32, c: u32) {
        r.apply(&entry(EntryKind::BeginRequest, id, c, ""), 0).unwrap();
    }

    fn end(r: &mut Registry, id: u32) {
        r.apply(&entry(EntryKind::EndRequest, id, 0, ""), 1).unwrap();
    }

    fn cells(r: &Registry, id: u32) -> Arc<Counters> {
        Arc::clone(&r.live[&r.live_ids[&id]].cells)
    }

    /// One charge of each kind a writer makes, from a few numbers.
    fn charge(c: &Counters, kind: u8, v: u64) {
        match kind % 5 {
            0 => c.add_exit_shared(ExitReason::ALL[(v % 7) as usize], v),
            1 => c.add_run_single_writer(v),
            2 => c.add_block_single_writer(&BlockWork {
                op: [BlockOp::Read, BlockOp::Write, BlockOp::Flush, BlockOp::Other][(v % 4) as usize],
                bytes: v * 512,
                device_ns: v,
                latency_ns: v * 3,
                error: v.is_multiple_of(3),
                throttled_ns: None,
            }),
            3 => c.add_interrupt_shared(),
            _ => c.add_net_single_writer(&crate::resource::NetCharge {
                tx_frames: 1,
                tx_bytes: v,
                host_ns: v / 2,
                ..Default::default()
            }),
        }
    }

    fn row_of(r: &Registry, id: u32) -> RequestRow {
        r.finished_requests().find(|q| q.guest_id == id).unwrap()
    }

    proptest::proptest! {
        /// Compaction keeps every charge: random charges, end (with or
        /// without a writer still holding the counters), compact, compare.
        #[test]
        fn compaction_preserves_every_charge(
            charges in proptest::collection::vec((0u8..5, 0u64..5_000_000), 0..40),
            late in proptest::collection::vec((0u8..5, 0u64..5_000), 0..5),
            held in proptest::bool::ANY,
        ) {
            let mut r = Registry::new(1, Limits::default());
            declare(&mut r, 1, 0, "a").unwrap();
            begin(&mut r, 7, 1);
            let writer = cells(&r, 7);
            for &(k, v) in &charges {
                charge(&writer, k, v);
            }
            let writer = if held { Some(writer) } else { drop(writer); None };
            end(&mut r, 7);
            proptest::prop_assert_eq!(r.pending_len().0, usize::from(held));
            if let Some(w) = writer {
                for &(k, v) in &late {
                    charge(&w, k, v);
                }
            }
            let want = {
                let c = Counters::default();
                for &(k, v) in charges.iter().chain(if held { late.iter() } else { [].iter() }) {
                    charge(&c, k, v);
                }
                c.read()
            };
            // Read while pending, then compacted: the same.
            proptest::prop_assert_eq!(row_of(&r, 7).charges, want);
            r.sweep();
            proptest::prop_assert_eq!(r.pending_len(), (0, 0));
            proptest::prop_assert_eq!(row_of(&r, 7).charges, want);
            proptest::prop_assert_eq!(r.containers()[1].settled, want);
            proptest::prop_assert_eq!(r.requests_charged()[1], want);
            proptest::prop_assert_eq!(r.keys.cost[0], cost_of(&want));
        }
    }

    #[test]
    fn late_charges_after_end_are_counted_until_the_writer_lets_go() {
        let mut r = Registry::new(1, Limits::default());
        declare(&mut r, 1, 0, "a").unwrap();
        begin(&mut r, 7, 1);
        // A writer's tag cache holds the counters across the end.
        let cached = r.resolve(abi::tag(1, 7)).request.unwrap();
        cached.add_exit_shared(ExitReason::PortOut, 10);
        end(&mut r, 7);
        assert_eq!(r.pending_len(), (1, 0));
        cached.add_exit_shared(ExitReason::PortOut, 5);
        // Sweeps while it is held change nothing.
        r.sweep();
        assert_eq!(r.pending_len(), (1, 0));
        assert_eq!(r.requests_charged()[1].exits_total().host_ns, 15);
        cached.add_exit_shared(ExitReason::MmioRead, 1);
        drop(cached);
        // Any declaration sweeps.
        declare(&mut r, 2, 0, "b").unwrap();
        assert_eq!(r.pending_len(), (0, 0));
        let row = row_of(&r, 7);
        assert_eq!(row.charges.exits_total().count, 3);
        assert_eq!(row.charges.exits_total().host_ns, 16);
        assert_eq!(r.containers()[1].settled.exits_total().count, 3);
        // Finished requests are never handed to writers again.
        assert_eq!(
            r.resolve(abi::tag(1, 7)).error,
            Some(GuestError::TagUnknownRequest)
        );
    }

    #[test]
    fn eviction_folds_compact_and_held_charges_into_evicted() {
        let limits = Limits {
            max_containers: 4,
            max_live_requests: 4,
            retained_requests: 1,
        };
        let mut r = Registry::new(1, limits);
        declare(&mut r, 1, 0, "a").unwrap();
        // 1: compacted at end; 2: still held by a writer when evicted.
        begin(&mut r, 1, 1);
        cells(&r, 1).add_exit_shared(ExitReason::PortOut, 100);
        end(&mut r, 1);
        begin(&mut r, 2, 1);
        let held = cells(&r, 2);
        held.add_exit_shared(ExitReason::PortOut, 20);
        end(&mut r, 2); // evicts 1 (compact)
        begin(&mut r, 3, 1);
        end(&mut r, 3); // evicts 2 (held)
        let c = &r.containers()[1];
        assert_eq!((c.requests_evicted, c.requests_retained), (2, 1));
        assert_eq!(r.stats().requests_evicted, 2);
        assert_eq!(c.evicted.exits_total().host_ns, 100);
        assert_eq!(r.pending_len(), (0, 1));
        held.add_exit_shared(ExitReason::PortOut, 3);
        assert_eq!(r.requests_charged()[1].exits_total().host_ns, 123);
        drop(held);
        r.sweep();
        let c = &r.containers()[1];
        assert_eq!(r.pending_len(), (0, 0));
        assert_eq!(c.evicted.exits_total().host_ns, 123);
        assert_eq!(c.evicted.exits_total().count, 3);
        assert_eq!(c.settled, c.evicted);
    }

    #[test]
    fn metadata_is_bounded_and_kept() {
        let mut r = Registry::new(1, Limits::default());
        declare(&mut r, 1, 0, "a").unwrap();
        let meta = RequestMeta {
            trace_id: RequestMeta::parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"),
            attributes: (0..100).map(|i| (format!("k{i}"), "é".repeat(200))).collect(),
        };
        r.begin_with_meta(5, 1, 9, Some(meta), 3).unwrap();
        assert_eq!(
            r.begin_with_meta(5, 1, 9, None, 3),
            Err(GuestError::RingDuplicateRequest)
        );
        assert_eq!(r.begin_with_meta(0, 1, 9, None, 3), Err(GuestError::RingZeroId));
        r.begin_with_meta(6, 1, 0, Some(RequestMeta::default()), 3)
            .unwrap();
        end(&mut r, 5);
        end(&mut r, 6);
        let m = row_of(&r, 5).meta.unwrap();
        assert_eq!(m.trace_id_hex().unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(m.attributes.len(), MAX_META_ATTRIBUTES);
        assert!(m.attributes.iter().all(|(_, v)| v.len() <= MAX_META_VALUE));
        // Empty metadata costs nothing.
        assert!(row_of(&r, 6).meta.is_none());
        assert_eq!(RequestMeta::parse_trace_id("xyz"), None);
    }

    /// What an interleaved read of the requests returned.
    fn scan_all_steps(r: &Registry, cur: &mut RequestCursor, budget: usize, seen: &mut Vec<u64>) {
        r.scan_requests(cur, None, budget, Prune::NONE, |c| seen.push(c.seq));
    }

    proptest::proptest! {
        /// A read spread over many lock holds, with begins, ends and
        /// evictions between them, sees every request that was live or
        /// retained for the whole read exactly once, and no request twice.
        #[test]
        fn chunked_read_is_consistent_under_churn(
            ops in proptest::collection::vec((0u8..3, 1u32..40, 1u32..4), 0..300),
            prefill in 0usize..60,
            budget in 1usize..8,
        ) {
            let limits = Limits { max_containers: 8, max_live_requests: 16, retained_requests: 12 };
            let mut r = Registry::new(1, limits);
            for c in 1..=3 {
                declare(&mut r, c, 0, &format!("c{c}")).unwrap();
            }
            for i in 0..prefill as u32 {
                let id = 1000 + i;
                let _ = r.begin_with_meta(id, 1 + i % 3, 0, None, 0);
                if i % 2 == 0 {
                    let _ = r.apply(&entry(EntryKind::EndRequest, id, 0, ""), 0);
                }
            }
            let present = |r: &Registry| -> std::collections::BTreeSet<u64> {
                r.finished_requests().map(|q| q.seq).chain(r.live_requests().map(|q| q.seq)).collect()
            };
            let at_start = present(&r);
            let mut ever = at_start.clone();
            let mut cur = RequestCursor::default();
            let mut seen = Vec::new();
            let mut ops = ops.into_iter();
            while !cur.done() {
                scan_all_steps(&r, &mut cur, budget, &mut seen);
                if let Some((op, id, c)) = ops.next() {
                    match op {
                        0 => { let _ = r.begin_with_meta(id, c, 0, None, 0); }
                        1 => { let _ = r.apply(&entry(EntryKind::EndRequest, id, 0, ""), 0); }
                        _ => {
                            let live: Vec<u32> = r.live_requests().map(|q| q.guest_id).collect();
                            if let Some(&victim) = live.get(id as usize % live.len().max(1)) {
                                let _ = r.apply(&entry(EntryKind::EndRequest, victim, 0, ""), 0);
                            }
                        }
                    }
                    ever.extend(present(&r));
                }
            }
            let at_end = present(&r);
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), seen.len(), "a request was seen twice");
            for s in at_start.intersection(&at_end) {
                proptest::prop_assert!(seen.contains(s), "request {} present throughout was missed", s);
            }
            for s in &seen {
                proptest::prop_assert!(ever.contains(s), "request {} never existed", s);
            }
        }
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
            for c in r.live_requests().map(|q| q.container).chain(r.finished_requests().map(|q| q.container)) {
                proptest::prop_assert!(c > 0 && c < r.containers().len());
            }
            // Per-container counts match the lists, and the requests' sums
            // (settled + pending) match a walk over every request.
            let mut charged: Vec<Charges> = r.containers().iter().map(|c| c.evicted).collect();
            for (i, c) in r.containers().iter().enumerate() {
                let live = r.live_requests().filter(|q| q.container == i).count() as u64;
                let retained = r.finished_requests().filter(|q| q.container == i).count() as u64;
                proptest::prop_assert_eq!((c.requests_live, c.requests_retained), (live, retained));
            }
            for q in r.request_rows() {
                charged[q.container].add(&q.charges);
            }
            proptest::prop_assert_eq!(r.requests_charged(), charged);
            for (c, q) in tags {
                let res = r.resolve(tag(c, q));
                proptest::prop_assert!(res.container < r.containers().len());
            }
        }
    }
}
