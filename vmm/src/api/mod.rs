//! The host API: read-only JSON views of a running VM's books and a
//! Prometheus `/metrics` endpoint, served over HTTP/1.1 on a Unix socket
//! (`--api-sock PATH`, mode 0600).
//!
//! The server ([`tiny_http`], synchronous) answers requests one at a time
//! on a thread of its own. Every request builds a fresh report from the live
//! books ([`Report::build`] reads the atomic ledgers without stopping
//! writers, well under a millisecond), so serving never stops a vCPU. Endpoints are described in `docs/api.yaml`.
//!
//! - [`ApiServer`]: bind, serve, shut down gracefully and remove the socket.
//! - [`metrics`]: the Prometheus text exposition.
//! - [`client`]: a minimal HTTP/1.1 GET client over a Unix socket, used by
//!   `resourceful report --api-sock PATH`.

pub mod client;
pub mod metrics;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::ledger::Accounting;
use accounting::report::{ChargesReport, Report, RequestReport, VmInfo};
use serde::Serialize;

/// Default number of requests listed by `GET /v1/requests`.
pub const DEFAULT_REQUEST_LIMIT: usize = 100;
/// Largest `limit` accepted by `GET /v1/requests`.
pub const MAX_REQUEST_LIMIT: usize = 10_000;
/// How long in-flight API requests may take to finish once the VM has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// While draining, the server stops once no request has come for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(20);
/// The `Content-Type` of JSON answers.
const JSON: &str = "application/json";

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The path exists and is something other than a socket.
    #[error("--api-sock {0} exists and is not a socket: remove it or pass another path")]
    NotASocket(PathBuf),
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
    /// Disks and network interfaces.
    pub devices: DevicesInfo,
    /// The report's tenant totals, as of now.
    pub totals: ChargesReport,
}

/// What the handlers share: the live books and how to describe the VM now.
pub struct ApiState {
    acct: Arc<Accounting>,
    devices: DevicesInfo,
    info: Box<dyn Fn() -> VmInfo + Send + Sync>,
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
        }
    }

    fn report(&self) -> Report {
        Report::build(&self.acct, (self.info)())
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
}

impl Reply {
    /// `value` as JSON with `status`.
    fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                content_type: JSON,
                body,
            },
            Err(e) => Self::error(500, format!("cannot serialize the answer: {e}")),
        }
    }

    /// `{"error": msg}` with `status`.
    fn error(status: u16, msg: String) -> Self {
        Self {
            status,
            content_type: JSON,
            body: serde_json::json!({ "error": msg }).to_string().into_bytes(),
        }
    }
}

/// How `GET /v1/requests` orders its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOrder {
    /// By `seq` (begin order), ascending.
    Begin,
    /// By cost (`exits_total.host_ns + guest_run_ns`), most expensive first.
    Cost,
}

/// The parsed query of `GET /v1/requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestQuery {
    /// Only requests of this container index.
    pub container: Option<usize>,
    /// The order.
    pub order: RequestOrder,
    /// At most this many.
    pub limit: usize,
}

impl RequestQuery {
    /// Parses `container`, `order` and `limit`; other parameters are ignored.
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
        Ok(Self {
            container,
            order,
            limit,
        })
    }
}

/// A request's cost: host time of its exits plus its sampled run time.
pub fn request_cost(r: &RequestReport) -> u64 {
    r.charges
        .exits_total
        .host_ns
        .saturating_add(r.charges.guest_run_ns)
}

/// Filters, orders and limits `requests` (given in begin order).
pub fn select_requests(mut requests: Vec<RequestReport>, q: RequestQuery) -> Vec<RequestReport> {
    if let Some(c) = q.container {
        requests.retain(|r| r.container == c);
    }
    match q.order {
        RequestOrder::Begin => requests.sort_by_key(|r| r.seq),
        RequestOrder::Cost => {
            requests.sort_by(|a, b| request_cost(b).cmp(&request_cost(a)).then(a.seq.cmp(&b.seq)));
        }
    }
    requests.truncate(q.limit);
    requests
}

fn get_vm(s: &ApiState) -> Reply {
    let info = (s.info)();
    let totals = Report::build(&s.acct, info.clone()).totals;
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
            devices: s.devices.clone(),
            totals,
        },
    )
}

fn get_container(s: &ApiState, index: &str) -> Reply {
    let Ok(i) = index.parse::<usize>() else {
        return Reply::error(400, format!("`{index}` is not a container index (a number)"));
    };
    let containers = s.report().containers;
    let n = containers.len();
    match containers.into_iter().nth(i) {
        Some(c) => Reply::json(200, &c),
        None => Reply::error(404, format!("no container with index {i} (there are {n})")),
    }
}

fn get_requests(s: &ApiState, query: &str) -> Reply {
    match RequestQuery::parse(&parse_query(query)) {
        Ok(q) => Reply::json(200, &select_requests(s.report().requests, q)),
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

/// Answers `method target` (`target`: the path with an optional query).
pub fn route(s: &ApiState, method: &str, target: &str) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let endpoint: Option<Box<dyn FnOnce() -> Reply + '_>> = match path {
        "/v1/vm" => Some(Box::new(|| get_vm(s))),
        "/v1/containers" => Some(Box::new(|| Reply::json(200, &s.report().containers))),
        "/v1/requests" => Some(Box::new(|| get_requests(s, query))),
        "/metrics" => Some(Box::new(|| Reply {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(&s.report()).into_bytes(),
        })),
        _ => match path.strip_prefix("/v1/containers/") {
            Some(index) if !index.is_empty() && !index.contains('/') => {
                Some(Box::new(move || get_container(s, &percent_decode(index))))
            }
            _ => None,
        },
    };
    match endpoint {
        None => Reply::error(
            404,
            "no such endpoint: see docs/api.yaml (/v1/vm, /v1/containers, /v1/requests, /metrics)".into(),
        ),
        Some(answer) if method == "GET" || method == "HEAD" => answer(),
        Some(_) => Reply::error(405, "the API is read-only: use GET".into()),
    }
}

