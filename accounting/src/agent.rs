//! The agent protocol, version 3: what `resourceful-agent` (inside a Linux
//! guest, or on the host for tests) says to the VMM over a stream (a vsock
//! connection to port 1024, or a Unix socket).
//!
//! Both ends use this module, so the wire format is written once. It is
//! documented for other implementers in `docs/agent-protocol.md`.
//!
//! **Framing.** Each message is a 4-byte big-endian length `n`
//! (1..=[`MAX_FRAME`]) followed by `n` bytes of UTF-8 JSON: one object whose
//! `"type"` names the message. Unknown types and unknown fields are errors;
//! a peer that needs new fields negotiates a new [`PROTOCOL_VERSION`] in
//! `hello`.
//!
//! **Validation.** [`AgentMessage::validate`] checks every bound (names,
//! paths, list lengths, trace id form) so a receiver keeps nothing it has not
//! checked. A receiver closes the connection on the first bad frame: a
//! stream cannot be resynchronised once a length is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::abi;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;
/// The vsock port the VMM serves the agent on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Largest frame body, in bytes (a context report of ~4,000 processes).
pub const MAX_FRAME: usize = 1 << 20;
/// Longest free-form string (versions, kernel, boot id, comm, attribute
/// values), in bytes.
pub const MAX_TEXT: usize = 256;
/// Longest cgroup path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Most attributes on one request.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Most processes in one context report.
pub const MAX_PROCESSES: usize = 8192;
/// Most threads listed per process (the rest are summed into the process).
pub const MAX_THREADS: usize = 256;
/// Most cgroups in one context report.
pub const MAX_CGROUPS: usize = 4096;

/// A message from the agent to the VMM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// First message on every connection.
    Hello(Hello),
    /// A container, in the same id space as the tag ABI's containers.
    DeclareContainer(DeclareContainer),
    /// The container is gone; its live requests end.
    RetireContainer {
        /// Its id.
        id: u32,
    },
    /// A request begins.
    BeginRequest(BeginRequest),
    /// A request ends.
    EndRequest {
        /// Its id.
        id: u32,
    },
    /// Network traffic of a 5-tuple belongs to a principal.
    BindFlow(BindFlow),
    /// The binding of a 5-tuple is dropped.
    UnbindFlow {
        /// The flow, as it was bound.
        flow: Flow,
    },
    /// The guest's POSIX-level view, sent periodically.
    Context(ContextReport),
    /// The guest's tag slots are in these pages (Linux: the agent's eBPF
    /// slot map); replaces any earlier `register_slots`.
    RegisterSlots(RegisterSlots),
    /// The guest's `CLOCK_MONOTONIC` and its TSC, read together: the BPF
    /// program stamps the slots' switch logs with the first, the VMM places
    /// them through this pair (docs/tag-abi.md, "The switch log"). Sent
    /// after `register_slots` and again every context interval.
    ClockSync {
        /// `CLOCK_MONOTONIC`, ns.
        monotonic_ns: u64,
        /// The TSC (`rdtsc`) at the same moment.
        tsc: u64,
    },
    /// Forget the slots of `register_slots`: later exits are charged to
    /// `unattributed` (unless the accounting device has a region). A
    /// struct variant without fields, not a unit variant: serde ignores
    /// unknown fields beside the tag of a unit variant, and the protocol
    /// refuses them everywhere.
    UnregisterSlots {},
    /// Asks for `synced` with the same `seq` once every earlier frame is
    /// applied: a refusal of any of them arrives before it.
    Sync {
        /// Chosen by the agent.
        seq: u64,
    },
}

/// Bytes in one slot page: [`SLOTS_PER_PAGE`] slots of 64 bytes.
pub const SLOT_PAGE_SIZE: u64 = 4096;
/// Slots in one page.
pub const SLOTS_PER_PAGE: u32 = 64;
/// Most pages in one `register_slots`: [`abi::MAX_SLOTS`] slots.
pub const MAX_SLOT_PAGES: usize = (abi::MAX_SLOTS as usize).div_ceil(SLOTS_PER_PAGE as usize);

