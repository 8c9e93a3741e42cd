//! The running agent: three kinds of thread around one lock.
//!
//! - the **collector** reads `/proc` and cgroups every interval, keeps the
//!   rule containers in step, and queues a `context` report;
//! - the **link** ([`crate::link::run`]) keeps a connection to the VMM and
//!   streams what is queued;
//! - the **local interface** ([`crate::local`]) serves applications.
//!
//! [`Shared`] holds the declared [`State`] and the [`Outbox`] under one
//! mutex, so a state change and the frame that announces it are queued
//! atomically and a replay always matches the state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use accounting::abi;
use accounting::agent::{encode, AgentMessage, Hello, MAX_FRAME, MAX_TEXT, PROTOCOL_VERSION};

use crate::collect::{encode_report, Collector};
use crate::config::RuleKey;
use crate::config::{self, Config};
use crate::link::{self, Endpoint};
use crate::local;
use crate::outbox::Outbox;
use crate::procfs::{read_file, sanitize_text};
use crate::state::{Container, Origin, Out, State};
use crate::tagger::{self, RebindPages, Tagger, ThreadBindings};

/// Default outgoing buffer, bytes.
pub const DEFAULT_BUFFER_BYTES: usize = 1 << 20;

/// What sits under the lock.
#[derive(Debug)]
pub struct Inner {
    /// Declared state.
    pub state: State,
    /// Frames waiting for the VMM.
    pub outbox: Outbox,
    /// The highest `sync` asked for by local clients.
    pub sync_wanted: u64,
    /// The highest `synced` the VMM answered.
    pub synced: u64,
    /// The eBPF slot tagger's part (see [`crate::tagger`]).
    pub tagging: Tagging,
}

/// The slot tagger, when it runs, and what the VMM said of its slots.
#[derive(Debug, Default)]
pub struct Tagging {
    /// The loaded tagger.
    pub tagger: Option<Tagger>,
    /// Where cgroup paths are (their directories' inodes are cgroup ids).
    pub cgroup_root: Option<PathBuf>,
    /// The vCPUs the VMM reads slots of (its last `slots_registered`).
    pub registered: Option<Vec<u32>>,
    /// Threads bound to requests (`work_for`).
    pub bindings: ThreadBindings,
    /// Rebind pages given to clients (`rebind_page`, `rebind_thread`).
    pub pages: RebindPages,
    /// The process map as last written (pid → tag), so a tick writes only
    /// what changed.
    pub processes: HashMap<u32, u64>,
    /// Map updates that failed, in all.
    pub errors: u64,
}

impl Tagging {
    /// The `register_slots` message, when tagging runs.
    pub fn registration(&self) -> Option<AgentMessage> {
        self.tagger
            .as_ref()
            .map(|t| AgentMessage::RegisterSlots(t.registration().clone()))
    }
}

impl Inner {
    /// Makes the tagger's cgroup map name each live container that has a
    /// cgroup (a container whose cgroup directory is gone is left out).
    pub fn sync_tags(&mut self) {
        let (Some(t), Some(root)) = (&self.tagging.tagger, &self.tagging.cgroup_root) else {
            return;
        };
        let want: HashMap<u64, u64> = self
            .state
            .containers()
            .filter(|c| !is_process_rule(c))
            .filter_map(|c| {
                let path = c.decl.cgroup.as_deref()?;
                let id = tagger::cgroup_id(root, path).ok()?;
                Some((id, abi::tag(c.decl.id, abi::NO_REQUEST)))
            })
            .collect();
        if let Err(e) = t.sync_cgroups(&want) {
            self.tagging.errors += 1;
            if self.tagging.errors.is_power_of_two() {
                log::warn!(
                    "cannot update the tagger's cgroup map: {e} ({} failures)",
                    self.tagging.errors
                );
            }
        }
    }

