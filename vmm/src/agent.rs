//! The VMM's side of the agent protocol ([`accounting::agent`],
//! `docs/agent-protocol.md`).
//!
//! An [`AgentHub`] serves agent connections from two places: the guest's
//! vsock connections to port [`AGENT_VSOCK_PORT`] (the vsock device asks
//! [`AgentHub::connect_local`] for a stream and relays the guest's bytes into
//! it) and, if `--agent-sock PATH` is given, a host Unix socket (for agents
//! run on the host, and for tests).
//!
//! Each connection has a thread of its own that reads frames, validates them
//! and applies them:
//!
//! - declarations go through [`Accounting::apply`], the same validation and
//!   bounds as the tag ABI's ring, so the agent cannot do what a guest
//!   program could not; re-sent declarations that match what is live (an
//!   agent replaying its state after a reconnect) are accepted as no-ops;
//! - flow bindings and the latest context report are kept here, bounded;
//! - `register_slots` is checked against the VM and published as a source
//!   of tag slots by [`AgentSlots`] (`devices::acct`), answered with
//!   `slots_registered` or `refused`;
//! - a frame that is malformed, oversized or breaks a rule closes that
//!   connection with a counted error and an `error` message; accounting is
//!   untouched by it.
//!
//! Nothing here is on the exit path: vCPUs never wait on the hub, and when
//! no agent is connected, or it dies, the hypervisor's charges go on as
//! before.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use accounting::abi::{self, EntryKind, RingEntry};
use accounting::agent::{
    self, AgentMessage, BeginRequest, BindFlow, ContextReport, DeclareContainer, Flow, FlowProto,
    FrameDecoder, Held, HeldContainer, HeldRequest, Hello, Previous, ProtocolError, RegisterSlots,
    VmmMessage, HELD_PER_FRAME, PROTOCOL_VERSION,
};
use accounting::errors::GuestError;
use accounting::ledger::{Accounting, Writer};
use accounting::registry::RequestMeta;
use accounting::resource::AgentCharge;
use accounting::warn_rl;
use devices::acct::AgentSlots;
use devices::virtio::net::flow::FlowBindings;
use devices::virtio::net::frame::{FiveTuple, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::sandbox::{self, Seccomp, ThreadKind};
use crate::sock::{ClaimError, SocketFile};

pub use accounting::agent::AGENT_VSOCK_PORT;

/// Most agent connections served at once; more are refused and counted.
pub const MAX_CONNECTIONS: usize = 8;
/// Most flow bindings kept; more are refused and counted.
pub const MAX_FLOWS: usize = 4096;
/// How long a connection may stay silent before it is closed (an agent
/// reports every second by default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new connection has to say `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to an agent may block (an agent that stops reading
/// is dropped, it never stalls the hub).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the agent socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The path exists and is something other than a socket.
    #[error("--agent-sock {0} exists and is not a socket: remove it or pass another path")]
    NotASocket(PathBuf),
    /// Another live process serves the path.
    #[error("--agent-sock {0}: another process serves this socket: stop it or pass another path")]
    InUse(PathBuf),
    /// Binding or starting the accept thread failed.
    #[error("cannot serve agents on --agent-sock {path}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the agent channel, all cumulative.
#[derive(Debug, Default)]
pub struct AgentCounters {
    connections: AtomicU64,
    refused: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    malformed: AtomicU64,
    invalid: AtomicU64,
    oversized: AtomicU64,
    out_of_sequence: AtomicU64,
    bad_version: AtomicU64,
    rejected: AtomicU64,
    replayed: AtomicU64,
    reports: AtomicU64,
    flows_refused: AtomicU64,
    boot_retired: AtomicU64,
    evicted: AtomicU64,
}

/// [`AgentCounters`] as read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused because [`MAX_CONNECTIONS`] were open, all of
    /// them past `hello`.
    pub refused: u64,
    /// Frames received.
    pub frames: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Frames that were not a valid message (connection closed).
    pub malformed: u64,
    /// Messages that broke a bound or rule (connection closed).
    pub invalid: u64,
    /// Length prefixes of 0 or above the frame limit (connection closed).
    pub oversized: u64,
    /// A first message other than `hello`, or a second `hello` (closed).
    pub out_of_sequence: u64,
    /// `hello` with a protocol version this VMM does not speak (closed).
    pub bad_version: u64,
    /// Well-formed declarations the books refused (unknown ids, limits);
    /// counted here and under the guest-error counters, connection kept.
    pub rejected: u64,
    /// Declarations re-sent by a reconnected agent that matched what was
    /// live, accepted as no-ops.
    pub replayed: u64,
    /// Context reports received.
    pub reports: u64,
    /// Flow bindings refused because [`MAX_FLOWS`] were kept.
    pub flows_refused: u64,
    /// Agent-declared containers the VMM retired because an agent of
    /// another `boot_id` said `hello` (the guest rebooted its agent's world).
    pub boot_retired: u64,
    /// Connections that had not said `hello`, closed to make room for a new
    /// one when [`MAX_CONNECTIONS`] were open.
    pub evicted: u64,
}

impl AgentStats {
    /// Every counter with its name (as in JSON and the metrics' `event`).
    pub fn by_name(&self) -> [(&'static str, u64); 15] {
        [
            ("connections", self.connections),
            ("refused", self.refused),
            ("frames", self.frames),
            ("bytes", self.bytes),
            ("malformed", self.malformed),
            ("invalid", self.invalid),
            ("oversized", self.oversized),
            ("out_of_sequence", self.out_of_sequence),
            ("bad_version", self.bad_version),
            ("rejected", self.rejected),
            ("replayed", self.replayed),
            ("reports", self.reports),
            ("flows_refused", self.flows_refused),
            ("boot_retired", self.boot_retired),
            ("evicted", self.evicted),
        ]
    }

    /// The non-zero counters by name, for the report.
    pub fn nonzero(&self) -> std::collections::BTreeMap<String, u64> {
        self.by_name()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }
}

impl AgentCounters {
    fn read(&self) -> AgentStats {
        AgentStats {
            connections: self.connections.load(Relaxed),
            refused: self.refused.load(Relaxed),
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            out_of_sequence: self.out_of_sequence.load(Relaxed),
            bad_version: self.bad_version.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            reports: self.reports.load(std::sync::atomic::Ordering::Acquire),
            flows_refused: self.flows_refused.load(Relaxed),
            boot_retired: self.boot_retired.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
        }
    }
}

/// A container the agent declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentContainer {
    /// Its name.
    pub name: String,
    /// Its parent.
    #[serde(skip)]
    pub parent: Option<u32>,
    /// The cgroup it stands for.
    pub cgroup: Option<String>,
}