/// `register_slots`: where each vCPU's tag slot is, as guest-physical pages
/// (a Linux guest's slots live in a kernel array whose pages are not
/// contiguous) and the guest's CPU numbering (slot `k` is in page
/// `k / 64` at byte `64 · (k % 64)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSlots {
    /// Guest-physical addresses of the slot pages, each 4 KiB-aligned:
    /// 1..=[`MAX_SLOT_PAGES`] of them, no two the same.
    pub pages: Vec<u64>,
    /// Which slot is each CPU's, by the CPU's APIC id (which is its vCPU
    /// index in Resourceful): no APIC id or slot twice, every slot inside
    /// the pages.
    pub cpus: Vec<SlotCpu>,
}

/// One CPU of [`RegisterSlots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotCpu {
    /// The CPU's APIC id (`/proc/cpuinfo`'s `apicid`).
    pub apic_id: u32,
    /// Its slot: the guest's CPU number, for an array indexed by it.
    pub slot: u32,
}

/// `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// The agent's own version.
    pub agent_version: String,
    /// The guest kernel release (`uname -r`).
    pub kernel: String,
    /// `/proc/sys/kernel/random/boot_id`: tells a restarted agent from a
    /// rebooted guest.
    pub boot_id: String,
    /// The guest's hostname.
    #[serde(default)]
    pub hostname: String,
}

/// `declare_container`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareContainer {
    /// Non-zero id, shared with the tag ABI.
    pub id: u32,
    /// 1..=32 bytes of `[A-Za-z0-9._:-]`, as in the tag ABI.
    pub name: String,
    /// Parent container id, absent for top-level.
    #[serde(default)]
    pub parent: Option<u32>,
    /// The cgroup v2 path (from the cgroup root, starting with `/`) it
    /// stands for, if any: joins the agent's per-cgroup context to it.
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// `begin_request`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginRequest {
    /// Non-zero request id, shared with the tag ABI.
    pub id: u32,
    /// Its container's id.
    pub container: u32,
    /// The application's own 64-bit id for it.
    #[serde(default)]
    pub external_id: u64,
    /// W3C trace-context trace id: 32 lowercase hex digits, not all zero.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A 5-tuple as the guest sends it (guest address first).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Transport protocol.
    pub proto: FlowProto,
    /// Guest-side `ip:port` (`[v6]:port` for IPv6).
    pub local: std::net::SocketAddr,
    /// Peer `ip:port`.
    pub remote: std::net::SocketAddr,
}

/// `bind_flow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindFlow {
    /// The flow.
    pub flow: Flow,
    /// Container charged for its frames.
    pub container: u32,
    /// Request charged as well, if any.
    #[serde(default)]
    pub request: Option<u32>,
}

/// CPU, switches and I/O of a thread or process, cumulative since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUsage {
    /// User CPU, ns.
    pub user_ns: u64,
    /// System CPU, ns.
    pub system_ns: u64,
    /// Voluntary context switches.
    pub voluntary_switches: u64,
    /// Involuntary context switches.
    pub involuntary_switches: u64,
}

/// One thread of a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadInfo {
    /// Thread id.
    pub tid: u32,
    /// Its `comm`.
    pub comm: String,
    /// Its usage.
    #[serde(flatten)]
    pub usage: TaskUsage,
}

/// One process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent's pid.
    pub ppid: u32,
    /// Its `comm`.
    pub comm: String,
    /// Its cgroup v2 path (`/` for the root).
    pub cgroup: String,
    /// Whole-process usage (all threads, live and exited).
    #[serde(flatten)]
    pub usage: TaskUsage,
    /// Bytes read from storage (`/proc/PID/io` `read_bytes`).
    pub read_bytes: u64,
    /// Bytes written to storage (`write_bytes`).
    pub write_bytes: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Threads, at most [`MAX_THREADS`].
    #[serde(default)]
    pub threads: Vec<ThreadInfo>,
    /// Threads the process had beyond those listed.
    #[serde(default)]
    pub threads_omitted: u32,
}