    /// Makes the tagger's process map name each process a `process` rule
    /// matched (`matches`: pid, rule, rendered name, from
    /// [`config::process_matches`]) with its rule container, writing only
    /// what changed since the last call.
    pub fn sync_processes(&mut self, matches: &[(u32, usize, String)]) {
        let Some(t) = &self.tagging.tagger else {
            return;
        };
        let ids: HashMap<(usize, &str), u32> = self
            .state
            .containers()
            .filter_map(|c| match &c.origin {
                Origin::Rule {
                    key: RuleKey::Process { rule, name },
                    ..
                } => Some(((*rule, name.as_str()), c.decl.id)),
                _ => None,
            })
            .collect();
        let want: HashMap<u32, u64> = matches
            .iter()
            .filter_map(|(pid, rule, name)| {
                let id = ids.get(&(*rule, name.as_str()))?;
                Some((*pid, abi::tag(*id, abi::NO_REQUEST)))
            })
            .collect();
        if want == self.tagging.processes {
            return;
        }
        match t.update_processes(&self.tagging.processes, &want) {
            Ok(()) => self.tagging.processes = want,
            Err(e) => {
                self.tagging.errors += 1;
                if self.tagging.errors.is_power_of_two() {
                    log::warn!(
                        "cannot update the tagger's process map: {e} ({} failures)",
                        self.tagging.errors
                    );
                }
            }
        }
    }

    /// Ends the thread bindings of a closed client (`Some`) and of requests
    /// that ended.
    pub fn prune_bindings(&mut self, closed: Option<crate::state::ClientId>) {
        let Some(t) = &self.tagging.tagger else {
            return;
        };
        let state = &self.state;
        let mut failed = self.tagging.bindings.prune(t, closed, |r| state.holds_request(r));
        failed += self
            .tagging
            .pages
            .prune(t, closed, |c| state.containers().any(|x| x.decl.id == c));
        if failed > 0 {
            self.tagging.errors += 1;
            log::warn!("cannot remove {failed} thread bindings from the tagger's map; retried later");
        }
    }

    /// Queues the messages of a state change.
    pub fn emit(&mut self, msgs: Out) {
        let containers_changed = msgs.iter().any(|m| {
            matches!(
                m,
                AgentMessage::DeclareContainer(_) | AgentMessage::RetireContainer { .. }
            )
        });
        if containers_changed {
            self.sync_tags();
        }
        if containers_changed || msgs.iter().any(|m| matches!(m, AgentMessage::EndRequest { .. })) {
            self.prune_bindings(None);
        }
        for m in msgs {
            match encode(&m) {
                Ok(b) => self.outbox.push_event(b),
                Err(e) => log::error!("cannot encode {m:?}: {e}"),
            }
        }
    }
}

/// Whether a container comes from a `process` rule: its tasks are tagged
/// by process (the cgroup it carries is the first match's, for context
/// only, and may hold other processes).
fn is_process_rule(c: &Container) -> bool {
    matches!(
        c.origin,
        Origin::Rule {
            key: RuleKey::Process { .. },
            ..
        }
    )
}

/// State shared by the agent's threads.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    link_cv: Condvar,
    stop_cv: Condvar,
    sync_cv: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Fresh state with an outbox of `buffer_bytes`.
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::new(),
                outbox: Outbox::new(buffer_bytes),
                sync_wanted: 0,
                synced: 0,
                tagging: Tagging::default(),
            }),
            link_cv: Condvar::new(),
            stop_cv: Condvar::new(),
            sync_cv: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// Locks the state (a poisoned lock is taken over: every change under
    /// it is applied whole or not at all before anything can panic).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the agent is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every thread to stop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _g = self.lock();
        self.link_cv.notify_all();
        self.stop_cv.notify_all();
        self.sync_cv.notify_all();
    }

    /// Wakes the link thread (something was queued).
    pub fn wake_link(&self) {
        self.link_cv.notify_all();
    }

    /// Waits until the VMM has applied everything queued before this call
    /// (a `sync` the link thread sends once the outbox is written, or
    /// after the replay of the next connection), at most `timeout`. False
    /// if it did not answer in time or the agent is stopping.
    pub fn confirm<'a>(
        &self,
        mut g: MutexGuard<'a, Inner>,
        timeout: Duration,
    ) -> (MutexGuard<'a, Inner>, bool) {
        g.sync_wanted += 1;
        let seq = g.sync_wanted;
        self.link_cv.notify_all();
        let deadline = Instant::now() + timeout;
        while g.synced < seq && !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                return (g, false);
            }
            g = self
                .sync_cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let ok = g.synced >= seq;
        (g, ok)
    }

    /// The VMM answered `synced` up to `seq`.
    pub fn synced(&self, g: &mut Inner, seq: u64) {
        if seq > g.synced {
            g.synced = seq;
            self.sync_cv.notify_all();
        }
    }

    /// The link thread waits for frames.
    pub fn wait_link<'a>(&self, g: MutexGuard<'a, Inner>, d: Duration) -> MutexGuard<'a, Inner> {
        self.link_cv
            .wait_timeout(g, d)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// Sleeps `d`, or less if the agent stops.
    pub fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .stop_cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// Everything the agent is told at start.
