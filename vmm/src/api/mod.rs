//! The host API: read-only JSON views of a running VM's books and a
//! Prometheus `/metrics` endpoint, served over HTTP/1.1 on a Unix socket
//! (`--api-sock PATH`, mode 0600); `/metrics` alone also over TCP
//! (`--metrics-addr IP:PORT`), for Prometheus to scrape.
//!
//! The server (hyper's HTTP/1.1, on a single-threaded tokio runtime of its
//! own thread, see [`ApiServer`]) answers requests one at a time. Every answer is read fresh from the live books
//! without stopping writers and without building a whole report: container
//! and request views come from `accounting::query`, which takes the
//! registry lock (that a vCPU needs on its rare path) only in short bounded
//! steps and never walks the finished requests for `/v1/containers` or
//! `/metrics`. Endpoints are described in `docs/api.yaml`.
//!
//! - [`server`]: [`ApiServer`] binds, serves both listeners, shuts down
//!   gracefully and removes the socket; [`route`] answers the socket,
//!   [`route_metrics`] the metrics listener.
//! - [`metrics`]: the Prometheus text exposition.
//! - [`client`]: a minimal HTTP/1.1 GET client over a Unix socket, used by
//!   `resourceful report --api-sock PATH`.
//! - [`top`]: the live per-container view of `resourceful top`.
//! - [`flame`]: `GET /v1/flamegraph.svg`, flame graphs of charges (and
//!   their folded stacks); [`flame_client`]: `resourceful flame`.

pub mod client;
pub mod flame;
pub mod flame_client;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod stats;
pub mod top;
pub mod top_host;
pub mod trace;

pub use server::{
    ApiServer, MetricsListener, HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, MAX_METRICS_CONNECTIONS,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use accounting::ledger::Accounting;

use crate::agent::{AgentHub, AgentPeer, AgentStats, ContextSnapshot, GuestView};
use crate::probes::DeviceProbes;
use accounting::query::{RequestFilter, SelectedRequest};
use accounting::report::{ChargesReport, ContainerReport, DeviceCounters, RequestReport, SlotsInfo, VmInfo};
use serde::Serialize;

/// Default number of requests listed by `GET /v1/requests`.
pub const DEFAULT_REQUEST_LIMIT: usize = 100;
/// Largest `limit` accepted by `GET /v1/requests`.
pub const MAX_REQUEST_LIMIT: usize = 10_000;
/// Containers in one page of `GET /v1/containers` unless `limit` says.
pub const DEFAULT_CONTAINER_LIMIT: usize = 1_000;
/// Largest `limit` accepted by `GET /v1/containers`.
pub const MAX_CONTAINER_LIMIT: usize = 10_000;
/// The `Content-Type` of JSON answers.
const JSON: &str = "application/json";
/// The `Content-Type` of the metrics listener's own answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path exists and is something other than a socket.
    #[error("--api-sock {0} exists and is not a socket: remove it or pass another path")]
    NotASocket(PathBuf),
    /// Another live process serves the path.
    #[error("--api-sock {0}: another process serves this socket: stop it or pass another path")]
    InUse(PathBuf),
    /// Binding, setting the mode or starting the server thread failed.
    #[error("cannot serve the API on --api-sock {path}: {what}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `--metrics-addr` could not be bound.
    #[error("--metrics-addr {addr}: {advice}")]
    MetricsAddr {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What to do about it.
        advice: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A disk as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskInfo {
    /// The backing file.
    pub path: String,
    /// Whether guest writes are refused.
    pub read_only: bool,
}

/// A network interface as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetInfo {
    /// The TAP interface.
    pub tap: String,
    /// The guest's MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

/// The devices of the VM, from its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DevicesInfo {
    /// virtio-blk disks, in slot order.
    pub disks: Vec<DiskInfo>,
    /// virtio-net interfaces, after the disks.
    pub nets: Vec<NetInfo>,
    /// The virtio-vsock device, after the interfaces.
    pub vsock: Option<VsockInfo>,
}

/// The vsock device as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VsockInfo {
    /// The guest's CID.
    pub cid: u64,
    /// The host socket (`PATH_P` per guest port, `PATH` for host connects).
    pub uds: Option<String>,
}

