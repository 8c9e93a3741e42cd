//! The API's HTTP/1.1 server: hyper on a single-threaded tokio runtime of
//! its own thread (`rsrc-api`), serving up to two listeners.
//!
//! - The Unix socket of `--api-sock` (mode 0600): the whole API.
//! - The TCP listener of `--metrics-addr`: only `GET /metrics` (and `/`,
//!   a one-line pointer), because Prometheus cannot scrape a Unix socket.
//!   Anyone who can reach the address can read it, so it serves nothing
//!   but the counters; the JSON API stays behind the socket's mode.
//!
//! Both are bound on the calling thread before the VM's threads start
//! (`bind`, `listen` and `socket` are not on the API thread's seccomp list,
//! docs/sandbox.md), and served by the same code with the same bounds,
//! each listener with its own connection budget so that clients of one
//! cannot lock the other out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use super::{route_metrics, route_with_body, ApiError, ApiState, Reply};
use crate::sandbox::{self, Seccomp, ThreadKind};
use crate::sock::{ClaimError, SocketFile};

/// Most API connections served at once on the Unix socket; more are
/// closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections served at once on the metrics listener; more are
/// closed at once. A Prometheus server keeps one per target; a few
/// scrapers and a curl fit.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, and then its body.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body read (only `PUT /v1/limits...` takes one); a
/// larger one is answered 413 and its connection closed.
pub const MAX_BODY: usize = 64 * 1024;
/// How long in-flight API requests may take to finish once the VM has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The log target of the line that says where metrics are served: the
/// CLI shows it at its default level (warnings only otherwise).
pub const LISTEN_LOG_TARGET: &str = "resourceful::listen";

/// Takes `path` (replacing only a stale socket there), mode 0600.
fn bind(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile), ApiError> {
    crate::sock::claim(path).map_err(|e| match e {
        ClaimError::InUse(p) => ApiError::InUse(p),
        ClaimError::NotASocket(p) => ApiError::NotASocket(p),
        ClaimError::Io { path, what, source } => ApiError::Io { path, what, source },
    })
}

/// What to tell a user whose `--metrics-addr` could not be bound.
fn bind_advice(addr: SocketAddr, e: &std::io::Error) -> String {
    let free = format!(
        "or --metrics-addr {}:0 for a free port (it is logged, and shown as metrics_addr in GET /v1/vm and the report)",
        match addr {
            SocketAddr::V4(_) => "127.0.0.1",
            SocketAddr::V6(_) => "[::1]",
        }
    );
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "the address is already in use (another VMM or exporter listens there): pass another --metrics-addr IP:PORT, {free}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "no interface of this host has that address: pass one of its addresses as --metrics-addr IP:PORT, {free}"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to listen on port {} (ports below 1024 need privilege): pass a port of 1024 or more, {free}",
            addr.port()
        ),
        _ => format!("cannot listen there: check --metrics-addr IP:PORT, {free}"),
    }
}