/// Pressure stall information of one resource (`*.pressure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pressure {
    /// `some avg10`, percent.
    pub some_avg10: f64,
    /// `some total`, µs.
    pub some_total_us: u64,
    /// `full avg10`, percent.
    pub full_avg10: f64,
    /// `full total`, µs.
    pub full_total_us: u64,
}

/// One cgroup v2 directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupInfo {
    /// Path from the cgroup root, starting with `/`.
    pub path: String,
    /// `cpu.stat usage_usec`.
    pub cpu_usage_us: u64,
    /// `cpu.stat user_usec`.
    pub cpu_user_us: u64,
    /// `cpu.stat system_usec`.
    pub cpu_system_us: u64,
    /// `cpu.stat nr_throttled`.
    #[serde(default)]
    pub cpu_nr_throttled: u64,
    /// `cpu.stat throttled_usec`.
    #[serde(default)]
    pub cpu_throttled_us: u64,
    /// `io.stat` rbytes summed over devices.
    #[serde(default)]
    pub io_read_bytes: u64,
    /// `io.stat` wbytes summed over devices.
    #[serde(default)]
    pub io_write_bytes: u64,
    /// `io.stat` rios summed over devices.
    #[serde(default)]
    pub io_read_ops: u64,
    /// `io.stat` wios summed over devices.
    #[serde(default)]
    pub io_write_ops: u64,
    /// `memory.current`, bytes (absent for the root cgroup).
    #[serde(default)]
    pub memory_current: Option<u64>,
    /// `cpu.pressure`.
    #[serde(default)]
    pub cpu_pressure: Option<Pressure>,
    /// `io.pressure`.
    #[serde(default)]
    pub io_pressure: Option<Pressure>,
    /// `memory.pressure`.
    #[serde(default)]
    pub memory_pressure: Option<Pressure>,
}

/// What the agent could not deliver while the VMM was unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDrops {
    /// Messages dropped because the outgoing buffer was full.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// Times the agent reconnected.
    pub reconnects: u64,
}

/// `context`: a periodic report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextReport {
    /// Increments by one per report from one agent process.
    pub seq: u64,
    /// Guest `CLOCK_MONOTONIC` when the snapshot was taken, ns.
    pub taken_ns: u64,
    /// Report interval, ms.
    pub interval_ms: u32,
    /// Processes (at most [`MAX_PROCESSES`]).
    pub processes: Vec<ProcessInfo>,
    /// Processes that existed beyond those listed.
    #[serde(default)]
    pub processes_omitted: u32,
    /// Cgroups (at most [`MAX_CGROUPS`]).
    pub cgroups: Vec<CgroupInfo>,
    /// Cgroups that existed beyond those listed.
    #[serde(default)]
    pub cgroups_omitted: u32,
    /// Delivery losses so far.
    #[serde(default)]
    pub drops: AgentDrops,
    /// The agent's own CPU so far (user + system), ns.
    #[serde(default)]
    pub agent_cpu_ns: u64,
    /// The agent's own RSS, bytes.
    #[serde(default)]
    pub agent_rss_bytes: u64,
}

/// What the VMM held for agents when a `hello` came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Previous {
    /// No agent state: the first agent of this VM (or all it declared has
    /// been closed).
    None,
    /// State declared by an agent of the same `boot_id`: it is listed in
    /// the `held` frames that follow, for the agent to adopt or close.
    SameBoot,
    /// State declared by an agent of another `boot_id`: the VMM retired it
    /// (its requests ended, its flows unbound) before answering.
    OtherBoot,
}

/// A container the VMM holds for agents, as listed in `held`: the fields
/// of its `declare_container`.
pub type HeldContainer = DeclareContainer;