/// Binds `path` (removing a stale socket there), mode 0600.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ApiError> {
    let io = |what| {
        move |source| ApiError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        Ok(_) => return Err(ApiError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("look at the path")(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io("bind the socket"))?;
    // Before anything is served: only the VMM's user may connect.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(io("make the socket private (mode 0600)")(e));
    }
    Ok(listener)
}

/// A running API server. Dropping it (or [`ApiServer::stop`]) shuts it down
/// gracefully and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    server: Option<Arc<tiny_http::Server>>,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` and starts serving `state` on a thread of its own.
    pub fn start(path: &Path, state: ApiState) -> Result<Self, ApiError> {
        let listener = bind(path)?;
        let fail = |what, source| {
            let _ = std::fs::remove_file(path);
            ApiError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| fail("start the server", std::io::Error::other(e)))?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let shown = path.display().to_string();
        let spawned = {
            let server = Arc::clone(&server);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("rsrc-api".into())
                .spawn(move || serve(&server, &state, &stopping, &shown))
        };
        match spawned {
            Ok(thread) => Ok(Self {
                path: path.to_path_buf(),
                server: Some(server),
                stopping,
                thread: Some(thread),
            }),
            Err(source) => {
                drop(server); // stops the accept thread while the socket still exists
                Err(fail("spawn the API thread", source))
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving (in-flight requests get [`DRAIN_TIMEOUT`] to finish),
    /// joins the thread and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Release);
        server.unblock();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the API thread panicked");
            }
        }
        // The last reference: stops tiny_http's accept thread (it connects
        // to the socket to wake it, so the file must still be there).
        drop(server);
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove the API socket {}: {e}", self.path.display());
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Answers one request.
fn answer(state: &ApiState, rq: tiny_http::Request) {
    let reply = route(state, rq.method().as_str(), rq.url());
    let mut response = tiny_http::Response::from_data(reply.body)
        .with_status_code(reply.status)
        // Always a Content-Length body, never chunked.
        .with_chunked_threshold(usize::MAX);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type) {
        response.add_header(h);
    }
    if reply.status == 405 {
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Allow"[..], &b"GET, HEAD"[..]) {
            response.add_header(h);
        }
    }
    if let Err(e) = rq.respond(response) {
        log::debug!("API: cannot answer a request: {e}");
    }
}

/// The API thread's body: answers requests one at a time until `stopping`;
/// then answers what is in flight, for at most [`DRAIN_TIMEOUT`].
fn serve(server: &tiny_http::Server, state: &ApiState, stopping: &AtomicBool, shown: &str) {
    loop {
        match server.recv() {
            Ok(rq) => answer(state, rq),
            Err(_) if stopping.load(Ordering::Acquire) => break,
            Err(e) => {
                log::error!("API on {shown}: {e}");
                return;
            }
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("API on {shown}: requests still in flight after the VM ended were dropped");
            return;
        }
        match server.recv_timeout(left.min(DRAIN_QUIET)) {
            Ok(Some(rq)) => answer(state, rq),
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seq: u64, container: usize, host_ns: u64, run_ns: u64) -> RequestReport {
        let mut r: RequestReport = serde_json::from_value(serde_json::json!({
            "id": 1, "seq": seq, "container": container, "container_path": "c",
            "external_id": 0, "state": "finished", "begin_ns": seq, "end_ns": null,
            "charges": { "exits": {}, "exits_total": { "count": 1, "host_ns": host_ns },
                         "guest_run_ns": run_ns, "run_samples": 0 }
        }))
        .unwrap();
        r.seq = seq;
        r
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
                limit: DEFAULT_REQUEST_LIMIT
            })
        );
        let q = query(&[("container", "2"), ("order", "cost"), ("limit", "10000")]).unwrap();
        assert_eq!(
            (q.container, q.order, q.limit),
            (Some(2), RequestOrder::Cost, 10_000)
        );
        for bad in [
            ("limit", "abc"),
            ("limit", "10001"),
            ("limit", "-1"),
            ("order", "x"),
            ("container", "a"),
        ] {
            assert!(query(&[bad]).is_err(), "{bad:?}");
        }
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
        let all = vec![
            req(0, 1, 10, 0),
            req(1, 2, 50, 5),
            req(2, 1, 5, 100),
            req(3, 1, 30, 0),
        ];
        let seqs = |v: Vec<RequestReport>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        let q = |container, order, limit| RequestQuery {
            container,
            order,
            limit,
        };
        assert_eq!(
            seqs(select_requests(all.clone(), q(None, RequestOrder::Begin, 100))),
            [0, 1, 2, 3]
        );
        assert_eq!(
            seqs(select_requests(all.clone(), q(None, RequestOrder::Cost, 100))),
            [2, 1, 3, 0]
        );
        assert_eq!(
            seqs(select_requests(all.clone(), q(Some(1), RequestOrder::Cost, 2))),
            [2, 3]
        );
        assert_eq!(
            seqs(select_requests(all.clone(), q(Some(1), RequestOrder::Begin, 0))),
            [0u64; 0]
        );
        assert_eq!(
            seqs(select_requests(all, q(Some(7), RequestOrder::Begin, 5))),
            [0u64; 0]
        );
    }

    #[test]
    fn bind_refuses_a_regular_file_and_replaces_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("rsrc-api-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = bind(&file).unwrap_err();
        assert!(err.to_string().contains("--api-sock"), "{err}");
        let sock = dir.join("sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let l = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(l);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
