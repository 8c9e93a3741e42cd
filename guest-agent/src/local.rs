//! The local interface: applications in the guest declare containers,
//! requests and flow bindings over a Unix socket (`--listen PATH`, mode
//! 0660) in newline-delimited JSON, one request object per line and one
//! reply object per line:
//!
//! ```text
//! → {"op":"declare","container":"web"}
//! ← {"ok":true,"container":268435456}
//! → {"op":"begin","container":"web","external_id":42,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","attributes":{"route":"/api"}}
//! ← {"ok":true,"request":268435456}
//! → {"op":"bind_flow","proto":"tcp","local":"10.0.0.2:40000","remote":"1.2.3.4:443","container":"web","request":268435456}
//! ← {"ok":true}
//! → {"op":"unbind_flow","proto":"tcp","local":"10.0.0.2:40000","remote":"1.2.3.4:443"}
//! → {"op":"work_for","request":268435456,"tid":4242}
//! ← {"ok":true}
//! → {"op":"work_for","tid":4242}
//! → {"op":"rebind_page","container":"web"}
//! ← {"ok":true,"page":0}                  (with the page's descriptor, SCM_RIGHTS)
//! → {"op":"rebind_thread","page":0,"index":3,"tid":4242}
//! → {"op":"rebind_thread","tid":4242}
//! → {"op":"end","request":268435456}
//! → {"op":"retire","container":"web"}
//! → {"op":"nonsense"}
//! ← {"ok":false,"error":"…"}
//! ```
//!
//! A bad line gets an error reply and the connection stays usable; a line
//! over [`MAX_LINE`] bytes closes the connection. At most [`MAX_CLIENTS`]
//! connections at once. When a connection closes (the application exited or
//! crashed) its open requests end, its flows are unbound and its holds on ad
//! hoc containers are released.
//!
//! One thread accepts (polling so it notices a stop); one thread per client.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accounting::agent::{Flow, FlowProto};
use serde::{Deserialize, Serialize};

use crate::agent::Shared;
use crate::state::{ClientId, Out};

/// Longest request line, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 64;
/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/resourceful-agent.sock";
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LocalRequest {
    /// Begin a request in a live container.
    Begin {
        /// Container name.
        container: String,
        /// The application's own id.
        #[serde(default)]
        external_id: u64,
        /// W3C trace id.
        #[serde(default)]
        trace_id: Option<String>,
        /// Attributes.
        #[serde(default)]
        attributes: BTreeMap<String, String>,
    },
    /// End a request.
    End {
        /// Its id.
        request: u32,
    },
    /// Bind a flow.
    BindFlow {
        /// Protocol.
        proto: FlowProto,
        /// Guest-side address.
        local: SocketAddr,
        /// Peer address.
        remote: SocketAddr,
        /// Container name.
        container: String,
        /// Request, if any.
        #[serde(default)]
        request: Option<u32>,
    },
    /// Unbind a flow.
    UnbindFlow {
        /// Protocol.
        proto: FlowProto,
        /// Guest-side address.
        local: SocketAddr,
        /// Peer address.
        remote: SocketAddr,
    },
    /// Declare (or hold) an ad hoc container.
    Declare {
        /// Its name.
        container: String,
        /// The cgroup it stands for.
        #[serde(default)]
        cgroup: Option<String>,
    },
    /// Release an ad hoc container.
    Retire {
        /// Its name.
        container: String,
    },
    /// A thread of the client's process works for `request` from its next
    /// context switch on (the eBPF tagger writes the request's tag into
    /// its CPU's slot); without `request`, back to its cgroup's or
    /// process's container.
    WorkFor {
        /// A live request; absent: unbind.
        #[serde(default)]
        request: Option<u32>,
        /// The thread (`gettid()`); absent: the client's main thread.
        #[serde(default)]
        tid: Option<u32>,
    },
    /// A rebind page of the client's own for requests of `container`: the
    /// reply names it (`page`) and carries its descriptor (`SCM_RIGHTS`),
    /// which the client maps read-write (4 KiB, 512 u64 words).
    RebindPage {
        /// A live container's name.
        container: String,
    },
    /// A thread of the client's process takes its request from word
    /// `index` of the client's page `page` at each switch-in; without
    /// `page`, from no page any more.
    RebindThread {
        /// A page this connection was given; absent: unregister.
        #[serde(default)]
        page: Option<u32>,
        /// The thread's word in the page.
        #[serde(default)]
        index: u32,
        /// The thread (`gettid()`); absent: the client's main thread.
        #[serde(default)]
        tid: Option<u32>,
    },
}

/// One reply line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was applied.
    pub ok: bool,
    /// A new request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u32>,
    /// A declared container's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<u32>,
    /// A rebind page's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// What was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(e.into()),
            ..Self::default()
        }
    }
}