/// A live request the VMM holds for agents, as listed in `held`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldRequest {
    /// Its id.
    pub id: u32,
    /// Its container's id.
    pub container: u32,
}

/// One `held` frame: part of what agents declared that is still live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// Live agent-declared containers.
    #[serde(default)]
    pub containers: Vec<HeldContainer>,
    /// Live agent-begun requests.
    #[serde(default)]
    pub requests: Vec<HeldRequest>,
    /// Flow bindings.
    #[serde(default)]
    pub flows: Vec<BindFlow>,
    /// The last `held` frame of this welcome.
    pub last: bool,
}

impl Held {
    /// Entries in the frame.
    pub fn len(&self) -> usize {
        self.containers.len() + self.requests.len() + self.flows.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most entries in one `held` frame (a full container entry is at most
/// ~4.2 KiB, so a frame stays under [`MAX_FRAME`]).
pub const HELD_PER_FRAME: usize = 200;

/// A message from the VMM to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmmMessage {
    /// Answer to a valid `hello`; `held` frames follow, the last with
    /// `last: true`.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the VMM.
        protocol: u32,
        /// The tenant the VM belongs to.
        tenant: String,
        /// What the VMM held for agents when the `hello` came.
        previous: Previous,
        /// Above every container and request id the VM has used (0 once
        /// `u32::MAX` was used): an agent allocating from here collides
        /// with nothing live or retained.
        next_id: u32,
    },
    /// Part of the state held for agents (see [`Previous::SameBoot`]).
    Held(Held),
    /// A well-formed message the books refused; the connection stays open.
    Refused {
        /// The refused message's `type`.
        message: String,
        /// Its container or request id (absent for flows).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        /// Its flow, for `bind_flow`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<Flow>,
        /// Why, as the guest-error counter names it (`ring_duplicate_name`).
        reason: String,
    },
    /// A `register_slots` is in force: these vCPUs' slots are read from
    /// now on.
    SlotsRegistered {
        /// The vCPUs (by index, which is the APIC id) that have a slot.
        vcpus: Vec<u32>,
    },
    /// Every frame before the `sync` of that `seq` has been applied.
    Synced {
        /// The `sync`'s `seq`.
        seq: u64,
    },
    /// Sent before the VMM closes the connection because of a bad message.
    Error {
        /// What was wrong.
        reason: String,
    },
}

/// Why a frame or message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The length prefix was 0 or above [`MAX_FRAME`].
    #[error("frame length {0} outside 1..={MAX_FRAME}")]
    FrameLength(u64),
    /// The body was not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message broke a bound or rule.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The first message was not `hello`, or a second `hello` came.
    #[error("hello must be the first message, and only the first")]
    Sequence,
    /// The agent speaks another version.
    #[error("agent protocol {0} is not supported: this VMM speaks protocol {PROTOCOL_VERSION}; run a resourceful-agent of the same release")]
    Version(u32),
}