/// Who a bound flow is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowBinding {
    /// Container id.
    pub container: u32,
    /// Request id, if any.
    pub request: Option<u32>,
}

/// The latest context report and when it came.
#[derive(Clone, Debug, Serialize)]
pub struct ContextSnapshot {
    /// Nanoseconds since the books were opened when it was received.
    pub received_ns: u64,
    /// The connection it came on.
    pub connection: u64,
    /// The report.
    pub report: ContextReport,
    /// Per cgroup path: its entry in `report.cgroups`, and the processes in
    /// it or below it with their CPU (built once on arrival, so a container
    /// view is a lookup, not a scan).
    #[serde(skip)]
    index: HashMap<String, CgroupIndex>,
}

#[derive(Clone, Copy, Debug, Default)]
struct CgroupIndex {
    entry: Option<usize>,
    processes: u64,
    cpu_ns: u64,
}

impl ContextSnapshot {
    /// Indexes `report`, received at `received_ns` on `connection`.
    pub fn new(received_ns: u64, connection: u64, report: ContextReport) -> Self {
        let mut index: HashMap<String, CgroupIndex> = HashMap::new();
        for (i, g) in report.cgroups.iter().enumerate() {
            index.entry(g.path.clone()).or_default().entry = Some(i);
        }
        for p in &report.processes {
            let cpu = p.usage.user_ns.saturating_add(p.usage.system_ns);
            // The process's cgroup and each ancestor ("/a/b" → "/a/b", "/a", "/").
            let mut path = p.cgroup.as_str();
            loop {
                let e = index.entry(path.to_string()).or_default();
                e.processes += 1;
                e.cpu_ns = e.cpu_ns.saturating_add(cpu);
                match path.rfind('/') {
                    Some(0) if path.len() > 1 => path = "/",
                    Some(i) if i > 0 => path = &path[..i],
                    _ => break,
                }
            }
        }
        Self {
            received_ns,
            connection,
            report,
            index,
        }
    }
}

/// The agent as last seen.
#[derive(Clone, Debug, Serialize)]
pub struct AgentPeer {
    /// Its `hello`.
    pub hello: Hello,
    /// The connection it said hello on.
    pub connection: u64,
    /// When, ns since the books were opened.
    pub since_ns: u64,
}

#[derive(Debug, Default)]
struct HubState {
    peer: Option<AgentPeer>,
    /// The `boot_id` of the agent whose state is held.
    boot_id: Option<String>,
    containers: HashMap<u32, AgentContainer>,
    /// Requests agents began, by id: their container. Entries the books
    /// ended by other means are dropped when the state is listed.
    requests: HashMap<u32, u32>,
    flows: HashMap<Flow, FlowBinding>,
    latest: Option<Arc<ContextSnapshot>>,
}

/// The guest's own view of a container, from the agent's latest report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GuestView {
    /// Always `"agent"`: reported by the guest, not measured by the VMM.
    pub provenance: &'static str,
    /// The cgroup the container stands for.
    pub cgroup: String,
    /// When the report was received, ns since the books were opened.
    pub as_of_ns: u64,
    /// The cgroup's `cpu.stat usage_usec`, if the report had it.
    pub cpu_usage_us: Option<u64>,
    /// Its `memory.current`.
    pub memory_current: Option<u64>,
    /// Its `io.stat` read bytes.
    pub io_read_bytes: Option<u64>,
    /// Its `io.stat` written bytes.
    pub io_write_bytes: Option<u64>,
    /// Processes in the cgroup (or below it).
    pub processes: u64,
    /// Their user + system CPU, ns.
    pub process_cpu_ns: u64,
}

/// Open connections by id: a handle on the stream (to shut it down) and the
/// thread serving it.
type Connections = HashMap<u64, Conn>;

/// An open connection as the hub keeps it.
struct Conn {
    /// A handle on the stream, to shut it down.
    ctl: UnixStream,
    /// The thread serving it.
    thread: Option<JoinHandle<()>>,
    /// Whether its peer has said a valid `hello`.
    greeted: Arc<AtomicBool>,
}

/// Serves agent connections and keeps what they said.
pub struct AgentHub {
    acct: Arc<Accounting>,
    /// Charges the connection threads' own work (one writer, shared).
    writer: Mutex<Option<Writer>>,
    state: Mutex<HubState>,
    /// IPv4 bindings as the net device looks them up: read per frame, so
    /// apart from `state` and behind a read-mostly lock.
    bound_v4: RwLock<HashMap<FiveTuple, u64>>,
    counters: AgentCounters,
    conns: Mutex<Connections>,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    listener: Mutex<Option<Listener>>,
    /// The filter level of the hub's threads.
    seccomp: Seccomp,
    /// Where `register_slots` installs the guest's slot pages (`None`: a
    /// hub without a VM, which refuses them).
    slots: Option<Arc<AgentSlots>>,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub").field("stats", &self.stats()).finish()
    }
}

fn bind_socket(path: &Path) -> Result<(UnixListener, SocketFile), AgentError> {
    crate::sock::claim(path).map_err(|e| match e {
        ClaimError::InUse(p) => AgentError::InUse(p),
        ClaimError::NotASocket(p) => AgentError::NotASocket(p),
        ClaimError::Io { path, what, source } => AgentError::Io {
            path,
            source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
        },
    })
}

/// The host listener: its thread, a clone of its socket to wake it, and the
/// socket file to remove.
#[derive(Debug)]
struct Listener {
    thread: JoinHandle<()>,
    waker: UnixListener,
    file: SocketFile,
}

impl AgentHub {
    /// A hub for `acct` with no connections yet, and no VM behind it:
    /// `register_slots` is refused (`slots_unavailable`).
    /// Its own CPU (parsing and applying frames) is charged
    /// through `writer` to `unattributed` (`None`: not charged, for
    /// `--no-accounting`).
    pub fn new(acct: Arc<Accounting>, writer: Option<Writer>) -> Arc<Self> {
        Self::sandboxed(acct, writer, Seccomp::Off, None)
    }

    /// A hub that installs `register_slots` through `slots`.
    pub fn with_slots(acct: Arc<Accounting>, writer: Option<Writer>, slots: Arc<AgentSlots>) -> Arc<Self> {
        Self::sandboxed(acct, writer, Seccomp::Off, Some(slots))
    }