/// How long a declaration waits for the VMM to confirm it.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// What a reply waits for the VMM to hold.
enum Pending {
    Container(String, u32),
    Request(u32),
    Flow(Flow),
}

/// Applies one line from `client` to the shared state, queues what the VMM
/// must hear and, for `declare`, `begin` and `bind_flow`, waits until the
/// VMM has applied it: the reply is `ok` only for what the VMM holds.
pub fn handle_line(shared: &Shared, client: ClientId, line: &[u8]) -> Reply {
    handle_line_from(shared, client, None, line)
}

/// [`handle_line`] for a client whose process is `peer` (`SO_PEERCRED`),
/// which `work_for` needs.
pub fn handle_line_from(shared: &Shared, client: ClientId, peer: Option<u32>, line: &[u8]) -> Reply {
    handle_line_fd(shared, client, peer, line).0
}

/// [`handle_line_from`], with the descriptor a `rebind_page` reply carries.
pub fn handle_line_fd(
    shared: &Shared,
    client: ClientId,
    peer: Option<u32>,
    line: &[u8],
) -> (Reply, Option<OwnedFd>) {
    let req: LocalRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return (Reply::err(format!("bad request: {e}")), None),
    };
    match req {
        LocalRequest::RebindPage { container } => {
            let mut g = shared.lock();
            match crate::rebind::page(&mut g, client, &container) {
                Ok((page, fd)) => (
                    Reply {
                        ok: true,
                        page: Some(page),
                        ..Reply::default()
                    },
                    Some(fd),
                ),
                Err(e) => (Reply::err(e), None),
            }
        }
        LocalRequest::RebindThread { page, index, tid } => {
            let mut g = shared.lock();
            let r = crate::rebind::thread(&mut g, client, peer, page, index, tid);
            (r.map_or_else(Reply::err, |()| ok()), None)
        }
        req => (apply(shared, client, peer, req), None),
    }
}

fn apply(shared: &Shared, client: ClientId, peer: Option<u32>, req: LocalRequest) -> Reply {
    let mut out = Out::new();
    let mut g = shared.lock();
    let st = &mut g.state;
    let mut pending = None;
    let r = match req {
        LocalRequest::Begin {
            container,
            external_id,
            trace_id,
            attributes,
        } => st
            .begin(client, &container, external_id, trace_id, attributes, &mut out)
            .map(|id| {
                pending = Some(Pending::Request(id));
                Reply {
                    ok: true,
                    request: Some(id),
                    ..Reply::default()
                }
            }),
        LocalRequest::End { request } => st.end(request, &mut out).map(|()| ok()),
        LocalRequest::BindFlow {
            proto,
            local,
            remote,
            container,
            request,
        } => {
            let flow = Flow { proto, local, remote };
            st.bind_flow(client, flow.clone(), &container, request, &mut out)
                .map(|()| {
                    pending = Some(Pending::Flow(flow));
                    ok()
                })
        }
        LocalRequest::UnbindFlow { proto, local, remote } => st
            .unbind_flow(&Flow { proto, local, remote }, &mut out)
            .map(|()| ok()),
        LocalRequest::Declare { container, cgroup } => {
            st.declare_adhoc(client, &container, cgroup, &mut out).map(|id| {
                pending = Some(Pending::Container(container, id));
                Reply {
                    ok: true,
                    container: Some(id),
                    ..Reply::default()
                }
            })
        }
        LocalRequest::Retire { container } => st.release_adhoc(client, &container, &mut out).map(|()| ok()),
        LocalRequest::WorkFor { request, tid } => {
            let r = work_for(&mut g, client, peer, request, tid);
            drop(g);
            return r.map_or_else(Reply::err, |()| ok());
        }
        LocalRequest::RebindPage { .. } | LocalRequest::RebindThread { .. } => {
            Err("rebind ops are handled before apply".to_owned())
        }
    };
    let sent = !out.is_empty();
    g.emit(out);
    if sent {
        shared.wake_link();
    }
    let (Ok(reply), Some(p)) = (&r, pending) else {
        return r.unwrap_or_else(Reply::err);
    };
    let (mut g, answered) = shared.confirm(g, CONFIRM_TIMEOUT);
    let st = &g.state;
    let (held, message, id, flow) = match &p {
        Pending::Container(name, id) => (
            st.holds_container(name, *id),
            "declare_container",
            Some(*id),
            None,
        ),
        Pending::Request(id) => (st.holds_request(*id), "begin_request", Some(*id), None),
        Pending::Flow(f) => (st.holds_flow(f), "bind_flow", None, Some(f)),
    };
    if answered && held {
        return reply.clone();
    }
    if answered {
        let why = st
            .refusal(message, id, flow)
            .map_or_else(|| "it is no longer held".to_owned(), |r| r.reason.clone());
        return Reply::err(format!("the VMM refused {message}: {why}"));
    }
    // Not confirmed: take it back, so nothing is held that the client was
    // told failed.
    let mut out = Out::new();
    let st = &mut g.state;
    match p {
        Pending::Container(name, _) => {
            let _ = st.release_adhoc(client, &name, &mut out);
        }
        Pending::Request(id) => {
            let _ = st.end(id, &mut out);
        }
        Pending::Flow(f) => {
            let _ = st.unbind_flow(&f, &mut out);
        }
    }
    g.emit(out);
    drop(g);
    shared.wake_link();
    Reply::err(format!(
        "the VMM did not confirm {message} within {} s: it is not connected (the agent keeps reconnecting; retry later)",
        CONFIRM_TIMEOUT.as_secs()
    ))
}