impl RegisterSlots {
    /// The bounds that need no knowledge of the VM (the VMM checks the
    /// pages against guest RAM and the APIC ids against its vCPUs). Costs
    /// no allocation: at most [`MAX_SLOT_PAGES`] pages and
    /// [`abi::MAX_SLOTS`] CPUs are looked at, slots in a bit set.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |m: String| Err(ProtocolError::Invalid(m));
        if self.pages.is_empty() || self.pages.len() > MAX_SLOT_PAGES {
            return bad(format!("register_slots needs 1..={MAX_SLOT_PAGES} pages"));
        }
        if let Some(p) = self.pages.iter().find(|p| !p.is_multiple_of(SLOT_PAGE_SIZE)) {
            return bad(format!("slot page {p:#x} is not 4 KiB-aligned"));
        }
        if (1..self.pages.len()).any(|i| self.pages[..i].contains(&self.pages[i])) {
            return bad("a slot page is listed twice".into());
        }
        if self.cpus.is_empty() || self.cpus.len() > abi::MAX_SLOTS as usize {
            return bad(format!("register_slots needs 1..={} cpus", abi::MAX_SLOTS));
        }
        let slots = self.slots();
        if let Some(c) = self.cpus.iter().find(|c| c.slot >= slots) {
            return bad(format!(
                "slot {} is outside the {slots} slots of the pages",
                c.slot
            ));
        }
        // Every slot is below MAX_SLOTS (1024) now: one bit each.
        let mut used = [0u64; abi::MAX_SLOTS as usize / 64];
        for c in &self.cpus {
            let (word, bit) = ((c.slot / 64) as usize, 1u64 << (c.slot % 64));
            if used[word] & bit != 0 {
                return bad(format!("slot {} is listed twice", c.slot));
            }
            used[word] |= bit;
        }
        // APIC ids are arbitrary u32s: compare pairwise, at most
        // 1024 · 1023 / 2 comparisons of one word each.
        if (1..self.cpus.len()).any(|i| self.cpus[..i].iter().any(|c| c.apic_id == self.cpus[i].apic_id)) {
            return bad("an APIC id is listed twice".into());
        }
        Ok(())
    }

    /// How many slots the pages hold (64 per page).
    pub fn slots(&self) -> u32 {
        u32::try_from(self.pages.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(SLOTS_PER_PAGE)
    }

    /// Where vCPU `apic_id`'s slot is: (page index, byte offset in it).
    pub fn slot_of(&self, apic_id: u32) -> Option<(usize, u64)> {
        let c = self.cpus.iter().find(|c| c.apic_id == apic_id)?;
        Some(slot_position(c.slot))
    }
}