/// `GET /v1/vm`.
#[derive(Clone, Debug, Serialize)]
pub struct VmView {
    /// The tenant charged for this VM.
    pub tenant: String,
    /// Always `"running"` while the API answers.
    pub state: &'static str,
    /// vCPUs.
    pub vcpus: usize,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The kernel image (path, or `builtin:NAME`).
    pub kernel: String,
    /// `baremetal` or `linux`.
    pub boot: String,
    /// Whether exits are charged.
    pub accounting: bool,
    /// Nanoseconds since the vCPUs were about to start.
    pub uptime_ns: u64,
    /// Guest accesses that hit no device so far.
    pub unhandled_io: u64,
    /// Other crates' log lines dropped by the limiter so far.
    pub log_lines_suppressed: u64,
    /// Disks and network interfaces.
    pub devices: DevicesInfo,
    /// Every counter each device keeps, as of now (as the report's
    /// `devices`).
    pub device_counters: Vec<DeviceCounters>,
    /// The guest agent's channel.
    pub agent: AgentView,
    /// Where the vCPUs' tag slots are read from (as the report's
    /// `vm.slots`).
    pub slots: SlotsInfo,
    /// Where `--metrics-addr` serves `/metrics` over TCP (`IP:PORT` as
    /// bound, port 0 resolved); `null` without the flag.
    pub metrics_addr: Option<String>,
    /// The OTLP exporter's counters as of now (as the report's `vm.otlp`);
    /// `null` without `--otlp-endpoint`.
    pub otlp: Option<accounting::report::OtlpInfo>,
    /// The API server's counters (as the report's `vm.api`), up to the
    /// request before this one.
    pub api: accounting::report::ApiInfo,
    /// The report's tenant totals, as of now.
    pub totals: ChargesReport,
}

/// What the handlers share: the live books and how to describe the VM now.
pub struct ApiState {
    acct: Arc<Accounting>,
    devices: DevicesInfo,
    info: Box<dyn Fn() -> VmInfo + Send + Sync>,
    agent: Option<Arc<AgentHub>>,
    probes: Option<Arc<DeviceProbes>>,
    limits: Option<Arc<crate::live_limits::LiveLimits>>,
    stats: Arc<stats::ApiStats>,
}

impl ApiState {
    /// `info` is called for every request and must give the VM's facts as of
    /// now (`end: "running"`, `wall_ns` = uptime).
    pub fn new(
        acct: Arc<Accounting>,
        devices: DevicesInfo,
        info: impl Fn() -> VmInfo + Send + Sync + 'static,
    ) -> Self {
        Self {
            acct,
            devices,
            info: Box::new(info),
            agent: None,
            probes: None,
            limits: None,
            stats: Arc::default(),
        }
    }

    /// The API server's counters (`vm.api`).
    pub fn stats(&self) -> Arc<stats::ApiStats> {
        Arc::clone(&self.stats)
    }

    /// Serves the devices' counters (`/v1/vm`, `/metrics`) from `probes`.
    pub fn with_device_probes(mut self, probes: Arc<DeviceProbes>) -> Self {
        self.probes = Some(probes);
        self
    }

    /// Every device's counters now (none without probes).
    fn device_counters(&self) -> Vec<DeviceCounters> {
        self.probes.as_ref().map(|p| p.read()).unwrap_or_default()
    }

    /// Serves and changes the per-container limits (`/v1/limits`).
    pub fn with_limits(mut self, limits: Arc<crate::live_limits::LiveLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Serves the guest agent's view (`/v1/processes`, the containers'
    /// `guest` part) from `hub`.
    pub fn with_agent(mut self, hub: Arc<AgentHub>) -> Self {
        self.agent = Some(hub);
        self
    }
}

/// An answer: status, `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// A `Link` header: the next page of a paged list.
    pub link: Option<String>,
}