    /// A hub whose threads (the accept loop, each connection) install the
    /// agent filter first, at `seccomp` (docs/sandbox.md), and that
    /// installs `register_slots` through `slots`.
    pub fn sandboxed(
        acct: Arc<Accounting>,
        writer: Option<Writer>,
        seccomp: Seccomp,
        slots: Option<Arc<AgentSlots>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            seccomp,
            acct,
            writer: Mutex::new(writer),
            state: Mutex::new(HubState::default()),
            bound_v4: RwLock::new(HashMap::new()),
            counters: AgentCounters::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            listener: Mutex::new(None),
            slots,
        })
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, Connections> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel's counters.
    pub fn stats(&self) -> AgentStats {
        self.counters.read()
    }

    /// The agent that said hello most recently, if it is still connected.
    pub fn peer(&self) -> Option<AgentPeer> {
        let peer = self.state().peer.clone()?;
        self.conns().contains_key(&peer.connection).then_some(peer)
    }

    /// Where the vCPUs' tag slots are read from, and what `register_slots`
    /// did (`vm.slots`).
    pub fn slots_info(&self) -> accounting::report::SlotsInfo {
        self.slots.as_ref().map(|s| s.info()).unwrap_or_default()
    }

    /// The latest context report.
    pub fn latest(&self) -> Option<Arc<ContextSnapshot>> {
        self.state().latest.clone()
    }

    /// Containers the agent declared and has not retired, by id.
    pub fn containers(&self) -> HashMap<u32, AgentContainer> {
        self.state().containers.clone()
    }

    /// Flow bindings in force.
    pub fn flows(&self) -> Vec<(Flow, FlowBinding)> {
        self.state().flows.iter().map(|(f, b)| (f.clone(), *b)).collect()
    }

    /// The guest's view of container `id` named `name`, if the agent
    /// declared it with a cgroup and has reported since. (The name guards
    /// against a container the agent declared, retired through the tag ring
    /// and declared again under the same id by someone else.)
    pub fn guest_view(&self, id: u32, name: &str) -> Option<GuestView> {
        let st = self.state();
        let c = st.containers.get(&id).filter(|c| c.name == name)?;
        let cgroup = c.cgroup.clone()?;
        let snap = st.latest.clone()?;
        drop(st);
        Some(guest_view_of(&cgroup, &snap))
    }

    /// Serves agents on a host Unix socket at `path` (created 0600).
    pub fn listen(self: &Arc<Self>, path: &Path) -> Result<(), AgentError> {
        let (l, file) = bind_socket(path)?;
        let io = |source| AgentError::Io {
            path: path.to_path_buf(),
            source,
        };
        let waker = match l.try_clone() {
            Ok(w) => w,
            Err(e) => {
                file.remove();
                return Err(io(e));
            }
        };
        let hub = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("rsrc-agent-accept".into())
            .spawn(move || {
                sandbox::enter_or_exit(ThreadKind::Agent, hub.seccomp);
                for s in l.incoming() {
                    if hub.stopping.load(Relaxed) {
                        break;
                    }
                    match s {
                        Ok(s) => {
                            hub.serve(s);
                        }
                        Err(e) => {
                            warn_rl!("agent socket accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                file.remove();
                return Err(io(e));
            }
        };
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Listener { thread, waker, file });
        Ok(())
    }

    /// A stream whose other end this hub serves: how the vsock device
    /// connects a guest's agent-port connection.
    pub fn connect_local(self: &Arc<Self>) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        if !self.serve(ours) {
            return Err(std::io::Error::new(
                ErrorKind::ConnectionRefused,
                "agent connection limit reached",
            ));
        }
        Ok(theirs)
    }

    /// Starts a connection thread for `s`; false if refused.
    fn serve(self: &Arc<Self>, s: UnixStream) -> bool {
        if self.stopping.load(Relaxed) {
            return false;
        }
        let mut conns = self.conns();
        // Reap connections that ended.
        conns.retain(|_, c| !c.thread.as_ref().is_some_and(JoinHandle::is_finished));
        if conns.len() >= MAX_CONNECTIONS {
            // Peers that never said hello do not lock the agent out: the
            // oldest of them makes room.
            let idle = conns
                .iter()
                .filter(|(_, c)| !c.greeted.load(Relaxed))
                .map(|(&id, _)| id)
                .min();
            let Some(old) = idle.and_then(|id| conns.remove(&id)) else {
                self.counters.refused.fetch_add(1, Relaxed);
                warn_rl!("agent connection refused: {MAX_CONNECTIONS} agents already said hello");
                return false;
            };
            let _ = old.ctl.shutdown(Shutdown::Both);
            self.counters.evicted.fetch_add(1, Relaxed);
            warn_rl!("agent connection without hello evicted: {MAX_CONNECTIONS} were open");
        }
        let Ok(ctl) = s.try_clone() else {
            return false;
        };
        let id = self.next_conn.fetch_add(1, Relaxed);
        let hub = Arc::clone(self);
        let greeted = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&greeted);
        let h = std::thread::Builder::new()
            .name(format!("rsrc-agent-{id}"))
            .spawn(move || {
                // Started by the accept loop or, for vsock, by the device
                // thread: this filter stacks on the one inherited.
                sandbox::enter_or_exit(ThreadKind::Agent, hub.seccomp);
                hub.run_connection(id, s, &flag)
            });
        match h {
            Ok(h) => {
                self.counters.connections.fetch_add(1, Relaxed);
                conns.insert(
                    id,
                    Conn {
                        ctl,
                        thread: Some(h),
                        greeted,
                    },
                );
                true
            }
            Err(e) => {
                warn_rl!("cannot start an agent connection thread: {e}");
                false
            }
        }
    }

    /// Closes every connection and the listener, and waits for their threads.
    pub fn stop(&self) {
        self.stopping.store(true, Relaxed);
        let listener = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = listener {
            // Wake the accept loop, which sees `stopping` and ends. Not by
            // connecting to the path: the file may be gone or another's.
            crate::sock::wake_listener(&l.waker);
            let _ = l.thread.join();
            l.file.remove();
        }
        let conns: Vec<_> = self.conns().drain().collect();
        for (_, c) in conns {
            let _ = c.ctl.shutdown(Shutdown::Both);
            if let Some(h) = c.thread {
                let _ = h.join();
            }
        }
    }

    fn run_connection(&self, id: u64, mut s: UnixStream, greeted: &AtomicBool) {
        let _ = s.set_read_timeout(Some(HELLO_TIMEOUT));
        let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut hello = false;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            self.counters.bytes.fetch_add(n as u64, Relaxed);
            let cpu0 = devices::virtio::thread_cpu_ns();
            dec.push(&buf[..n]);
            let (frames, open) = self.drain(id, &mut s, &mut dec, &mut hello);
            self.charge(frames, devices::virtio::thread_cpu_ns().saturating_sub(cpu0));
            if !open {
                break;
            }
            if hello && !greeted.swap(true, Relaxed) {
                let _ = s.set_read_timeout(Some(IDLE_TIMEOUT));
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        // Gone from the table: the peer no longer counts as connected (its
        // thread is ending, so its handle need not be joined).
        self.conns().remove(&id);
        log::debug!("agent connection {id} closed");
    }

    /// Handles every whole frame in `dec`: how many, and whether the
    /// connection stays open.
    fn drain(&self, id: u64, s: &mut UnixStream, dec: &mut FrameDecoder, hello: &mut bool) -> (u64, bool) {
        let mut frames = 0;
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return (frames, true),
                Err(e) => {
                    self.fail(s, id, &e);
                    return (frames, false);
                }
            };
            self.counters.frames.fetch_add(1, Relaxed);
            frames += 1;
            let r = agent::decode_agent(&frame).and_then(|m| self.handle(id, s, hello, m));
            if let Err(e) = r {
                self.fail(s, id, &e);
                return (frames, false);
            }
        }
    }

    /// Charges the connection thread's work on `frames` frames to
    /// `unattributed`: the agent works for the whole guest.
    fn charge(&self, frames: u64, host_ns: u64) {
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            w.charge_agent(None, &AgentCharge { frames, host_ns });
        }
    }

    fn fail(&self, s: &mut UnixStream, id: u64, e: &ProtocolError) {
        let c = &self.counters;
        match e {
            ProtocolError::FrameLength(_) => &c.oversized,
            ProtocolError::Malformed(_) => &c.malformed,
            ProtocolError::Invalid(_) => &c.invalid,
            ProtocolError::Sequence => &c.out_of_sequence,
            ProtocolError::Version(_) => &c.bad_version,
        }
        .fetch_add(1, Relaxed);
        warn_rl!("agent connection {id} closed: {e}");
        if let Ok(b) = agent::encode(&VmmMessage::Error {
            reason: e.to_string(),
        }) {
            let _ = s.write_all(&b);
        }
    }

    fn handle(
        &self,
        conn: u64,
        s: &mut UnixStream,
        hello: &mut bool,
        m: AgentMessage,
    ) -> Result<(), ProtocolError> {
        let answer = match (m, *hello) {
            (AgentMessage::Hello(h), false) => {
                if h.protocol != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version(h.protocol));
                }
                *hello = true;
                self.welcome(conn, s, h)?;
                None
            }
            (_, false) | (AgentMessage::Hello(_), true) => return Err(ProtocolError::Sequence),
            (AgentMessage::DeclareContainer(d), true) => self.declare(d),
            (AgentMessage::RetireContainer { id }, true) => {
                let e = RingEntry::new(EntryKind::RetireContainer, id, 0, 0, b"");
                let r = self.apply(&e, "retire_container");
                if r.is_none() {
                    let mut st = self.state();
                    st.containers.remove(&id);
                    st.requests.retain(|_, c| *c != id);
                }
                r
            }
            (AgentMessage::BeginRequest(b), true) => self.begin(b),
            (AgentMessage::EndRequest { id }, true) => {
                let e = RingEntry::new(EntryKind::EndRequest, id, 0, 0, b"");
                self.state().requests.remove(&id);
                self.apply(&e, "end_request")
            }
            (AgentMessage::BindFlow(b), true) => self.bind_flow(b),
            (AgentMessage::UnbindFlow { flow }, true) => {
                let mut st = self.state();
                if let Some(k) = five_tuple(&flow) {
                    self.bound_v4
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&k);
                }
                st.flows.remove(&flow);
                None
            }
            (AgentMessage::Context(report), true) => {
                let snap = ContextSnapshot::new(self.acct.now_ns(), conn, report);
                self.state().latest = Some(Arc::new(snap));
                // Counted once it can be read: a reader that sees the count
                // sees the report.
                self.counters
                    .reports
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
                None
            }
            // Always answered: `slots_registered` or `refused`.
            (AgentMessage::RegisterSlots(r), true) => Some(self.register_slots(&r)),
            (AgentMessage::ClockSync { monotonic_ns, tsc }, true) => {
                // Without slots in force there is no log to place: nothing
                // to keep (not a mistake: the slots may have been refused).
                if !self
                    .slots
                    .as_ref()
                    .is_some_and(|s| s.sync_clock(monotonic_ns, tsc))
                {
                    log::debug!("agent clock_sync with no agent slots in force: ignored");
                }
                None
            }
            (AgentMessage::UnregisterSlots {}, true) => {
                if let Some(slots) = &self.slots {
                    slots.clear();
                }
                None
            }
            (AgentMessage::Sync { seq }, true) => {
                send(s, &VmmMessage::Synced { seq })?;
                None
            }
        };
        match answer {
            Some(r) => send(s, &r),
            None => Ok(()),
        }
    }

    /// Answers a `hello`: retires what an agent of another boot declared,
    /// then sends `welcome` and the state held for this boot in `held`
    /// frames.
    fn welcome(&self, conn: u64, s: &mut UnixStream, h: Hello) -> Result<(), ProtocolError> {
        let (previous, held) = {
            let mut st = self.state();
            self.prune(&mut st);
            let holds = !st.containers.is_empty() || !st.requests.is_empty() || !st.flows.is_empty();
            let previous = match &st.boot_id {
                _ if !holds => Previous::None,
                Some(b) if *b == h.boot_id => Previous::SameBoot,
                _ => Previous::OtherBoot,
            };
            if previous == Previous::OtherBoot {
                self.retire_all(&mut st);
            }
            // The slot pages belong to the boot that registered them, held
            // state or not; an agent of the same boot finds them in force
            // (the map outlives the agent process).
            let other_boot = st.boot_id.as_ref().is_some_and(|b| *b != h.boot_id);
            if let (true, Some(slots)) = (other_boot, &self.slots) {
                slots.clear();
            }
            st.boot_id = Some(h.boot_id.clone());
            (previous, held_frames(&st))
        };
        let next_id = self.acct.registry().max_id().wrapping_add(1);
        // One write: a small welcome reaches a guest as one packet.
        let mut bytes = agent::encode(&VmmMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            tenant: self.acct.tenant().to_string(),
            previous,
            next_id,
        })?;
        for f in held {
            bytes.extend(agent::encode(&VmmMessage::Held(f))?);
        }
        s.write_all(&bytes)
            .map_err(|e| ProtocolError::Malformed(format!("cannot send welcome: {e}")))?;
        log::info!(
            "agent {} connected (kernel {}, host {}, previous state: {previous:?})",
            h.agent_version,
            h.kernel,
            h.hostname
        );
        self.state().peer = Some(AgentPeer {
            hello: h,
            connection: conn,
            since_ns: self.acct.now_ns(),
        });
        Ok(())
    }

    /// Drops from the lists what the books no longer hold as the agent
    /// declared it (retired or ended through the ring, or refused).
    fn prune(&self, st: &mut HubState) {
        let reg = self.acct.registry();
        st.containers
            .retain(|id, c| reg.live_container(*id).is_some_and(|l| l.name == c.name));
        st.requests.retain(|id, c| {
            reg.live_request_container(*id).is_some()
                && reg.live_request_container(*id) == reg.live_container_index(*c)
        });
    }

    /// Retires every agent-declared container (their requests end) and
    /// unbinds every flow: the agent that declared them belongs to a boot
    /// that is gone.
    fn retire_all(&self, st: &mut HubState) {
        let mut ids: Vec<u32> = st.containers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = RingEntry::new(EntryKind::RetireContainer, id, 0, 0, b"");
            if self.acct.apply(&e).is_ok() {
                self.counters.boot_retired.fetch_add(1, Relaxed);
            }
        }
        for id in std::mem::take(&mut st.requests).into_keys() {
            let e = RingEntry::new(EntryKind::EndRequest, id, 0, 0, b"");
            let _ = self.acct.apply(&e);
        }
        st.containers.clear();
        st.flows.clear();
        self.bound_v4.write().unwrap_or_else(|p| p.into_inner()).clear();
        log::warn!("agent of another boot said hello: the previous agent's containers were retired");
    }

    /// Applies a declaration to the books; the `refused` answer (counted,
    /// logged) if they refused it.
    fn apply(&self, e: &RingEntry, what: &str) -> Option<VmmMessage> {
        match self.acct.apply(e) {
            Ok(()) => None,
            Err(err) => Some(self.rejected(what, e.id, err)),
        }
    }

    fn rejected(&self, what: &str, id: u32, err: GuestError) -> VmmMessage {
        self.counters.rejected.fetch_add(1, Relaxed);
        warn_rl!("agent {what} {id} refused: {}", err.name());
        VmmMessage::Refused {
            message: what.to_string(),
            id: Some(id),
            flow: None,
            reason: err.name().to_string(),
        }
    }

    /// Installs the guest's slot pages; the answer: `slots_registered` with
    /// the vCPUs that now have a slot, or `refused` (counted as `rejected`;
    /// the guest-error counter and the log line are `AgentSlots`').
    fn register_slots(&self, r: &RegisterSlots) -> VmmMessage {
        let refused = |reason: &str| {
            self.counters.rejected.fetch_add(1, Relaxed);
            VmmMessage::Refused {
                message: "register_slots".into(),
                id: None,
                flow: None,
                reason: reason.into(),
            }
        };
        let Some(slots) = &self.slots else {
            warn_rl!("agent register_slots refused: this hub serves no VM");
            return refused("slots_unavailable");
        };
        match slots.register(r) {
            Ok(vcpus) => VmmMessage::SlotsRegistered { vcpus },
            Err(e) => refused(e.reason()),
        }
    }

    fn declare(&self, d: DeclareContainer) -> Option<VmmMessage> {
        // A reconnected agent re-sends what it declared; what matches the
        // live container is a no-op.
        let same = self
            .acct
            .registry()
            .live_container(d.id)
            .is_some_and(|c| c.name == d.name);
        if same {
            self.counters.replayed.fetch_add(1, Relaxed);
        } else {
            let e = RingEntry::new(
                EntryKind::DeclareContainer,
                d.id,
                d.parent.unwrap_or(abi::NO_CONTAINER),
                0,
                d.name.as_bytes(),
            );
            if let Some(r) = self.apply(&e, "declare_container") {
                return Some(r);
            }
        }
        self.state().containers.insert(
            d.id,
            AgentContainer {
                name: d.name,
                parent: d.parent,
                cgroup: d.cgroup,
            },
        );
        None
    }

    fn begin(&self, b: BeginRequest) -> Option<VmmMessage> {
        let reg = self.acct.registry();
        let live_in = reg.live_request_container(b.id);
        let wanted = reg.live_container_index(b.container);
        drop(reg);
        if let Some(idx) = live_in {
            // A replay of a request still live in the same container is a
            // no-op; anything else is the duplicate the ring would refuse.
            if wanted == Some(idx) {
                self.counters.replayed.fetch_add(1, Relaxed);
                self.state().requests.insert(b.id, b.container);
                return None;
            }
            self.acct.count_error(GuestError::RingDuplicateRequest);
            return Some(self.rejected("begin_request", b.id, GuestError::RingDuplicateRequest));
        }
        let trace_id = b.trace_id.as_deref().and_then(agent::trace_id_bytes);
        let meta = (trace_id.is_some() || !b.attributes.is_empty()).then(|| RequestMeta {
            trace_id,
            attributes: b.attributes.into_iter().collect(),
        });
        if let Err(err) = self.acct.begin_with_meta(b.id, b.container, b.external_id, meta) {
            return Some(self.rejected("begin_request", b.id, err));
        }
        let mut st = self.state();
        if st.requests.len() >= 2 * self.acct.limits().max_live_requests as usize {
            self.prune(&mut st);
        }
        st.requests.insert(b.id, b.container);
        None
    }

    fn bind_flow(&self, b: BindFlow) -> Option<VmmMessage> {
        let mut st = self.state();
        if st.flows.len() >= MAX_FLOWS && !st.flows.contains_key(&b.flow) {
            drop(st);
            self.counters.flows_refused.fetch_add(1, Relaxed);
            self.counters.rejected.fetch_add(1, Relaxed);
            warn_rl!("agent flow binding refused: {MAX_FLOWS} bindings kept");
            return Some(VmmMessage::Refused {
                message: "bind_flow".into(),
                id: None,
                flow: Some(b.flow),
                reason: format!("flow_limit ({MAX_FLOWS} bindings kept)"),
            });
        }
        let tag = abi::tag(b.container, b.request.unwrap_or(abi::NO_REQUEST));
        if let Some(k) = five_tuple(&b.flow) {
            self.bound_v4
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k, tag);
        }
        st.flows.insert(
            b.flow,
            FlowBinding {
                container: b.container,
                request: b.request,
            },
        );
        None
    }
}