/// Where slot `slot` is: (page index, byte offset in the page).
pub fn slot_position(slot: u32) -> (usize, u64) {
    (
        (slot / SLOTS_PER_PAGE) as usize,
        u64::from(slot % SLOTS_PER_PAGE) * 64,
    )
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), ProtocolError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ProtocolError::Invalid(format!(
            "{what} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_cgroup(what: &str, s: &str) -> Result<(), ProtocolError> {
    check_text(what, s, MAX_PATH)?;
    if !s.starts_with('/') || s.split('/').any(|c| c == "..") {
        return Err(ProtocolError::Invalid(format!(
            "{what} must be an absolute cgroup path without '..'"
        )));
    }
    Ok(())
}

fn check_id(what: &str, id: u32) -> Result<(), ProtocolError> {
    if id == 0 {
        return Err(ProtocolError::Invalid(format!("{what} must be non-zero")));
    }
    Ok(())
}

/// Whether `s` is a valid W3C trace id: 32 lowercase hex digits, not all zero.
pub fn valid_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// The 16 bytes of a trace id already checked by [`valid_trace_id`].
pub fn trace_id_bytes(s: &str) -> Option<[u8; 16]> {
    if !valid_trace_id(s) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl AgentMessage {
    /// Checks every bound and rule of the message.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Self::Hello(h) => {
                check_text("agent_version", &h.agent_version, MAX_TEXT)?;
                check_text("kernel", &h.kernel, MAX_TEXT)?;
                check_text("boot_id", &h.boot_id, MAX_TEXT)?;
                check_text("hostname", &h.hostname, MAX_TEXT)
            }
            Self::DeclareContainer(d) => {
                check_id("container id", d.id)?;
                if !abi::valid_name(d.name.as_bytes()) {
                    return Err(ProtocolError::Invalid(
                        "container name must be 1..=32 bytes of [A-Za-z0-9._:-]".into(),
                    ));
                }
                if let Some(p) = d.parent {
                    check_id("parent", p)?;
                }
                match &d.cgroup {
                    Some(c) => check_cgroup("cgroup", c),
                    None => Ok(()),
                }
            }
            Self::RegisterSlots(r) => r.validate(),
            Self::UnregisterSlots {} | Self::ClockSync { .. } => Ok(()),
            Self::RetireContainer { id } => check_id("container id", *id),
            Self::EndRequest { id } => check_id("request id", *id),
            Self::BeginRequest(b) => {
                check_id("request id", b.id)?;
                check_id("container", b.container)?;
                if let Some(t) = &b.trace_id {
                    if !valid_trace_id(t) {
                        return Err(ProtocolError::Invalid(
                            "trace_id must be 32 lowercase hex digits, not all zero".into(),
                        ));
                    }
                }
                if b.attributes.len() > MAX_ATTRIBUTES {
                    return Err(ProtocolError::Invalid(format!(
                        "at most {MAX_ATTRIBUTES} attributes per request"
                    )));
                }
                for (k, v) in &b.attributes {
                    if k.is_empty() {
                        return Err(ProtocolError::Invalid("attribute keys must not be empty".into()));
                    }
                    check_text("attribute key", k, MAX_ATTRIBUTE_KEY)?;
                    check_text("attribute value", v, MAX_TEXT)?;
                }
                Ok(())
            }
            Self::BindFlow(b) => {
                check_id("container", b.container)?;
                if let Some(r) = b.request {
                    check_id("request", r)?;
                }
                Ok(())
            }
            Self::UnbindFlow { .. } | Self::Sync { .. } => Ok(()),
            Self::Context(c) => {
                if c.processes.len() > MAX_PROCESSES {
                    return Err(ProtocolError::Invalid(format!(
                        "at most {MAX_PROCESSES} processes per report"
                    )));
                }
                if c.cgroups.len() > MAX_CGROUPS {
                    return Err(ProtocolError::Invalid(format!(
                        "at most {MAX_CGROUPS} cgroups per report"
                    )));
                }
                for p in &c.processes {
                    check_text("comm", &p.comm, MAX_TEXT)?;
                    check_cgroup("process cgroup", &p.cgroup)?;
                    if p.threads.len() > MAX_THREADS {
                        return Err(ProtocolError::Invalid(format!(
                            "at most {MAX_THREADS} threads per process"
                        )));
                    }
                    for t in &p.threads {
                        check_text("thread comm", &t.comm, MAX_TEXT)?;
                    }
                }
                for g in &c.cgroups {
                    check_cgroup("cgroup path", &g.path)?;
                }
                Ok(())
            }
        }
    }
}

/// Encodes `msg` as one frame (length prefix and JSON body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, msg).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let n = out.len() - 4;
    if n > MAX_FRAME {
        return Err(ProtocolError::FrameLength(n as u64));
    }
    let len = u32::try_from(n).map_err(|_| ProtocolError::FrameLength(n as u64))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Splits a byte stream into frames, holding at most one frame's bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held that do not yet make a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes read from the stream. Call [`Self::next_frame`] until it
    /// returns `Ok(None)` before pushing more, so the buffer stays bounded.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if one is buffered. An error means the
    /// stream cannot be trusted any more: close it.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let Some(head) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let n = u32::from_be_bytes(*head) as usize;
        if n == 0 || n > MAX_FRAME {
            return Err(ProtocolError::FrameLength(n as u64));
        }
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let body = self.buf[4..4 + n].to_vec();
        self.buf.drain(..4 + n);
        Ok(Some(body))
    }
}

/// Parses and validates one agent frame body.
pub fn decode_agent(body: &[u8]) -> Result<AgentMessage, ProtocolError> {
    let msg: AgentMessage =
        serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    msg.validate()?;
    Ok(msg)
}