#[derive(Clone, Debug)]
pub struct Options {
    /// The VMM.
    pub connect: Endpoint,
    /// The local interface's socket (none: no local interface).
    pub listen: Option<PathBuf>,
    /// Container rules.
    pub config: Config,
    /// Report interval.
    pub interval: Duration,
    /// Outgoing buffer bound, bytes.
    pub buffer_bytes: usize,
    /// Usually `/proc`.
    pub proc_root: PathBuf,
    /// The cgroup v2 root (none: no cgroups).
    pub cgroup_root: Option<PathBuf>,
    /// Whether threads are listed.
    pub list_threads: bool,
    /// Whether the eBPF slot tagger runs.
    pub tagging: TaggingMode,
    /// Where it is pinned (none: not pinned).
    pub bpf_pin_dir: Option<PathBuf>,
}

/// `--tagging`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TaggingMode {
    /// Run it if the kernel allows; warn and go on without it otherwise.
    #[default]
    Auto,
    /// Run it or refuse to start.
    On,
    /// Never load it.
    Off,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect: Endpoint::default(),
            listen: Some(PathBuf::from(local::DEFAULT_SOCKET)),
            config: Config::default(),
            interval: Duration::from_secs(1),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: crate::cgroup::host_cgroup2_mount(),
            list_threads: true,
            tagging: TaggingMode::Off,
            bpf_pin_dir: None,
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The local socket could not be bound.
    #[error("cannot listen on {path} (use --listen to choose another path)")]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// `--tagging on`, and the tagger could not start.
    #[error(
        "slot tagging was asked for (--tagging on) and cannot run; use --tagging auto to go on without it"
    )]
    Tagging(#[source] tagger::TaggerError),
}

/// This guest's `hello`.
pub fn hello() -> Hello {
    // SAFETY: an all-zero utsname is a valid value of a plain C struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the call.
    let ok = unsafe { libc::uname(&mut u) } == 0;
    let field = |f: &[libc::c_char]| -> String {
        if !ok {
            return String::new();
        }
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c.to_ne_bytes()[0])
            .collect();
        sanitize_text(&bytes, MAX_TEXT)
    };
    let mut buf = Vec::new();
    let boot_id = match read_file(std::path::Path::new("/proc/sys/kernel/random/boot_id"), &mut buf) {
        Ok(()) => sanitize_text(buf.trim_ascii(), MAX_TEXT),
        Err(_) => String::new(),
    };
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: field(&u.release),
        boot_id,
        hostname: field(&u.nodename),
    }
}