impl Reply {
    /// `value` as JSON with `status`.
    fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                content_type: JSON,
                body,
                link: None,
            },
            Err(e) => Self::error(500, format!("cannot serialize the answer: {e}")),
        }
    }

    /// `value` as JSON (status 200) into a buffer of `capacity` bytes to
    /// start with: large answers are not grown (and copied) twenty times.
    fn json_sized(value: &impl Serialize, capacity: usize) -> Self {
        let mut body = Vec::with_capacity(capacity);
        match serde_json::to_writer(&mut body, value) {
            Ok(()) => Self {
                status: 200,
                content_type: JSON,
                body,
                link: None,
            },
            Err(e) => Self::error(500, format!("cannot serialize the answer: {e}")),
        }
    }

    /// `msg` and a newline as plain text, with `status`.
    fn text(status: u16, msg: &str) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: format!("{msg}\n").into_bytes(),
            link: None,
        }
    }

    /// `{"error": msg}` with `status`.
    fn error(status: u16, msg: String) -> Self {
        Self {
            status,
            content_type: JSON,
            body: serde_json::json!({ "error": msg }).to_string().into_bytes(),
            link: None,
        }
    }
}

/// How `GET /v1/requests` orders its answer: by `seq` (begin order)
/// ascending, or by cost (`exits_total.host_ns + guest_run_ns`), most
/// expensive first.
pub use accounting::query::RequestOrder;

/// The parsed query of `GET /v1/requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestQuery {
    /// Only requests of this container index.
    pub container: Option<usize>,
    /// The order.
    pub order: RequestOrder,
    /// At most this many.
    pub limit: usize,
    /// Only requests begun with this W3C trace id.
    pub trace_id: Option<[u8; 16]>,
}

impl RequestQuery {
    /// Parses `container`, `order`, `limit` and `trace_id`; other
    /// parameters are ignored.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        let container = params
            .get("container")
            .map(|c| {
                c.parse::<usize>()
                    .map_err(|_| format!("container={c} is not a container index (a number)"))
            })
            .transpose()?;
        let order = match params.get("order").map(String::as_str) {
            None | Some("begin") => RequestOrder::Begin,
            Some("cost") => RequestOrder::Cost,
            Some(o) => {
                return Err(format!(
                    "order={o} is not supported: use order=begin or order=cost"
                ))
            }
        };
        let limit = match params.get("limit") {
            None => DEFAULT_REQUEST_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_REQUEST_LIMIT)
                .ok_or_else(|| format!("limit={l} is not a number from 0 to {MAX_REQUEST_LIMIT}"))?,
        };
        let trace_id = params
            .get("trace_id")
            .map(|t| {
                accounting::agent::trace_id_bytes(&t.to_ascii_lowercase()).ok_or_else(|| {
                    format!("trace_id={t} is not a W3C trace id: expected 32 hex digits, not all zero")
                })
            })
            .transpose()?;
        Ok(Self {
            container,
            order,
            limit,
            trace_id,
        })
    }
}

impl From<RequestQuery> for RequestFilter {
    fn from(q: RequestQuery) -> Self {
        Self {
            container: q.container,
            order: q.order,
            limit: q.limit,
            trace_id: q.trace_id,
        }
    }
}

/// The requests `q` asks for, as `GET /v1/requests` lists them: one pass
/// over the books by partial selection, taking the registry lock in short
/// steps (see `accounting::query`).
pub fn select_requests(acct: &Accounting, q: RequestQuery) -> Vec<RequestReport> {
    let (rows, _) = acct.select_requests(q.into());
    rows.iter().map(SelectedRequest::to_report).collect()
}