/// Parses one VMM frame body.
pub fn decode_vmm(body: &[u8]) -> Result<VmmMessage, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: &AgentMessage) {
        let bytes = encode(m).unwrap();
        let mut d = FrameDecoder::new();
        // Byte by byte: frames may arrive split anywhere.
        let mut got = None;
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            if let Some(f) = d.next_frame().unwrap() {
                got = Some(decode_agent(&f).unwrap());
            }
        }
        assert_eq!(got.as_ref(), Some(m));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn every_message_roundtrips() {
        let flow = Flow {
            proto: FlowProto::Tcp,
            local: "10.0.0.2:40000".parse().unwrap(),
            remote: "[2001:db8::1]:443".parse().unwrap(),
        };
        let msgs = [
            AgentMessage::Hello(Hello {
                protocol: 1,
                agent_version: "0.1.0".into(),
                kernel: "6.1.0".into(),
                boot_id: "b".into(),
                hostname: "g".into(),
            }),
            AgentMessage::DeclareContainer(DeclareContainer {
                id: 3,
                name: "web".into(),
                parent: Some(1),
                cgroup: Some("/system.slice/web.service".into()),
            }),
            AgentMessage::RetireContainer { id: 3 },
            AgentMessage::BeginRequest(BeginRequest {
                id: 9,
                container: 3,
                external_id: 42,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                attributes: [("route".to_string(), "/api".to_string())].into(),
            }),
            AgentMessage::EndRequest { id: 9 },
            AgentMessage::BindFlow(BindFlow {
                flow: flow.clone(),
                container: 3,
                request: Some(9),
            }),
            AgentMessage::UnbindFlow { flow },
            AgentMessage::Context(ContextReport {
                seq: 1,
                processes: vec![ProcessInfo {
                    pid: 1,
                    ppid: 0,
                    comm: "init".into(),
                    cgroup: "/".into(),
                    usage: TaskUsage::default(),
                    read_bytes: 0,
                    write_bytes: 0,
                    rss_bytes: 4096,
                    threads: vec![],
                    threads_omitted: 0,
                }],
                cgroups: vec![CgroupInfo {
                    path: "/".into(),
                    ..CgroupInfo::default()
                }],
                ..ContextReport::default()
            }),
        ];
        for m in &msgs {
            roundtrip(m);
        }
    }

    #[test]
    fn the_wire_form_is_the_documented_one() {
        let m = AgentMessage::EndRequest { id: 7 };
        let b = encode(&m).unwrap();
        assert_eq!(&b[..4], &[0, 0, 0, 29]);
        assert_eq!(&b[4..], br#"{"type":"end_request","id":7}"#);
    }

    #[test]
    fn bad_frames_and_messages_are_refused() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(ProtocolError::FrameLength(0)));
        let mut d = FrameDecoder::new();
        d.push(&(u32::try_from(MAX_FRAME).unwrap() + 1).to_be_bytes());
        assert!(matches!(d.next_frame(), Err(ProtocolError::FrameLength(_))));

        for bad in [
            &br#"{"type":"end_request","id":0}"#[..],
            br#"{"type":"end_request","id":1,"extra":2}"#,
            br#"{"type":"launch_missiles"}"#,
            br#"{"type":"declare_container","id":1,"name":"a b"}"#,
            br#"{"type":"declare_container","id":1,"name":"a","cgroup":"/x/../y"}"#,
            br#"{"type":"declare_container","id":1,"name":"a","cgroup":"rel"}"#,
            br#"{"type":"begin_request","id":1,"container":2,"trace_id":"00000000000000000000000000000000"}"#,
            br#"{"type":"begin_request","id":1,"container":2,"trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736"}"#,
            br#"{"type":"begin_request","id":1,"container":2,"attributes":{"":"x"}}"#,
            b"\xff\xfe",
            b"[]",
        ] {
            assert!(decode_agent(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn slots(pages: &[u64], cpus: &[(u32, u32)]) -> RegisterSlots {
        RegisterSlots {
            pages: pages.to_vec(),
            cpus: cpus
                .iter()
                .map(|&(apic_id, slot)| SlotCpu { apic_id, slot })
                .collect(),
        }
    }

    #[test]
    fn slot_messages_have_the_documented_wire_form() {
        let m = AgentMessage::RegisterSlots(slots(&[4096, 0x2000], &[(0, 0), (1, 65)]));
        let b = encode(&m).unwrap();
        assert_eq!(
            &b[4..],
            br#"{"type":"register_slots","pages":[4096,8192],"cpus":[{"apic_id":0,"slot":0},{"apic_id":1,"slot":65}]}"#
        );
        roundtrip(&m);
        let u = encode(&AgentMessage::UnregisterSlots {}).unwrap();
        assert_eq!(&u[4..], br#"{"type":"unregister_slots"}"#);
        roundtrip(&AgentMessage::UnregisterSlots {});
        let r = encode(&VmmMessage::SlotsRegistered { vcpus: vec![0, 1] }).unwrap();
        assert_eq!(&r[4..], br#"{"type":"slots_registered","vcpus":[0,1]}"#);
        assert_eq!(
            decode_vmm(&r[4..]).unwrap(),
            VmmMessage::SlotsRegistered { vcpus: vec![0, 1] }
        );
    }

    #[test]
    fn register_slots_validate_accepts_the_bounds() {
        assert_eq!(slots(&[0], &[(0, 0)]).validate(), Ok(()));
        // 16 pages, 1024 CPUs, slots reversed, APIC ids sparse.
        let pages: Vec<u64> = (0..16u64).map(|i| (i + 1) << 12).collect();
        let cpus: Vec<(u32, u32)> = (0..1024u32).map(|i| (i * 7, 1023 - i)).collect();
        let full = slots(&pages, &cpus);
        assert_eq!(full.validate(), Ok(()));
        assert_eq!(full.slots(), 1024);
        assert_eq!(full.slot_of(0), Some((15, 63 * 64)));
        assert_eq!(full.slot_of(7), Some((15, 62 * 64)));
        assert_eq!(full.slot_of(1), None);
        assert_eq!(slot_position(64), (1, 0));
    }

    #[test]
    fn register_slots_validate_refuses_each_broken_bound() {
        let pages17: Vec<u64> = (0..17u64).map(|i| i << 12).collect();
        let cpus1025: Vec<(u32, u32)> = (0..1025u32).map(|i| (i, i % 64)).collect();
        for (what, r) in [
            ("no pages", slots(&[], &[(0, 0)])),
            ("17 pages", slots(&pages17, &[(0, 0)])),
            ("unaligned page", slots(&[0x1008], &[(0, 0)])),
            ("page twice", slots(&[0x1000, 0x2000, 0x1000], &[(0, 0)])),
            ("no cpus", slots(&[0x1000], &[])),
            (
                "1025 cpus",
                slots(
                    &(0..17u64).map(|i| i << 12).take(16).collect::<Vec<_>>(),
                    &cpus1025,
                ),
            ),
            ("slot outside the pages", slots(&[0x1000], &[(0, 64)])),
            ("slot twice", slots(&[0x1000], &[(0, 3), (1, 3)])),
            ("apic id twice", slots(&[0x1000], &[(5, 0), (5, 1)])),
        ] {
            assert!(matches!(r.validate(), Err(ProtocolError::Invalid(_))), "{what}");
            // And a frame carrying it closes the connection.
            let body = serde_json::to_vec(&AgentMessage::RegisterSlots(r)).unwrap();
            assert!(decode_agent(&body).is_err(), "{what}");
        }
        assert!(decode_agent(
            br#"{"type":"register_slots","pages":[4096],"cpus":[{"apic_id":0,"slot":0,"x":1}]}"#
        )
        .is_err());
        assert!(decode_agent(br#"{"type":"unregister_slots","pages":[]}"#).is_err());
    }

    #[test]
    fn trace_ids_parse_to_bytes() {
        let b = trace_id_bytes("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(b[0], 0x4b);
        assert_eq!(b[15], 0x36);
        assert_eq!(trace_id_bytes("4bf9"), None);
    }
}