/// One interval: snapshot, rule containers, report.
pub fn tick(shared: &Shared, collector: &mut Collector, config: &Config) {
    let snap = collector.snapshot();
    if snap.proc_stats.vanished + snap.proc_stats.unreadable > 0 {
        log::debug!(
            "{} processes vanished and {} were unreadable during the scan",
            snap.proc_stats.vanished,
            snap.proc_stats.unreadable
        );
    }
    let desired = config::desired(config, &snap.cgroups, &snap.processes);
    let drops = {
        let mut g = shared.lock();
        let mut out = Out::new();
        g.state
            .sync_rules(&desired, config.retire_after_intervals, &mut out);
        g.emit(out);
        if g.tagging.tagger.is_some() {
            g.sync_processes(&config::process_matches(config, &snap.processes));
            crate::rebind::prune_exited(&mut g);
            // The two clocks drift apart by a few ppm: a fresh pair each
            // interval keeps the placement of logged switches within µs.
            if let Ok(f) = encode(&crate::tagger::Tagger::clock_sync()) {
                g.outbox.push_event(f);
            }
        }
        g.outbox.drops
    };
    let report = collector.report(snap, drops);
    match encode_report(report, MAX_FRAME) {
        Ok(frame) => shared.lock().outbox.push_report(frame),
        Err(e) => log::warn!("cannot encode a context report: {e}"),
    }
    shared.wake_link();
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    listen: Option<PathBuf>,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, AgentError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(AgentError::Thread)
}

impl Agent {
    /// Binds the local socket and starts the threads.
    pub fn start(opts: Options) -> Result<Self, AgentError> {
        let shared = Arc::new(Shared::new(opts.buffer_bytes));
        let tagger = match opts.tagging {
            TaggingMode::Off => None,
            mode => match Tagger::start(opts.bpf_pin_dir.as_deref()) {
                Ok(t) => {
                    log::info!(
                        "slot tagging: {} slots in {} page(s){}{}",
                        t.nr_slots(),
                        t.registration().pages.len(),
                        if t.blk_hooks() {
                            ", virtio-blk dispatch hooked"
                        } else {
                            ""
                        },
                        if t.reused() {
                            ", reusing the pinned tagger"
                        } else {
                            ""
                        }
                    );
                    Some(t)
                }
                Err(e) if mode == TaggingMode::On => return Err(AgentError::Tagging(e)),
                Err(e) => {
                    log::warn!("slot tagging is off: {e}");
                    None
                }
            },
        };
        {
            let mut g = shared.lock();
            g.tagging.tagger = tagger;
            g.tagging.cgroup_root = opts.cgroup_root.clone();
        }
        let listener = match &opts.listen {
            Some(p) => Some(local::bind(p).map_err(|e| AgentError::Listen {
                path: p.clone(),
                source: e,
            })?),
            None => None,
        };
        let mut agent = Self {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            listen: opts.listen.clone(),
        };
        if let Some(l) = listener {
            let s = Arc::clone(&shared);
            agent
                .threads
                .push(spawn("agent-local", move || local::serve(l, s))?);
        }
        // The rule containers exist before the first connection, so that
        // the state the VMM holds from an earlier agent process is adopted
        // (not retired and declared anew).
        let ms = u32::try_from(opts.interval.as_millis()).unwrap_or(u32::MAX);
        let mut collector = Collector::new(&opts.proc_root, opts.cgroup_root.clone(), ms);
        collector.set_list_threads(opts.list_threads);
        let first = Instant::now();
        tick(&shared, &mut collector, &opts.config);
        let s = Arc::clone(&shared);
        let (ep, h) = (opts.connect.clone(), hello());
        agent
            .threads
            .push(spawn("agent-link", move || link::run(s, ep, h))?);
        let s = Arc::clone(&shared);
        agent.threads.push(spawn("agent-collect", move || {
            s.sleep(opts.interval.saturating_sub(first.elapsed()));
            collect_loop(&s, &opts, collector);
        })?);
        Ok(agent)
    }

    /// The shared state (for tests and embedding).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops every thread and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.request_stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = self.listen.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn collect_loop(shared: &Shared, opts: &Options, mut collector: Collector) {
    while !shared.stopping() {
        let t0 = Instant::now();
        tick(shared, &mut collector, &opts.config);
        shared.sleep(opts.interval.saturating_sub(t0.elapsed()));
    }
}