fn get_vm(s: &ApiState) -> Reply {
    let info = (s.info)();
    let totals = ChargesReport::from(&s.acct.totals());
    Reply::json(
        200,
        &VmView {
            tenant: s.acct.tenant().to_string(),
            state: "running",
            vcpus: info.vcpus,
            mem_mib: info.mem_mib,
            kernel: info.kernel,
            boot: info.boot,
            accounting: info.accounting,
            uptime_ns: info.wall_ns,
            unhandled_io: info.unhandled_io,
            log_lines_suppressed: info.log_lines_suppressed,
            devices: s.devices.clone(),
            device_counters: s.device_counters(),
            agent: agent_view(s),
            slots: info.slots,
            metrics_addr: info.metrics_addr,
            otlp: info.otlp,
            api: s.stats.info(),
            totals,
        },
    )
}

/// A container index in its one canonical form: decimal digits, no sign,
/// no leading zero, no percent-encoding.
fn canonical_index(index: &str) -> Option<usize> {
    let canonical = !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (index == "0" || !index.starts_with('0'));
    canonical.then(|| index.parse::<usize>().ok()).flatten()
}

fn get_container(s: &ApiState, index: &str) -> Reply {
    let Some(i) = canonical_index(index) else {
        return Reply::error(
            400,
            format!(
                "{index:?} is not a container index: write it in decimal without sign or leading zeros, as `index` in /v1/containers"
            ),
        );
    };
    match s.acct.container_view(i) {
        Some(c) => Reply::json(200, &join(s, c.to_report())),
        None => {
            let n = s.acct.container_count();
            Reply::error(404, format!("no container with index {i} (there are {n})"))
        }
    }
}

/// A container in `/v1/containers`: the hypervisor's charges (the
/// report's fields) and, beside them, the guest agent's view of the cgroup
/// it stands for.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerView {
    /// The hypervisor's view, as in the report.
    #[serde(flatten)]
    pub report: ContainerReport,
    /// The agent's latest view of the container's cgroup; `null` when no
    /// agent declared it with a cgroup or none has reported.
    pub guest: Option<GuestView>,
}

/// Joins the agent's view to a container of the report.
fn join(s: &ApiState, c: ContainerReport) -> ContainerView {
    let guest = guest_of(s, c.id, &c.name, c.retired);
    ContainerView { report: c, guest }
}

/// The agent's view of container `id`, if it has one.
fn guest_of(s: &ApiState, id: u32, name: &str, retired: bool) -> Option<GuestView> {
    match &s.agent {
        Some(hub) if id != accounting::abi::NO_CONTAINER && !retired => hub.guest_view(id, name),
        _ => None,
    }
}

/// A container as `GET /v1/containers` lists it: the same JSON as
/// [`ContainerView`], written straight from the books' view (no report
/// maps built: with 10,000 containers that is most of the time).
#[derive(Serialize)]
struct ListedContainer<'a> {
    #[serde(flatten)]
    view: accounting::query::ListedView<'a>,
    guest: Option<GuestView>,
}

/// The parsed query of `GET /v1/containers`: one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerQuery {
    /// Containers with a greater index only (the last index of the page
    /// before); `None`: from `unattributed` (index 0) on.
    pub after: Option<usize>,
    /// At most this many.
    pub limit: usize,
}

impl ContainerQuery {
    /// Parses `after` and `limit`; other parameters are ignored.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        let after = params
            .get("after")
            .map(|a| {
                canonical_index(a).ok_or_else(|| {
                    format!("after={a} is not a container index: pass the last `index` of the previous page, in decimal")
                })
            })
            .transpose()?;
        let limit = match params.get("limit") {
            None => DEFAULT_CONTAINER_LIMIT,
            Some(l) => canonical_index(l)
                .filter(|n| (1..=MAX_CONTAINER_LIMIT).contains(n))
                .ok_or_else(|| format!("limit={l} is not a number from 1 to {MAX_CONTAINER_LIMIT}"))?,
        };
        Ok(Self { after, limit })
    }
}