/// The TCP listener of `--metrics-addr`, bound and listening.
pub struct MetricsListener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr` (port 0: a free port) and logs where metrics are
    /// served; a non-loopback address is logged as a warning, since
    /// `/metrics` is served there without authentication.
    pub fn bind(addr: SocketAddr) -> Result<Self, ApiError> {
        let fail = |source: std::io::Error| ApiError::MetricsAddr {
            addr,
            advice: bind_advice(addr, &source),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        if !bound.ip().is_loopback() {
            log::warn!(
                "--metrics-addr {bound} is not a loopback address: the metrics (tenant and container names, \
                 their usage) are served there WITHOUT authentication to anyone who can reach it; \
                 use 127.0.0.1 or a firewalled network"
            );
        }
        log::info!(target: LISTEN_LOG_TARGET, "serving Prometheus metrics on http://{bound}/metrics");
        Ok(Self {
            listener,
            addr: bound,
        })
    }

    /// The address bound (the port picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Which listener a request came in on, and so what it may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    /// The Unix socket: the whole API.
    Api,
    /// The metrics listener: `/metrics` and `/` only.
    Metrics,
}

/// A running API server. Dropping it (or [`ApiServer::stop`]) shuts it down
/// gracefully and removes the socket file.
///
/// It is hyper's HTTP/1.1 server on a single-threaded tokio runtime that
/// lives on the `rsrc-api` thread: at most [`MAX_CONNECTIONS`] connections
/// on the socket and [`MAX_METRICS_CONNECTIONS`] on the metrics listener,
/// request heads of at most 16 KiB that must arrive within 10 s, and
/// bodies only on `PUT` (`/v1/limits`), of at most [`MAX_BODY`] bytes that
/// must arrive within 10 s more; any other request that announces a body,
/// or a larger body, is answered 413 without reading (the rest of) it, and
/// its connection closed.
pub struct ApiServer {
    stats: Arc<super::stats::ApiStats>,
    file: Option<SocketFile>,
    metrics_addr: Option<SocketAddr>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (if given), takes `metrics` (if given) and starts
    /// serving `state` on a thread of its own, which installs the API
    /// filter first (`seccomp`, docs/sandbox.md).
    pub fn start(
        path: Option<&Path>,
        metrics: Option<MetricsListener>,
        state: ApiState,
        seccomp: Seccomp,
    ) -> Result<Self, ApiError> {
        let bound = path.map(bind).transpose()?;
        let (unix, file) = match bound {
            Some((l, f)) => (Some(l), Some(f)),
            None => (None, None),
        };
        let shown = path.map(|p| p.display().to_string()).unwrap_or_default();
        let fail = |what, source| {
            if let Some(f) = &file {
                f.remove();
            }
            ApiError::Io {
                path: path.unwrap_or(Path::new("")).to_path_buf(),
                what,
                source,
            }
        };
        if let Some(l) = &unix {
            l.set_nonblocking(true)
                .map_err(|e| fail("make the socket non-blocking", e))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| fail("start the API runtime", e))?;
        let (stop, stopped) = watch::channel(false);
        let metrics_addr = metrics.as_ref().map(MetricsListener::local_addr);
        let stats = state.stats();
        let state = Arc::new(state);
        let spawned = std::thread::Builder::new()
            .name("rsrc-api".into())
            .spawn(move || {
                sandbox::enter_or_exit(ThreadKind::Api, seccomp);
                runtime.block_on(serve(unix, metrics, state, stopped, shown));
            });
        match spawned {
            Ok(thread) => Ok(Self {
                stats,
                file,
                metrics_addr,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(source) => Err(fail("spawn the API thread", source)),
        }
    }

    /// The socket path, if the API is served on one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(SocketFile::path)
    }

    /// The server's counters (`vm.api`).
    pub fn stats(&self) -> Arc<super::stats::ApiStats> {
        Arc::clone(&self.stats)
    }

    /// Where metrics are served over TCP, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops serving (in-flight requests get [`DRAIN_TIMEOUT`] to finish),
    /// joins the thread and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        let _ = stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the API thread panicked");
            }
        }
        if let Some(f) = &self.file {
            f.remove();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// Whether the request announces a body.
fn has_body(rq: &hyper::Request<hyper::body::Incoming>) -> bool {
    let headers = rq.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
}

/// The body of a `PUT` on the API socket: at most [`MAX_BODY`] bytes,
/// within [`HEAD_TIMEOUT`]; `Err` is the answer instead (413 when larger:
/// the connection is then closed unread).
async fn read_body(rq: hyper::Request<hyper::body::Incoming>) -> Result<Vec<u8>, Reply> {
    use http_body_util::BodyExt;
    let announced = rq
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || Reply::error(413, format!("the request body is larger than {MAX_BODY} bytes"));
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(rq.into_body(), MAX_BODY);
    match tokio::time::timeout(HEAD_TIMEOUT, limited.collect()).await {
        Err(_) => Err(Reply::error(
            408,
            "the request body did not arrive in time".into(),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Reply::error(400, format!("cannot read the request body: {e}"))),
    }
}

/// After an applied limit change (`reply`): waits until the devices took it
/// up, at most [`crate::live_limits::TAKE_UP_WAIT`], so that the answer
/// shows it; a `PUT` then answers as a `GET` of its target does.
async fn took_up(state: &ApiState, method: &str, target: &str, reply: Reply) -> Reply {
    let Some(live) = state.limits.as_deref() else {
        return reply;
    };
    let deadline = tokio::time::Instant::now() + crate::live_limits::TAKE_UP_WAIT;
    while live.pending() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if method == "PUT" {
        route_with_body(state, "GET", target, None)
    } else {
        reply
    }
}

/// Answers one request that came in on `surface`.
async fn answer(
    state: &ApiState,
    surface: Surface,
    rq: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let target = rq.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let method = rq.method().as_str().to_owned();
    let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
    let limits = path == "/v1/limits" || path.starts_with("/v1/limits/");
    let takes_body = surface == Surface::Api && method == "PUT" && limits;
    // Whether the connection must close: a body left unread.
    let mut close = false;
    let reply = if takes_body {
        match read_body(rq).await {
            Ok(body) => route_with_body(state, &method, &target, Some(&body)),
            Err(r) => {
                close = r.status == 413 || r.status == 408;
                r
            }
        }
    } else if has_body(&rq) {
        close = true;
        Reply::error(
            413,
            "only PUT takes a request body (PUT /v1/limits): send this request without one".into(),
        )
    } else {
        match surface {
            Surface::Api => route_with_body(state, &method, &target, None),
            Surface::Metrics => route_metrics(state, &method, &target),
        }
    };
    let reply = if limits && reply.status == 200 && matches!(method.as_str(), "PUT" | "DELETE") {
        took_up(state, &method, &target, reply).await
    } else {
        reply
    };
    state
        .stats()
        .note_answer(reply.status, &method, &target, &reply.body);
    let mut response = hyper::Response::new(Body::new(reply.body.into()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    if let Some(link) = reply
        .link
        .as_deref()
        .and_then(|l| hyper::header::HeaderValue::from_str(l).ok())
    {
        headers.insert(hyper::header::LINK, link);
    }
    if reply.status == 405 {
        let allow = if limits && surface == Surface::Api {
            super::limits::ALLOW
        } else {
            "GET, HEAD"
        };
        headers.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
    }
    if close {
        headers.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A listener the accept loop can take connections from.
trait Accept {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    async fn next(&self) -> std::io::Result<Self::Stream>;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections on `listener` until told to stop, serving each
/// under `graceful`, at most `max` at once.
async fn accept_loop<L: Accept>(
    listener: L,
    surface: Surface,
    max: usize,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
    graceful: &GracefulShutdown,
    shown: &str,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.next() => a,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                accounting::warn_rl!("API on {shown}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            state.stats().note_refused();
            accounting::warn_rl!("API on {shown}: connection refused, {max} already open");
            continue;
        };
        let stats = state.stats();
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |rq| {
            let state = Arc::clone(&state);
            async move { Ok::<_, std::convert::Infallible>(answer(&state, surface, rq).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // A malformed or oversized head (hyper answers 400 or 431
                // itself), a head or body too slow, a client gone mid-way.
                stats.note_bad_connection();
                accounting::warn_rl!("API: a connection ended without an answer: {e}");
            }
            drop(slot);
        });
    }
}

/// The API thread's body: serves the socket and the metrics listener
/// (either may be absent) until told to stop, then lets in-flight requests
/// finish for at most [`DRAIN_TIMEOUT`].
async fn serve(
    unix: Option<std::os::unix::net::UnixListener>,
    metrics: Option<MetricsListener>,
    state: Arc<ApiState>,
    stop: watch::Receiver<bool>,
    shown: String,
) {
    let graceful = GracefulShutdown::new();
    let unix = match unix.map(tokio::net::UnixListener::from_std).transpose() {
        Ok(l) => l,
        Err(e) => {
            log::error!("API on {shown}: {e}");
            return;
        }
    };
    let (metrics, metrics_shown) = match metrics {
        None => (None, String::new()),
        Some(m) => {
            let shown = format!("--metrics-addr {}", m.addr);
            match tokio::net::TcpListener::from_std(m.listener) {
                Ok(l) => (Some(l), shown),
                Err(e) => {
                    log::error!("metrics on {shown}: {e}");
                    return;
                }
            }
        }
    };
    let api = async {
        if let Some(l) = unix {
            let (state, stop) = (Arc::clone(&state), stop.clone());
            accept_loop(l, Surface::Api, MAX_CONNECTIONS, state, stop, &graceful, &shown).await;
        }
    };
    let scrape = async {
        if let Some(l) = metrics {
            let (state, stop) = (Arc::clone(&state), stop.clone());
            let max = MAX_METRICS_CONNECTIONS;
            accept_loop(l, Surface::Metrics, max, state, stop, &graceful, &metrics_shown).await;
        }
    };
    tokio::join!(api, scrape);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            log::warn!("API: requests still in flight after the VM ended were dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn a_taken_metrics_port_names_the_flag_and_a_way_out() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsListener::bind(addr).err().expect("the port is taken");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("--metrics-addr {addr}: ")), "{msg}");
        assert!(msg.contains("already in use"), "{msg}");
        assert!(msg.contains("--metrics-addr 127.0.0.1:0"), "{msg}");
    }

    #[test]
    fn port_zero_is_resolved_to_the_port_bound() {
        let m = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = m.local_addr();
        assert_ne!(addr.port(), 0);
        assert!(std::net::TcpStream::connect(addr).is_ok());
    }
}