fn ok() -> Reply {
    Reply {
        ok: true,
        ..Reply::default()
    }
}

/// Binds the socket at `path` with mode 0660. A stale socket there (nobody
/// answers) is replaced; a live one or any other file is refused.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; choose another --listen path",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another agent is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Accepts clients until the agent stops.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let clients = Arc::new(AtomicUsize::new(0));
    let next_id = AtomicU64::new(1);
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut handles = Vec::new();
    while !shared.stopping() {
        // SAFETY: `pfd` is one valid pollfd for the call's duration.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log::debug!("accept failed: {e}");
                continue;
            }
        };
        if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
            let _ = stream.set_write_timeout(Some(POLL));
            let _ = write_reply(&stream, &Reply::err(format!("at most {MAX_CLIENTS} clients")));
            continue;
        }
        clients.fetch_add(1, Ordering::Relaxed);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&shared);
        let clients = Arc::clone(&clients);
        let spawned = std::thread::Builder::new()
            .name(format!("agent-client-{id}"))
            .spawn(move || {
                client(&shared, id, stream);
                clients.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => log::warn!("cannot start a client thread: {e}"),
        }
        handles.retain(|h| !h.is_finished());
    }
    for h in handles {
        let _ = h.join();
    }
}

fn write_reply(s: &UnixStream, r: &Reply) -> io::Result<()> {
    write_reply_fd(s, r, None)
}

fn write_reply_fd(mut s: &UnixStream, r: &Reply, fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    match fd {
        Some(fd) => crate::rebind::send_with_fd(s, &line, fd),
        None => s.write_all(&line),
    }
}

/// `work_for`: binds (or unbinds) a thread of the client's own process.
fn work_for(
    g: &mut crate::agent::Inner,
    client: ClientId,
    peer: Option<u32>,
    request: Option<u32>,
    tid: Option<u32>,
) -> Result<(), String> {
    let Some(pid) = peer else {
        return Err("work_for needs the client's process (SO_PEERCRED), which this connection lacks".into());
    };
    let tid = tid.unwrap_or(pid);
    if tid == 0 || !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
        return Err(format!(
            "thread {tid} is not a thread of the client's process {pid}"
        ));
    }
    let tagging = &mut g.tagging;
    let Some(t) = &tagging.tagger else {
        return Err("slot tagging is off in this agent (see its --tagging and its log)".into());
    };
    match request {
        None => tagging.bindings.unbind(t, tid),
        Some(r) => {
            let container = g
                .state
                .request_container(r)
                .ok_or_else(|| format!("request {r} is not live"))?;
            tagging
                .bindings
                .bind(t, client, tid, r, accounting::abi::tag(container, r))
        }
    }
}

/// The process on the other end of a Unix stream.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: an all-zero ucred is a valid out-parameter.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).ok()?;
    // SAFETY: a valid socket, and `cred`/`len` describe a writable ucred.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0)
        .then(|| u32::try_from(cred.pid).ok())
        .flatten()
}

/// Serves one client until it closes, misbehaves or the agent stops; then
/// cleans up after it.
fn client(shared: &Shared, id: ClientId, stream: UnixStream) {
    let peer = peer_pid(&stream);
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    while !shared.stopping() {
        let room = u64::try_from(MAX_LINE + 1 - buf.len()).unwrap_or(0);
        match reader.by_ref().take(room).read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                let _ = write_reply(&stream, &Reply::err(format!("line longer than {MAX_LINE} bytes")));
                break;
            }
            continue; // the rest of the line is still coming, or EOF next
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let reply = if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(handle_line_fd(shared, id, peer, line))
        };
        buf.clear();
        if let Some((r, fd)) = reply {
            if write_reply_fd(&stream, &r, fd.as_ref()).is_err() {
                break;
            }
        }
    }
    let mut out = Out::new();
    let mut g = shared.lock();
    g.state.client_closed(id, &mut out);
    g.prune_bindings(Some(id));
    let sent = !out.is_empty();
    g.emit(out);
    drop(g);
    if sent {
        shared.wake_link();
    }
}