fn get_containers(s: &ApiState, query: &str) -> Reply {
    let q = match ContainerQuery::parse(&parse_query(query)) {
        Ok(q) => q,
        Err(msg) => return Reply::error(400, msg),
    };
    let start = q.after.map_or(0, |a| a.saturating_add(1));
    let (views, total, _) = s.acct.containers_page(start, q.limit);
    let listed: Vec<ListedContainer<'_>> = views
        .iter()
        .map(|v| ListedContainer {
            guest: guest_of(s, v.row.guest_id, v.name(), v.row.retired),
            view: accounting::query::ListedView(v),
        })
        .collect();
    // About 0.6 KB of JSON per container.
    let mut reply = Reply::json_sized(&listed, listed.len().saturating_mul(768));
    if let Some(last) = views.last().map(|v| v.row.index).filter(|l| l + 1 < total) {
        reply.link = Some(format!(
            "</v1/containers?after={last}&limit={}>; rel=\"next\"",
            q.limit
        ));
    }
    reply
}

fn get_metrics(s: &ApiState) -> Reply {
    let (views, _) = s.acct.containers_view();
    let containers: Vec<ContainerReport> = views
        .iter()
        .map(accounting::query::ContainerView::to_report)
        .collect();
    Reply {
        link: None,
        status: 200,
        content_type: metrics::CONTENT_TYPE,
        body: {
            let mut text = metrics::render_parts(s.acct.tenant(), &containers, &s.acct.errors().nonzero());
            if let Some(hub) = &s.agent {
                metrics::render_agent(&mut text, s.acct.tenant(), &hub.stats());
            }
            metrics::render_devices(&mut text, s.acct.tenant(), &s.device_counters());
            if let Some(o) = (s.info)().otlp {
                metrics::render_otlp(&mut text, s.acct.tenant(), &o);
            }
            metrics::render_api(&mut text, s.acct.tenant(), &s.stats.info());
            text.into_bytes()
        },
    }
}

/// The agent as `/v1/processes` and `/v1/vm` show it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    /// Whether an agent that said hello is connected now.
    pub connected: bool,
    /// The agent that said hello most recently, while connected.
    pub peer: Option<AgentPeer>,
    /// The channel's counters.
    pub stats: AgentStats,
}

/// `GET /v1/processes`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessesView<'a> {
    /// Provenance of everything below: `"agent"` (reported by the guest).
    pub provenance: &'static str,
    /// The agent.
    pub agent: AgentView,
    /// Its latest context report, `null` before the first.
    pub context: Option<&'a ContextSnapshot>,
}

fn agent_view(s: &ApiState) -> AgentView {
    match &s.agent {
        Some(hub) => {
            let peer = hub.peer();
            AgentView {
                connected: peer.is_some(),
                peer,
                stats: hub.stats(),
            }
        }
        None => AgentView {
            connected: false,
            peer: None,
            stats: AgentStats::default(),
        },
    }
}

fn get_processes(s: &ApiState) -> Reply {
    let latest = s.agent.as_ref().and_then(|h| h.latest());
    Reply::json(
        200,
        &ProcessesView {
            provenance: "agent",
            agent: agent_view(s),
            context: latest.as_deref(),
        },
    )
}

fn get_requests(s: &ApiState, query: &str) -> Reply {
    match RequestQuery::parse(&parse_query(query)) {
        Ok(q) => Reply::json(200, &select_requests(&s.acct, q)),
        Err(msg) => Reply::error(400, msg),
    }
}