/// Writes one message; an agent that does not read within the write
/// timeout loses its connection.
fn send(s: &mut UnixStream, m: &VmmMessage) -> Result<(), ProtocolError> {
    let b = agent::encode(m)?;
    s.write_all(&b)
        .map_err(|e| ProtocolError::Malformed(format!("cannot write to the agent: {e}")))
}

/// The state held for agents as `held` frames (at least one, the last
/// marked), containers parents first.
fn held_frames(st: &HubState) -> Vec<Held> {
    let mut containers: Vec<HeldContainer> = st
        .containers
        .iter()
        .map(|(&id, c)| HeldContainer {
            id,
            name: c.name.clone(),
            parent: c.parent,
            cgroup: c.cgroup.clone(),
        })
        .collect();
    containers.sort_by_key(|c| c.id);
    let mut requests: Vec<HeldRequest> = st
        .requests
        .iter()
        .map(|(&id, &container)| HeldRequest { id, container })
        .collect();
    requests.sort_by_key(|r| r.id);
    let mut flows: Vec<BindFlow> = st
        .flows
        .iter()
        .map(|(f, b)| BindFlow {
            flow: f.clone(),
            container: b.container,
            request: b.request,
        })
        .collect();
    flows.sort_by_key(|b| (b.flow.local, b.flow.remote));
    let mut frames = vec![Held::default()];
    let mut push = |f: &mut dyn FnMut(&mut Held)| {
        if frames.last().is_some_and(|h| h.len() >= HELD_PER_FRAME) {
            frames.push(Held::default());
        }
        if let Some(h) = frames.last_mut() {
            f(h);
        }
    };
    for c in containers {
        let mut c = Some(c);
        push(&mut |h| h.containers.extend(c.take()));
    }
    for r in requests {
        push(&mut |h| h.requests.push(r));
    }
    for b in flows {
        let mut b = Some(b);
        push(&mut |h| h.flows.extend(b.take()));
    }
    if let Some(h) = frames.last_mut() {
        h.last = true;
    }
    frames
}

/// The net device's key for an IPv4 flow as the guest sends it; `None`
/// for IPv6 (the net device tracks IPv4 flows only).
fn five_tuple(f: &Flow) -> Option<FiveTuple> {
    let (std::net::SocketAddr::V4(l), std::net::SocketAddr::V4(r)) = (f.local, f.remote) else {
        return None;
    };
    Some(FiveTuple {
        src_ip: *l.ip(),
        dst_ip: *r.ip(),
        src_port: l.port(),
        dst_port: r.port(),
        proto: match f.proto {
            FlowProto::Tcp => IPPROTO_TCP,
            FlowProto::Udp => IPPROTO_UDP,
        },
    })
}

impl FlowBindings for AgentHub {
    fn bound(&self, flow: &FiveTuple) -> Option<u64> {
        let map = self.bound_v4.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        map.get(flow).copied()
    }
}

/// The report's view of `cgroup` and the processes in or below it.
pub fn guest_view_of(cgroup: &str, snap: &ContextSnapshot) -> GuestView {
    let ix = snap.index.get(cgroup).copied().unwrap_or_default();
    let cg = ix.entry.and_then(|i| snap.report.cgroups.get(i));
    GuestView {
        provenance: "agent",
        cgroup: cgroup.to_string(),
        as_of_ns: snap.received_ns,
        cpu_usage_us: cg.map(|g| g.cpu_usage_us),
        memory_current: cg.and_then(|g| g.memory_current),
        io_read_bytes: cg.map(|g| g.io_read_bytes),
        io_write_bytes: cg.map(|g| g.io_write_bytes),
        processes: ix.processes,
        process_cpu_ns: ix.cpu_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::agent::{BindFlow, CgroupInfo, ProcessInfo, TaskUsage};
    use accounting::registry::Limits;

    fn send(s: &mut UnixStream, m: &AgentMessage) {
        s.write_all(&agent::encode(m).unwrap()).unwrap();
    }

    fn recv(s: &mut UnixStream) -> VmmMessage {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut b).unwrap();
        agent::decode_vmm(&b).unwrap()
    }

    fn hello() -> AgentMessage {
        AgentMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "t".into(),
            kernel: "k".into(),
            boot_id: "b".into(),
            hostname: String::new(),
        })
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn hello_from(boot: &str) -> AgentMessage {
        let AgentMessage::Hello(mut h) = hello() else {
            unreachable!()
        };
        h.boot_id = boot.into();
        AgentMessage::Hello(h)
    }

    /// `welcome` and the held state that follows it.
    fn welcome(s: &mut UnixStream) -> (Previous, u32, Held) {
        let VmmMessage::Welcome {
            previous, next_id, ..
        } = recv(s)
        else {
            panic!("no welcome")
        };
        let mut all = Held::default();
        loop {
            let VmmMessage::Held(h) = recv(s) else {
                panic!("no held frame")
            };
            all.containers.extend(h.containers);
            all.requests.extend(h.requests);
            all.flows.extend(h.flows);
            if h.last {
                all.last = true;
                return (previous, next_id, all);
            }
        }
    }

    fn declare(s: &mut UnixStream, id: u32, name: &str) {
        send(
            s,
            &AgentMessage::DeclareContainer(DeclareContainer {
                id,
                name: name.into(),
                parent: None,
                cgroup: Some(format!("/{name}")),
            }),
        );
    }

    fn begin(s: &mut UnixStream, id: u32, container: u32) {
        send(
            s,
            &AgentMessage::BeginRequest(BeginRequest {
                id,
                container,
                external_id: 0,
                trace_id: None,
                attributes: Default::default(),
            }),
        );
    }

    #[test]
    fn refusals_are_answered_in_order_before_synced() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        assert_eq!(welcome(&mut s).0, Previous::None);
        declare(&mut s, 0x1000_0000, "web");
        declare(&mut s, 0x1000_0001, "web");
        begin(&mut s, 0x1000_0002, 0x1000_0001);
        send(&mut s, &AgentMessage::Sync { seq: 7 });
        assert_eq!(
            recv(&mut s),
            VmmMessage::Refused {
                message: "declare_container".into(),
                id: Some(0x1000_0001),
                flow: None,
                reason: "ring_duplicate_name".into()
            }
        );
        assert_eq!(
            recv(&mut s),
            VmmMessage::Refused {
                message: "begin_request".into(),
                id: Some(0x1000_0002),
                flow: None,
                reason: "ring_unknown_container".into()
            }
        );
        assert_eq!(recv(&mut s), VmmMessage::Synced { seq: 7 });
        assert_eq!(hub.stats().rejected, 2);
        assert_eq!(hub.containers().len(), 1, "only what the books hold is listed");
        hub.stop();
    }

    #[test]
    fn a_restarted_agent_is_told_what_is_held_and_another_boot_finds_it_retired() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello_from("boot-1"));
        welcome(&mut s);
        declare(&mut s, 0x1000_0000, "web");
        declare(&mut s, 0x1000_0001, "batch");
        begin(&mut s, 0x1000_0005, 0x1000_0000);
        begin(&mut s, 0x1000_0006, 0x1000_0001);
        send(&mut s, &AgentMessage::EndRequest { id: 0x1000_0006 });
        let flow = Flow {
            proto: FlowProto::Tcp,
            local: "10.0.0.2:4000".parse().unwrap(),
            remote: "10.0.0.1:80".parse().unwrap(),
        };
        send(
            &mut s,
            &AgentMessage::BindFlow(BindFlow {
                flow: flow.clone(),
                container: 0x1000_0000,
                request: Some(0x1000_0005),
            }),
        );
        send(&mut s, &AgentMessage::Sync { seq: 1 });
        assert_eq!(recv(&mut s), VmmMessage::Synced { seq: 1 });
        drop(s);

        // The same boot: everything live is listed, ids to allocate from
        // are above every id used (the ended request's included).
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello_from("boot-1"));
        let (previous, next_id, held) = welcome(&mut s);
        assert_eq!(previous, Previous::SameBoot);
        assert_eq!(next_id, 0x1000_0007);
        let names: Vec<(u32, &str)> = held.containers.iter().map(|c| (c.id, c.name.as_str())).collect();
        assert_eq!(names, [(0x1000_0000, "web"), (0x1000_0001, "batch")]);
        assert_eq!(held.containers[0].cgroup.as_deref(), Some("/web"));
        assert_eq!(
            held.requests,
            [HeldRequest {
                id: 0x1000_0005,
                container: 0x1000_0000
            }]
        );
        assert_eq!(held.flows.len(), 1);
        drop(s);

        // Another boot: the VMM retires it all itself.
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello_from("boot-2"));
        let (previous, _, held) = welcome(&mut s);
        assert_eq!(previous, Previous::OtherBoot);
        assert!(held.is_empty() && held.last);
        assert_eq!(hub.stats().boot_retired, 2);
        assert!(acct.registry().live_container(0x1000_0000).is_none());
        assert_eq!(acct.registry().live_len(), 0);
        assert!(hub.flows().is_empty());
        assert!(hub.bound(&five_tuple(&flow).unwrap()).is_none());
        hub.stop();
    }

    #[test]
    fn the_hubs_own_work_is_charged_to_unattributed_and_conserved() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        welcome(&mut s);
        for i in 0..10 {
            declare(&mut s, 0x1000_0000 + i, &format!("c{i}"));
        }
        send(&mut s, &AgentMessage::Sync { seq: 1 });
        assert_eq!(recv(&mut s), VmmMessage::Synced { seq: 1 });
        drop(s);
        wait_until("the connection's end", || hub.conns().is_empty());
        let unattributed = acct.registry().containers()[0].cells.sum();
        assert_eq!(unattributed.agent.frames, 12, "hello, 10 declarations, sync");
        assert!(unattributed.agent.host_ns > 0);
        let total = acct.writer_totals()[1];
        assert_eq!(total.agent, unattributed.agent, "conserved");
        hub.stop();
    }

    #[test]
    fn peers_without_hello_cannot_lock_the_agent_out() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut idle: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| hub.connect_local().unwrap())
            .collect();
        // The real agent still gets in: the oldest silent peer makes room.
        let mut agent = hub.connect_local().expect("the agent is served");
        send(&mut agent, &hello());
        assert_eq!(welcome(&mut agent).0, Previous::None);
        assert_eq!((hub.stats().evicted, hub.stats().refused), (1, 0));
        let mut b = [0u8; 1];
        assert_eq!(idle[0].read(&mut b).unwrap(), 0, "the oldest was closed");
        // A silent peer is closed after the hello deadline anyway.
        let t0 = std::time::Instant::now();
        assert_eq!(idle[1].read(&mut b).unwrap(), 0);
        assert!(t0.elapsed() < HELLO_TIMEOUT + Duration::from_secs(2));
        idle.clear();
        hub.stop();
    }

    #[test]
    fn held_state_is_split_into_bounded_frames() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        welcome(&mut s);
        let n = u32::try_from(HELD_PER_FRAME).unwrap() + 3;
        for i in 0..n {
            declare(&mut s, 0x1000_0000 + i, &format!("c{i}"));
        }
        send(&mut s, &AgentMessage::Sync { seq: 1 });
        assert_eq!(recv(&mut s), VmmMessage::Synced { seq: 1 });
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        assert!(matches!(recv(&mut s), VmmMessage::Welcome { .. }));
        let VmmMessage::Held(first) = recv(&mut s) else {
            panic!()
        };
        assert_eq!((first.len(), first.last), (HELD_PER_FRAME, false));
        let VmmMessage::Held(second) = recv(&mut s) else {
            panic!()
        };
        assert_eq!((second.len(), second.last), (3, true));
        hub.stop();
    }

    #[test]
    fn an_agent_of_the_old_protocol_is_told_what_to_run() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        let AgentMessage::Hello(mut h) = hello() else {
            unreachable!()
        };
        // The previous release's agent: it would not understand
        // `slots_registered`.
        h.protocol = 2;
        send(&mut s, &AgentMessage::Hello(h));
        let VmmMessage::Error { reason } = recv(&mut s) else {
            panic!("no error")
        };
        assert_eq!(
            reason,
            "agent protocol 2 is not supported: this VMM speaks protocol 3; run a resourceful-agent of the same release"
        );
        assert_eq!(hub.stats().bad_version, 1);
        hub.stop();
    }

    #[test]
    fn bound_flows_reach_the_net_lookup_and_unbind_removes_them() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        assert!(matches!(recv(&mut s), VmmMessage::Welcome { .. }));
        let flow = Flow {
            proto: FlowProto::Udp,
            local: "10.0.0.2:5000".parse().unwrap(),
            remote: "10.0.0.1:53".parse().unwrap(),
        };
        send(
            &mut s,
            &AgentMessage::DeclareContainer(DeclareContainer {
                id: 9,
                name: "dns".into(),
                parent: None,
                cgroup: None,
            }),
        );
        send(
            &mut s,
            &AgentMessage::BindFlow(BindFlow {
                flow: flow.clone(),
                container: 9,
                request: None,
            }),
        );
        let key = five_tuple(&flow).unwrap();
        wait_until("the binding", || hub.bound(&key).is_some());
        assert_eq!(hub.bound(&key), Some(abi::tag(9, abi::NO_REQUEST)));
        assert_eq!(hub.bound(&key.reversed()), None);
        send(&mut s, &AgentMessage::UnbindFlow { flow });
        wait_until("the unbinding", || hub.bound(&key).is_none());
        assert!(hub.flows().is_empty());
        hub.stop();
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_and_stop_closes_the_rest() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let open: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut s = hub.connect_local().unwrap();
                send(&mut s, &hello());
                welcome(&mut s);
                s
            })
            .collect();
        // The flag is set after the hello frame's handling: wait for all.
        wait_until("every hello seen", || {
            hub.conns().values().all(|c| c.greeted.load(Relaxed))
        });
        assert!(hub.connect_local().is_err());
        assert_eq!(hub.stats().refused, 1);
        hub.stop();
        for mut s in open {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap(), 0, "closed by stop");
        }
        assert!(hub.connect_local().is_err(), "a stopped hub serves nothing");
    }

    #[test]
    fn the_guest_view_sums_a_cgroup_and_the_processes_below_it() {
        let p = |pid, cgroup: &str, user_ns| ProcessInfo {
            pid,
            ppid: 1,
            comm: "x".into(),
            cgroup: cgroup.into(),
            usage: TaskUsage {
                user_ns,
                system_ns: 1,
                ..TaskUsage::default()
            },
            read_bytes: 0,
            write_bytes: 0,
            rss_bytes: 0,
            threads: vec![],
            threads_omitted: 0,
        };
        let snap = ContextSnapshot::new(
            5,
            1,
            ContextReport {
                processes: vec![p(1, "/a", 10), p(2, "/a/b", 20), p(3, "/ab", 40), p(4, "/", 80)],
                cgroups: vec![CgroupInfo {
                    path: "/a".into(),
                    cpu_usage_us: 7,
                    memory_current: Some(4096),
                    ..CgroupInfo::default()
                }],
                ..ContextReport::default()
            },
        );
        let v = guest_view_of("/a", &snap);
        // `/ab` is not below `/a`.
        assert_eq!((v.processes, v.process_cpu_ns), (2, 32));
        assert_eq!(
            (v.cpu_usage_us, v.memory_current, v.as_of_ns),
            (Some(7), Some(4096), 5)
        );
        let none = guest_view_of("/zzz", &snap);
        assert_eq!((none.processes, none.cpu_usage_us), (0, None));
        // Everything is below the root.
        assert_eq!(guest_view_of("/", &snap).processes, 4);
        assert_eq!(guest_view_of("/a/b", &snap).process_cpu_ns, 21);
    }

    /// A hub over 1 MiB of guest RAM with 2 vCPUs.
    fn slots_hub() -> (
        Arc<AgentHub>,
        Arc<AgentSlots>,
        Arc<devices::acct::TagRegion>,
        Arc<Accounting>,
    ) {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let acct = Accounting::new("t", 2, 1, Limits::default());
        let region = devices::acct::TagRegion::new(2);
        let slots = Arc::new(AgentSlots::new(Arc::clone(&region), mem, Arc::clone(&acct)));
        let hub = AgentHub::with_slots(Arc::clone(&acct), Some(acct.writer(2)), Arc::clone(&slots));
        (hub, slots, region, acct)
    }

    fn register_slots(pages: &[u64], cpus: &[(u32, u32)]) -> AgentMessage {
        AgentMessage::RegisterSlots(RegisterSlots {
            pages: pages.to_vec(),
            cpus: cpus
                .iter()
                .map(|&(apic_id, slot)| agent::SlotCpu { apic_id, slot })
                .collect(),
        })
    }

    fn refused_reason(m: VmmMessage) -> String {
        match m {
            VmmMessage::Refused {
                message, id, reason, ..
            } => {
                assert_eq!((message.as_str(), id), ("register_slots", None));
                reason
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn register_slots_is_answered_refused_against_the_vm_and_replaced_only_on_success() {
        let (hub, slots, region, acct) = slots_hub();
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        welcome(&mut s);

        send(&mut s, &register_slots(&[0x3000], &[(1, 7)]));
        assert_eq!(recv(&mut s), VmmMessage::SlotsRegistered { vcpus: vec![1] });
        // Outside RAM, then an APIC id beyond the 2 vCPUs: refused, counted,
        // the connection and the registration stay.
        send(&mut s, &register_slots(&[0x3000, 0x10_0000], &[(0, 0)]));
        assert_eq!(refused_reason(recv(&mut s)), "slots_not_in_ram");
        send(&mut s, &register_slots(&[0x4000], &[(0, 0), (2, 1)]));
        assert_eq!(refused_reason(recv(&mut s)), "slots_unknown_apic_id");
        assert_eq!(acct.errors().get(GuestError::SlotsNotInRam), 1);
        assert_eq!(acct.errors().get(GuestError::SlotsUnknownApicId), 1);
        assert_eq!(hub.stats().rejected, 2);
        assert_eq!(region.agent().unwrap().vcpus(), vec![1]);
        let info = slots.info();
        assert_eq!((info.registrations, info.refusals, info.pages), (1, 2, 1));

        // The identical registration again: a no-op, answered all the same.
        send(&mut s, &register_slots(&[0x3000], &[(1, 7)]));
        assert_eq!(recv(&mut s), VmmMessage::SlotsRegistered { vcpus: vec![1] });
        assert_eq!(slots.info().registrations, 1);

        // A structurally bad one closes the connection, as any invalid frame.
        send(&mut s, &register_slots(&[0x3008], &[(0, 0)]));
        assert!(matches!(recv(&mut s), VmmMessage::Error { .. }));
        assert_eq!(hub.stats().invalid, 1);
        assert_eq!(region.agent().unwrap().vcpus(), vec![1]);
        hub.stop();
    }

    #[test]
    fn slots_survive_a_reconnect_of_the_same_boot_and_not_another_boot_or_unregister() {
        let (hub, slots, region, _) = slots_hub();
        let mut a = hub.connect_local().unwrap();
        send(&mut a, &hello_from("boot-1"));
        welcome(&mut a);
        send(&mut a, &register_slots(&[0x3000], &[(0, 0), (1, 1)]));
        assert_eq!(recv(&mut a), VmmMessage::SlotsRegistered { vcpus: vec![0, 1] });
        drop(a);

        // The agent restarts in the same boot: the slots are still in force.
        let mut b = hub.connect_local().unwrap();
        send(&mut b, &hello_from("boot-1"));
        welcome(&mut b);
        assert_eq!(slots.info().source, "agent");
        send(&mut b, &AgentMessage::UnregisterSlots {});
        send(&mut b, &AgentMessage::Sync { seq: 1 });
        assert_eq!(recv(&mut b), VmmMessage::Synced { seq: 1 });
        assert!(region.agent().is_none());
        send(&mut b, &register_slots(&[0x5000], &[(0, 3)]));
        assert_eq!(recv(&mut b), VmmMessage::SlotsRegistered { vcpus: vec![0] });
        drop(b);

        // Another boot: the pages of the old one mean nothing any more.
        let mut c = hub.connect_local().unwrap();
        send(&mut c, &hello_from("boot-2"));
        welcome(&mut c);
        assert!(region.agent().is_none());
        let info = slots.info();
        assert_eq!(
            (info.source.as_str(), info.pages, info.registrations),
            ("none", 0, 2)
        );
        hub.stop();
    }

    #[test]
    fn a_hub_without_a_vm_refuses_slots() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
        let mut s = hub.connect_local().unwrap();
        send(&mut s, &hello());
        welcome(&mut s);
        send(&mut s, &register_slots(&[0x3000], &[(0, 0)]));
        assert_eq!(refused_reason(recv(&mut s)), "slots_unavailable");
        hub.stop();
    }
}