/// Decodes `%XX` escapes and `+` (a space) of a query component or path
/// segment; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| char::from(*c).to_digit(16));
        match b[i] {
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => {
                    // Two hex digits: at most 0xff.
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=x` as a map (a later repeat of a name wins; empty pairs skipped).
pub fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Answers `method target` on the metrics listener (`--metrics-addr`):
/// `/metrics` as on the socket, `/` a one-line pointer to it, nothing else
/// (the JSON API is served on the Unix socket only, behind its mode).
/// Answers other than the exposition are plain text.
pub fn route_metrics(s: &ApiState, method: &str, target: &str) -> Reply {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let known = matches!(path, "/metrics" | "/");
    if known && method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET is served here");
    }
    match path {
        "/metrics" => get_metrics(s),
        "/" => Reply::text(
            200,
            "Resourceful VMM: Prometheus metrics at /metrics (the JSON API is on the --api-sock Unix socket)",
        ),
        _ => Reply::text(
            404,
            "not found: only /metrics is served on --metrics-addr; the JSON API (/v1/...) is on the --api-sock Unix socket",
        ),
    }
}

/// Answers `method target` with the request's `body` (read only for `PUT`).
pub fn route_with_body(s: &ApiState, method: &str, target: &str, body: Option<&[u8]>) -> Reply {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    limits::route(s.limits.as_deref(), method, path, body).unwrap_or_else(|| route(s, method, target))
}

/// Answers `method target` (`target`: the path with an optional query).
pub fn route(s: &ApiState, method: &str, target: &str) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let endpoint: Option<Box<dyn FnOnce() -> Reply + '_>> = match path {
        "/v1/vm" => Some(Box::new(|| get_vm(s))),
        "/v1/containers" => Some(Box::new(|| get_containers(s, query))),
        "/v1/requests" => Some(Box::new(|| get_requests(s, query))),
        "/v1/processes" => Some(Box::new(|| get_processes(s))),
        "/metrics" => Some(Box::new(|| get_metrics(s))),
        "/v1/flamegraph.svg" => Some(Box::new(|| flame::get_flamegraph(&s.acct, query))),
        _ => match path.strip_prefix("/v1/containers/") {
            Some(index) if !index.is_empty() && !index.contains('/') => {
                // The raw segment: an index has one spelling.
                Some(Box::new(move || get_container(s, index)))
            }
            _ => None,
        },
    };
    match endpoint {
        None => Reply::error(
            404,
            "no such endpoint: see docs/api.yaml (/v1/vm, /v1/containers, /v1/requests, /v1/processes, /v1/limits, /v1/flamegraph.svg, /metrics)".into(),
        ),
        Some(answer) if method == "GET" || method == "HEAD" => answer(),
        Some(_) => Reply::error(405, "the API is read-only: use GET".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use accounting::abi::{tag, EntryKind, RingEntry};

    /// Books with containers 1 and 2 and one finished request per
    /// `(container, exit host ns, run ns)`, seq in order.
    fn books(reqs: &[(u32, u64, u64)]) -> Arc<Accounting> {
        let acct = Accounting::new("t", 1, 1, Default::default());
        for (id, name) in [(1u32, "a"), (2, "b")] {
            let e = RingEntry::new(EntryKind::DeclareContainer, id, 0, 0, name.as_bytes());
            acct.apply(&e).unwrap();
        }
        let (mut w, mut sampler) = (acct.writer(0), acct.writer(1));
        for (i, &(c, host_ns, run_ns)) in reqs.iter().enumerate() {
            let id = u32::try_from(i).unwrap() + 1;
            let ring = |kind: EntryKind| RingEntry {
                kind: kind as u16,
                id,
                arg: c,
                ..Default::default()
            };
            acct.apply(&ring(EntryKind::BeginRequest)).unwrap();
            w.charge_exit(
                Some(tag(c, id)),
                accounting::resource::ExitReason::PortOut,
                host_ns,
            );
            sampler.charge_run(0, Some(tag(c, id)), run_ns);
            acct.apply(&ring(EntryKind::EndRequest)).unwrap();
        }
        acct
    }

    fn query(pairs: &[(&str, &str)]) -> Result<RequestQuery, String> {
        RequestQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    #[test]
    fn request_query_defaults_and_errors() {
        assert_eq!(
            query(&[]),
            Ok(RequestQuery {
                container: None,
                order: RequestOrder::Begin,
                limit: DEFAULT_REQUEST_LIMIT,
                trace_id: None,
            })
        );
        let q = query(&[("container", "2"), ("order", "cost"), ("limit", "10000")]).unwrap();
        assert_eq!(
            (q.container, q.order, q.limit),
            (Some(2), RequestOrder::Cost, 10_000)
        );
        let q = query(&[("trace_id", "4BF92F3577B34DA6A3CE929D0E0E4736")]).unwrap();
        assert_eq!(
            q.trace_id,
            accounting::agent::trace_id_bytes("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            ("limit", "abc"),
            ("limit", "10001"),
            ("limit", "-1"),
            ("order", "x"),
            ("container", "a"),
            ("trace_id", "4bf9"),
            ("trace_id", "00000000000000000000000000000000"),
            ("trace_id", "4bf92f3577b34da6a3ce929d0e0e473g"),
        ] {
            assert!(query(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containers_are_listed_in_pages_that_link_to_the_next() {
        let acct = Accounting::new("t", 1, 1, Default::default());
        for id in 1..=24u32 {
            let name = format!("c{id}");
            let e = RingEntry::new(EntryKind::DeclareContainer, id, 0, 0, name.as_bytes());
            acct.apply(&e).unwrap();
        }
        let state = ApiState::new(Arc::clone(&acct), DevicesInfo::default(), VmInfo::default);
        let page = |target: &str| {
            let r = route(&state, "GET", target);
            assert_eq!(r.status, 200, "{target}");
            let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
            let idx: Vec<u64> = v.iter().map(|c| c["index"].as_u64().unwrap()).collect();
            (idx, r.link)
        };
        // 25 containers (unattributed and 24): the default page holds them all.
        let (all, link) = page("/v1/containers");
        assert_eq!((all, link), ((0..25).collect::<Vec<u64>>(), None));
        // Pages of 10, each linking to the next; the last links nowhere.
        let (first, link) = page("/v1/containers?limit=10");
        assert_eq!(first, (0..10).collect::<Vec<u64>>());
        assert_eq!(
            link.as_deref(),
            Some("</v1/containers?after=9&limit=10>; rel=\"next\"")
        );
        let (second, link) = page("/v1/containers?after=9&limit=10");
        assert_eq!(second, (10..20).collect::<Vec<u64>>());
        let (last, link2) = page("/v1/containers?after=19&limit=10");
        assert_eq!(last, (20..25).collect::<Vec<u64>>());
        assert!(link.is_some() && link2.is_none());
        assert_eq!(page("/v1/containers?after=24").0, Vec::<u64>::new());
        assert_eq!(page("/v1/containers?after=99").0, Vec::<u64>::new());
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=010",
            "after=-1",
            "after=01",
            "after=x",
        ] {
            let r = route(&state, "GET", &format!("/v1/containers?{bad}"));
            assert_eq!(r.status, 400, "{bad}");
        }
    }

    #[test]
    fn the_metrics_listener_serves_the_exposition_and_nothing_else() {
        let acct = books(&[(1, 10, 0), (2, 50, 5)]);
        let state = ApiState::new(acct, DevicesInfo::default(), VmInfo::default);
        let tcp = route_metrics(&state, "GET", "/metrics");
        let unix = route(&state, "GET", "/metrics");
        assert_eq!(tcp.status, 200);
        assert_eq!(tcp.content_type, metrics::CONTENT_TYPE);
        assert_eq!(tcp.body, unix.body, "the same exposition as the socket's");
        let root = route_metrics(&state, "GET", "/");
        assert_eq!((root.status, root.content_type), (200, TEXT));
        assert!(String::from_utf8(root.body).unwrap().contains("/metrics"));
        for target in [
            "/v1/vm",
            "/v1/containers",
            "/v1/containers/1",
            "/v1/requests?order=cost",
            "/metrics/x",
        ] {
            let r = route_metrics(&state, "GET", target);
            assert_eq!((r.status, r.content_type), (404, TEXT), "{target}");
            assert!(
                String::from_utf8(r.body).unwrap().contains("--api-sock"),
                "{target}"
            );
        }
        assert_eq!(route_metrics(&state, "POST", "/metrics").status, 405);
        assert_eq!(route_metrics(&state, "HEAD", "/metrics?x=1").status, 200);
    }

    #[test]
    fn queries_are_split_and_decoded() {
        let q = parse_query("order=cost&limit=1%30&&x&container=2+&container=3");
        assert_eq!(q["order"], "cost");
        assert_eq!(q["limit"], "10");
        assert_eq!(q["x"], "");
        assert_eq!(q["container"], "3");
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert!(parse_query("").is_empty());
    }

    #[test]
    fn requests_are_filtered_ordered_and_limited() {
        let acct = books(&[(1, 10, 0), (2, 50, 5), (1, 5, 100), (1, 30, 0)]);
        let seqs = |v: Vec<RequestReport>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        let q = |container, order, limit| RequestQuery {
            container,
            order,
            limit,
            trace_id: None,
        };
        let sel = |query| seqs(select_requests(&acct, query));
        assert_eq!(sel(q(None, RequestOrder::Begin, 100)), [0, 1, 2, 3]);
        assert_eq!(sel(q(None, RequestOrder::Cost, 100)), [2, 1, 3, 0]);
        assert_eq!(sel(q(Some(1), RequestOrder::Cost, 2)), [2, 3]);
        assert_eq!(sel(q(Some(1), RequestOrder::Begin, 0)), [0u64; 0]);
        assert_eq!(sel(q(Some(7), RequestOrder::Begin, 5)), [0u64; 0]);
    }

    #[test]
    fn container_and_request_endpoints_answer_from_the_books() {
        let acct = books(&[(1, 10, 0), (2, 50, 5)]);
        let state = ApiState::new(Arc::clone(&acct), DevicesInfo::default(), VmInfo::default);
        let json = |target: &str| {
            let r = route(&state, "GET", target);
            (
                r.status,
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
            )
        };
        let report = accounting::report::Report::build(&acct, VmInfo::default());
        let (status, list) = json("/v1/containers");
        assert_eq!(status, 200);
        for (got, want) in list.as_array().unwrap().iter().zip(&report.containers) {
            let mut want = serde_json::to_value(want).unwrap();
            want["guest"] = serde_json::Value::Null;
            // The list leaves out the per-container request sums.
            let charged = want["requests"].as_object_mut().unwrap().remove("charged");
            assert!(charged.is_some());
            assert_eq!(got, &want);
        }
        let (status, one) = json("/v1/containers/2");
        assert_eq!((status, one["path"].as_str()), (200, Some("b")));
        let mut want = serde_json::to_value(&report.containers[2]).unwrap();
        want["guest"] = serde_json::Value::Null;
        assert_eq!(
            one, want,
            "the single view is the report's, request sums included"
        );
        assert_eq!(one["requests"]["retained"], 1);
        let (status, err) = json("/v1/containers/3");
        assert_eq!(status, 404);
        assert!(err["error"].as_str().unwrap().contains("there are 3"));
        // One spelling per index; every other one is refused by name.
        for bad in [
            "01",
            "%32",
            "+1",
            "%2B1",
            "-1",
            "1.0",
            "1e0",
            " 1",
            "99999999999999999999999",
        ] {
            let (status, err) = json(&format!("/v1/containers/{bad}"));
            assert_eq!(status, 400, "{bad}: {err}");
            assert!(
                err["error"]
                    .as_str()
                    .unwrap()
                    .contains("without sign or leading zeros"),
                "{err}"
            );
        }
        assert_eq!(json("/v1/containers/0").0, 200);
        let (_, top) = json("/v1/requests?order=cost&limit=1");
        assert_eq!(top[0]["seq"], 1);
        assert_eq!(top[0]["container_path"], "b");
        let (_, vm) = json("/v1/vm");
        assert_eq!(vm["totals"]["exits_total"]["host_ns"], 60);
        let metrics = route(&state, "GET", "/metrics");
        let text = String::from_utf8(metrics.body).unwrap();
        assert!(text.contains("resourceful_exits_total{tenant=\"t\",container=\"b\",reason=\"port_out\"} 1"));
    }
}
