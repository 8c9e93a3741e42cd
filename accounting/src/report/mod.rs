//! The report: everything the books say, summed, in a stable JSON shape
//! (`resourceful.report/v1`, documented in `docs/report.md`) and as a table.
//!
//! Sums are taken from the atomic ledgers without stopping writers; a report
//! taken while vCPUs run is a consistent-enough view, one taken after they
//! stopped is exact, and that is when [`Conservation`] must hold exactly:
//! for every resource, the sum over the tenant's containers equals the
//! tenant total counted independently per vCPU.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ledger::Accounting;
use crate::registry::{Limits, Registry, RegistryStats, RequestRow};
use crate::resource::{
    AgentCharge, BlockCharge, Charges, CpuCharge, ExitCharge, ExitReason, NetCharge, Provenance, RingCharge,
    VsockCharge,
};

mod stream;
mod table;

pub use stream::ReportWriter;

/// Schema identifier of the JSON report.
pub const SCHEMA: &str = "resourceful.report/v1";

/// Facts about the VM that only the VMM knows. Every field defaults, so
/// readers accept reports written before a field was added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmInfo {
    /// vCPUs.
    pub vcpus: usize,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The kernel image (path, or `built-in:NAME`).
    pub kernel: String,
    /// `linux` or `baremetal`.
    pub boot: String,
    /// How the VM ended: `guest_exit`, `reset`, `triple_fault`,
    /// `internal_error`, `unknown_exit`, `vcpu_error`, `signal`.
    pub end: String,
    /// A human-readable detail of the end, when it was not a clean one.
    pub end_detail: Option<String>,
    /// The status the guest asked for (`guest_exit`), else `None`.
    pub guest_status: Option<u32>,
    /// Wall-clock nanoseconds from first vCPU start to the last stop.
    pub wall_ns: u64,
    /// Whether exits were charged (false only for overhead measurements).
    pub accounting: bool,
    /// The VMM threads' seccomp filters (docs/sandbox.md): `on`, `off`
    /// (`--no-seccomp`, debugging only) or `log` (regenerating the lists);
    /// empty in reports written before the field existed.
    #[serde(default)]
    pub seccomp: String,
    /// How `guest_run_ns` was measured: `kvm_run_minus_halts` (time in
    /// `KVM_RUN` minus KVM's halt polling and waiting, from its binary
    /// statistics), `kvm_run_minus_ended_halts` (the same on a KVM without
    /// the `blocking` flag: a halt is charged until it ends),
    /// `kvm_run_halts_included` (no statistics: halted time counts as run
    /// time); empty with accounting off.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest_run_source: String,
    /// What the books' clock reads (`host_ns`, run time, request times):
    /// `tsc` (an invariant TSC, calibrated once) or `monotonic`
    /// (`CLOCK_MONOTONIC`); empty in reports of older versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub clock_source: String,
    /// Time the vCPUs were halted inside `KVM_RUN` (polling or waiting),
    /// left out of `guest_run_ns`, all vCPUs, ns.
    pub vcpu_halted_ns: u64,
    /// Time APs spent in `KVM_RUN` before the guest started them (INIT/SIPI),
    /// left out of `guest_run_ns`, all vCPUs, ns.
    pub vcpu_unstarted_ns: u64,
    /// Guest port or MMIO accesses that hit no device.
    pub unhandled_io: u64,
    /// Where those accesses went, by address (ascending; at most
    /// [`UNHANDLED_IO_SITES`] addresses, the first ones seen; the rest are
    /// counted in `unhandled_io` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhandled_io_sites: Vec<UnhandledIoSite>,
    /// Log lines of other crates (the rust-vmm crates) dropped by the
    /// VMM's per-call-site limiter: what a guest could make them print.
    #[serde(default)]
    pub log_lines_suppressed: u64,
    /// Bytes of guest RAM resident in the host when the VM ended (pages the
    /// guest or the loader touched), so the VMM's own memory can be told
    /// apart from the guest's.
    pub guest_resident_bytes: u64,
    /// Peak resident memory of the VMM process (`VmHWM`), guest RAM it
    /// touched included; minus `guest_resident_bytes` it is the VMM's own.
    pub vmm_peak_rss_bytes: u64,
    /// Where the vCPUs' tag slots are read from (`docs/tag-abi.md`, "Slots
    /// registered by the agent").
    pub slots: SlotsInfo,
    /// The guests' switch logs (`docs/tag-abi.md`, "The switch log"):
    /// how much run time they placed exactly; absent with accounting off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_log: Option<RunLogInfo>,
    /// Where `--metrics-addr` served the Prometheus exposition over TCP,
    /// `IP:PORT` as bound (port 0 resolved to the port picked); absent
    /// without the flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// What the OpenTelemetry exporter did (`--otlp-endpoint`,
    /// docs/opentelemetry.md); absent without the flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpInfo>,
    /// What the API server answered and refused (`--api-sock`,
    /// `--metrics-addr`); absent without either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiInfo>,
}

/// The API server's counters (`vm.api` in the report and in `GET /v1/vm`):
/// requests answered, those refused (4xx) or failed (5xx), by status, and
/// connections refused at the bound or ended in an error before an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiInfo {
    /// Requests answered, any status.
    pub requests: u64,
    /// Answers 400-499.
    pub client_errors: u64,
    /// Answers 500-599.
    pub server_errors: u64,
    /// Answers by status, for the statuses the server gives (400, 404, 405,
    /// 408, 413, 500) that it gave at least once.
    pub by_status: BTreeMap<String, u64>,
    /// Connections closed at once: the listener's bound was reached.
    pub refused_connections: u64,
    /// Connections that ended in an error before an answer: a malformed or
    /// oversized (431) request head, one that did not arrive within 10 s.
    pub bad_connections: u64,
}

/// The OTLP exporter's identity and counters (`vm.otlp` in the report and
/// in `GET /v1/vm`). Every span is exported, queued, or dropped for one
/// counted reason: `spans_exported + spans_queued + spans_dropped` is every
/// request that finished while the exporter ran (requests still live when
/// the VM ends are not spans).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OtlpInfo {
    /// Where traces are posted (the endpoint with `/v1/traces`).
    pub traces_url: String,
    /// Where metrics are posted (the endpoint with `/v1/metrics`).
    pub metrics_url: String,
    /// This VM's id, 16 hex digits drawn at start: `resourceful.vm.id` on
    /// every span and data point.
    pub vm_id: String,
    /// Unix time, ns, of the books' clock zero: a span starts at this plus
    /// the request's `begin_ns`.
    pub epoch_unix_ns: u64,
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans read and waiting to be sent.
    pub spans_queued: u64,
    /// Spans lost, all reasons (the two below).
    pub spans_dropped: u64,
    /// Requests evicted from retention before the exporter read them.
    pub spans_dropped_evicted: u64,
    /// Spans of batches given up on after every try failed.
    pub spans_dropped_failed: u64,
    /// Metric exports the collector accepted.
    pub metric_exports: u64,
    /// Data points in them.
    pub metric_points_exported: u64,
    /// Metric exports given up on after every try failed.
    pub metric_exports_dropped: u64,
    /// POSTs that failed (connection error, timeout, 429, 5xx or another
    /// refusal), each try counted.
    pub post_errors: u64,
    /// Tries after a failed one.
    pub retries: u64,
}

/// What the guests' switch logs did (`vm.run_log` in the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunLogInfo {
    /// vCPUs whose guest logged at least one principal switch.
    pub vcpus_logging: u64,
    /// Switches placed on the vCPUs' run clocks.
    pub switches: u64,
    /// Switches logged but not placed: overwritten before the VMM read them
    /// (more than three between two reads), a sequence that went back, or
    /// no TSC offset to place them with.
    pub lost: u64,
    /// Run time of logging vCPUs charged exactly as the log placed it, ns.
    pub exact_ns: u64,
    /// Run time of logging vCPUs charged in a stretch where something was
    /// lost (or halts exceeded the idle time), ns.
    pub sampled_ns: u64,
    /// The host TSC rate the books' clock was calibrated to, ticks per
    /// second (the guest's TSC runs at the same rate); 0 where the clock is
    /// not the TSC, and no switch can be placed.
    pub tsc_hz: u64,
}

/// Where the vCPUs' tag slots are read from, and what the agent's
/// `register_slots` did (`vm.slots` in the report and in `GET /v1/vm`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlotsInfo {
    /// `device` (a region registered through the accounting device, which
    /// wins), `agent` (pages registered by the guest agent) or `none`.
    pub source: String,
    /// The vCPUs whose slot is read from that source, ascending; the others'
    /// exits are charged to `unattributed`.
    pub vcpus: Vec<u32>,
    /// Pages of the agent's registration in force (0 if none), whether or
    /// not a device region overrides it.
    pub pages: usize,
    /// `register_slots` messages that installed a registration (an
    /// identical one sent again is not counted).
    pub registrations: u64,
    /// `register_slots` messages refused against the VM (pages outside RAM,
    /// unknown APIC ids).
    pub refusals: u64,
}

impl Default for SlotsInfo {
    fn default() -> Self {
        Self {
            source: "none".into(),
            vcpus: Vec::new(),
            pages: 0,
            registrations: 0,
            refusals: 0,
        }
    }
}

/// How many distinct addresses [`VmInfo::unhandled_io_sites`] lists.
pub const UNHANDLED_IO_SITES: usize = 32;

/// Accesses to one address that hit no device.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnhandledIoSite {
    /// `pio` (an I/O port) or `mmio`.
    pub space: String,
    /// The port or guest-physical address.
    pub addr: u64,
    /// Reads (they returned all-ones).
    pub reads: u64,
    /// Writes (they were dropped).
    pub writes: u64,
}

/// Charges in report form. The JSON is sparse: reasons without exits and
/// device groups (`block`, `interrupts`, `net`, `vsock`) that are all zero
/// are left out, and read back as zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargesReport {
    /// Exits by reason name, only reasons that had exits, in memory as in
    /// the JSON (an absent reason reads as 0: use [`ChargesReport::exits_of`]).
    #[serde(
        default,
        serialize_with = "exits_with_any",
        deserialize_with = "exits_nonzero"
    )]
    pub exits: BTreeMap<String, ExitCharge>,
    /// All exits.
    pub exits_total: ExitCharge,
    /// Guest run time, ns.
    pub guest_run_ns: u64,
    /// Run-time samples.
    pub run_samples: u64,
    /// Block device work.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub block: BlockCharge,
    /// Interrupts injected.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupts: u64,
    /// Network device work.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub net: NetCharge,
    /// virtio-vsock work.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vsock: VsockCharge,
    /// The agent channel's work.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub agent: AgentCharge,
    /// Ring drains off the exit path.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ring: RingCharge,
    /// Guest CPU limits' holds of vCPUs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu: CpuCharge,
}

/// Whether `v` is its type's zero.
pub fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Reads the map back without reasons that had no exits.
fn exits_nonzero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, ExitCharge>, D::Error> {
    let mut m = BTreeMap::<String, ExitCharge>::deserialize(d)?;
    m.retain(|_, e| !is_zero(e));
    Ok(m)
}

/// Serialises only the reasons that had exits.
fn exits_with_any<S: serde::Serializer>(m: &BTreeMap<String, ExitCharge>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().filter(|(_, e)| !is_zero(*e)))
}

impl From<&Charges> for ChargesReport {
    fn from(c: &Charges) -> Self {
        Self {
            exits: ExitReason::ALL
                .iter()
                .filter(|r| !is_zero(&c.exits[r.index()]))
                .map(|r| (r.name().to_string(), c.exits[r.index()]))
                .collect(),
            exits_total: c.exits_total(),
            guest_run_ns: c.guest_run_ns,
            run_samples: c.run_samples,
            block: c.block,
            interrupts: c.interrupts,
            net: c.net,
            vsock: c.vsock,
            agent: c.agent,
            ring: c.ring,
            cpu: c.cpu,
        }
    }
}

impl ChargesReport {
    /// Exits of one reason.
    pub fn exits_of(&self, reason: ExitReason) -> ExitCharge {
        self.exits.get(reason.name()).copied().unwrap_or_default()
    }
}

/// How each resource of a container was attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceReport {
    /// Exits and their host time.
    pub exits: Provenance,
    /// Guest run time.
    pub guest_run: Provenance,
    /// Device work (block requests, interrupts): exact, from the tag of the
    /// vCPU that notified the queue.
    #[serde(default = "exact")]
    pub devices: Provenance,
}

fn exact() -> Provenance {
    Provenance::Exact
}

/// Requests of one container, summarised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// Begun.
    pub begun: u64,
    /// Ended.
    pub ended: u64,
    /// Live now.
    pub live: u64,
    /// Finished and retained (listed in `requests`).
    pub retained: u64,
    /// Finished and evicted from retention.
    pub evicted: u64,
    /// Sum of the charges of all its requests, evicted ones included: the
    /// part of the container's charges done inside requests. (The API's
    /// container list leaves it out; `/v1/containers/{index}` has it.)
    #[serde(default)]
    pub charged: ChargesReport,
}

/// One container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Position in `containers` (0 is `unattributed`).
    pub index: usize,
    /// Guest id (0 for `unattributed`).
    pub id: u32,
    /// Name.
    pub name: String,
    /// Names from the top-level container down, joined with `/`.
    pub path: String,
    /// Index of the parent, if any.
    pub parent: Option<usize>,
    /// Whether the guest retired it.
    pub retired: bool,
    /// Provenance of each resource.
    pub provenance: ProvenanceReport,
    /// Everything charged to it (its requests' work included).
    pub charges: ChargesReport,
    /// Its requests.
    pub requests: RequestSummary,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestReport {
    /// Guest id.
    pub id: u32,
    /// Order of `begin` over the VM's life.
    pub seq: u64,
    /// Index of its container.
    pub container: usize,
    /// Its container's path.
    pub container_path: String,
    /// The guest's 64-bit identifier (0: none).
    pub external_id: u64,
    /// `live` or `finished`.
    pub state: String,
    /// Begin as applied by the VMM, ns since the books were opened.
    pub begin_ns: u64,
    /// End, same clock.
    pub end_ns: Option<u64>,
    /// Its charges.
    pub charges: ChargesReport,
    /// W3C trace id (32 lowercase hex digits), if the agent gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Attributes the agent gave, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl RequestReport {
    /// `row` in report form; `container_path` is its container's path.
    pub fn from_row(row: &RequestRow, container_path: &str) -> Self {
        let meta = row.meta.as_deref();
        RequestReport {
            id: row.guest_id,
            seq: row.seq,
            container: row.container,
            container_path: container_path.to_string(),
            external_id: row.external_id,
            state: if row.end_ns.is_some() { "finished" } else { "live" }.to_string(),
            begin_ns: row.begin_ns,
            end_ns: row.end_ns,
            charges: ChargesReport::from(&row.charges),
            trace_id: meta.and_then(|m| m.trace_id_hex()),
            attributes: meta
                .map(|m| m.attributes.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// One vCPU's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuReport {
    /// vCPU id.
    pub id: usize,
    /// Its exits and run time.
    pub charges: ChargesReport,
}

/// One resource's conservation check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConservationLine {
    /// Resource name (`exits.port_out.count`, `guest_run_ns`, …).
    pub resource: String,
    /// The tenant total, counted per vCPU.
    pub tenant_total: u64,
    /// The sum over the tenant's containers.
    pub containers_sum: u64,
}

/// Conservation of every resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conservation {
    /// Whether every line balances.
    pub holds: bool,
    /// One line per resource.
    pub lines: Vec<ConservationLine>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// The tenant.
    pub tenant: String,
    /// The VM.
    pub vm: VmInfo,
    /// Tenant totals (sum over every ledger writer: vCPUs, sampler, device
    /// thread), counted independently of the containers.
    pub totals: ChargesReport,
    /// Per vCPU.
    pub vcpus: Vec<VcpuReport>,
    /// Per container, `unattributed` first.
    pub containers: Vec<ContainerReport>,
    /// Live and retained finished requests, in begin order.
    pub requests: Vec<RequestReport>,
    /// Guest mistakes by kind (non-zero only).
    pub guest_errors: BTreeMap<String, u64>,
    /// Declarations applied.
    pub declarations: RegistryStatsReport,
    /// Limits in force.
    pub limits: LimitsReport,
    /// Conservation check.
    pub conservation: Conservation,
    /// The guest agent channel's counters (connections, frames, refusals
    /// by kind; `docs/agent-protocol.md`), non-zero only, as the VMM left
    /// them; absent when no agent ever connected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent: BTreeMap<String, u64>,
    /// Every counter each device keeps (malformed chains, drops, queue
    /// errors, …), devices in bus order; absent in reports written before
    /// it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceCounters>,
}

/// The counters of one device, by name (`docs/report.md`, "devices").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// `disk0`, `net0`, `vsock0`, `i8042`, `rtc`: virtio devices are
    /// numbered by kind in slot order.
    pub name: String,
    /// `virtio-blk`, `virtio-net`, `virtio-vsock`, `i8042`, `cmos-rtc`.
    pub kind: String,
    /// Counter name → value since the VM started. A virtio device's
    /// transport counters are prefixed `transport.`.
    pub counters: BTreeMap<String, u64>,
}

/// [`Limits`] in report form (tolerant of fields added later, unlike the
/// configuration struct).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsReport {
    /// Containers a VM may declare over its life.
    pub max_containers: u32,
    /// Requests that may be live at once.
    pub max_live_requests: u32,
    /// Finished requests retained.
    pub retained_requests: u32,
}

impl From<Limits> for LimitsReport {
    fn from(l: Limits) -> Self {
        Self {
            max_containers: l.max_containers,
            max_live_requests: l.max_live_requests,
            retained_requests: l.retained_requests,
        }
    }
}

/// [`RegistryStats`] in report form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatsReport {
    /// Containers declared.
    pub containers_declared: u64,
    /// Containers retired.
    pub containers_retired: u64,
    /// Requests begun.
    pub requests_begun: u64,
    /// Requests ended by the guest.
    pub requests_ended: u64,
    /// Requests ended by their container's retirement.
    pub requests_ended_by_retire: u64,
    /// Finished requests evicted from retention.
    pub requests_evicted: u64,
}

impl From<RegistryStats> for RegistryStatsReport {
    fn from(s: RegistryStats) -> Self {
        Self {
            containers_declared: s.containers_declared,
            containers_retired: s.containers_retired,
            requests_begun: s.requests_begun,
            requests_ended: s.requests_ended,
            requests_ended_by_retire: s.requests_ended_by_retire,
            requests_evicted: s.requests_evicted,
        }
    }
}

fn path_of(reg: &Registry, mut idx: usize) -> String {
    let cs = reg.containers();
    let mut parts = vec![cs[idx].name.as_str()];
    // Parents are always declared before children, so indices strictly
    // decrease and this terminates; the bound is belt and braces.
    for _ in 0..cs.len() {
        match cs[idx].parent {
            Some(p) => {
                parts.push(cs[p].name.as_str());
                idx = p;
            }
            None => break,
        }
    }
    parts.reverse();
    parts.join("/")
}

fn request_report(reg: &Registry, r: &RequestRow) -> RequestReport {
    let path = reg
        .containers()
        .get(r.container)
        .map(|c| &*c.path)
        .unwrap_or_default();
    RequestReport::from_row(r, path)
}

fn conservation(total: &Charges, sum: &Charges) -> Conservation {
    let mut lines = Vec::new();
    for r in ExitReason::ALL {
        let (t, s) = (total.exits[r.index()], sum.exits[r.index()]);
        lines.push(ConservationLine {
            resource: format!("exits.{}.count", r.name()),
            tenant_total: t.count,
            containers_sum: s.count,
        });
        lines.push(ConservationLine {
            resource: format!("exits.{}.host_ns", r.name()),
            tenant_total: t.host_ns,
            containers_sum: s.host_ns,
        });
    }
    lines.push(ConservationLine {
        resource: "guest_run_ns".into(),
        tenant_total: total.guest_run_ns,
        containers_sum: sum.guest_run_ns,
    });
    lines.push(ConservationLine {
        resource: "run_samples".into(),
        tenant_total: total.run_samples,
        containers_sum: sum.run_samples,
    });
    let (tb, sb) = (&total.block, &sum.block);
    for (name, t, s) in [
        ("block.reads", tb.reads, sb.reads),
        ("block.writes", tb.writes, sb.writes),
        ("block.flushes", tb.flushes, sb.flushes),
        ("block.other", tb.other, sb.other),
        ("block.errors", tb.errors, sb.errors),
        ("block.bytes_read", tb.bytes_read, sb.bytes_read),
        ("block.bytes_written", tb.bytes_written, sb.bytes_written),
        ("block.device_ns", tb.device_ns, sb.device_ns),
        ("block.latency_ns", tb.latency_ns, sb.latency_ns),
        ("block.throttle_events", tb.throttle_events, sb.throttle_events),
        ("block.throttled_ns", tb.throttled_ns, sb.throttled_ns),
        ("interrupts", total.interrupts, sum.interrupts),
        ("net.tx_frames", total.net.tx_frames, sum.net.tx_frames),
        ("net.tx_bytes", total.net.tx_bytes, sum.net.tx_bytes),
        ("net.rx_frames", total.net.rx_frames, sum.net.rx_frames),
        ("net.rx_bytes", total.net.rx_bytes, sum.net.rx_bytes),
        ("net.host_ns", total.net.host_ns, sum.net.host_ns),
        (
            "net.retransmitted_bytes",
            total.net.retransmitted_bytes,
            sum.net.retransmitted_bytes,
        ),
        (
            "net.spoofed_frames",
            total.net.spoofed_frames,
            sum.net.spoofed_frames,
        ),
        (
            "net.throttle_events",
            total.net.throttle_events,
            sum.net.throttle_events,
        ),
        ("net.throttled_ns", total.net.throttled_ns, sum.net.throttled_ns),
        (
            "net.rx_dropped_frames",
            total.net.rx_dropped_frames,
            sum.net.rx_dropped_frames,
        ),
        (
            "net.rx_dropped_bytes",
            total.net.rx_dropped_bytes,
            sum.net.rx_dropped_bytes,
        ),
        ("vsock.tx_packets", total.vsock.tx_packets, sum.vsock.tx_packets),
        ("vsock.tx_bytes", total.vsock.tx_bytes, sum.vsock.tx_bytes),
        ("vsock.rx_packets", total.vsock.rx_packets, sum.vsock.rx_packets),
        ("vsock.rx_bytes", total.vsock.rx_bytes, sum.vsock.rx_bytes),
        ("vsock.host_ns", total.vsock.host_ns, sum.vsock.host_ns),
        (
            "vsock.connections",
            total.vsock.connections,
            sum.vsock.connections,
        ),
        ("vsock.resets", total.vsock.resets, sum.vsock.resets),
        (
            "vsock.throttle_events",
            total.vsock.throttle_events,
            sum.vsock.throttle_events,
        ),
        (
            "vsock.throttled_ns",
            total.vsock.throttled_ns,
            sum.vsock.throttled_ns,
        ),
        ("agent.frames", total.agent.frames, sum.agent.frames),
        ("agent.host_ns", total.agent.host_ns, sum.agent.host_ns),
        ("ring.entries", total.ring.entries, sum.ring.entries),
        ("ring.host_ns", total.ring.host_ns, sum.ring.host_ns),
        (
            "cpu.throttle_events",
            total.cpu.throttle_events,
            sum.cpu.throttle_events,
        ),
        ("cpu.throttled_ns", total.cpu.throttled_ns, sum.cpu.throttled_ns),
    ] {
        lines.push(ConservationLine {
            resource: name.into(),
            tenant_total: t,
            containers_sum: s,
        });
    }
    Conservation {
        holds: lines.iter().all(|l| l.tenant_total == l.containers_sum),
        lines,
    }
}

impl Report {
    /// Sums the books into a report, in memory. For a large VM, write it
    /// with [`ReportWriter`] instead, which never holds it whole.
    pub fn build(acct: &Accounting, vm: VmInfo) -> Report {
        ReportWriter::new(acct, vm).into_report()
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain structs and maps with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The container with this path (e.g. `web/api`).
    pub fn container(&self, path: &str) -> Option<&ContainerReport> {
        self.containers.iter().find(|c| c.path == path)
    }

    /// A readable table: VM line, containers, the most expensive requests,
    /// guest errors, conservation.
    pub fn to_table(&self, max_requests: usize) -> String {
        let mut top: Vec<&RequestReport> = self.requests.iter().collect();
        // Stable: among equal costs, the earlier request first.
        top.sort_by_key(|r| std::cmp::Reverse(table::rank(&r.charges)));
        top.truncate(max_requests);
        let t = table::Table {
            tenant: &self.tenant,
            vm: &self.vm,
            totals: &self.totals,
            requests_begun: self.declarations.requests_begun,
            containers: &|f| self.containers.iter().for_each(f),
            top: &top,
            requests_listed: self.requests.len(),
            guest_errors: &self.guest_errors,
            agent: &self.agent,
            conservation: &self.conservation,
        };
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = table::write(&mut out, &t);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::abi::{tag, EntryKind, RingEntry};

    fn books() -> std::sync::Arc<Accounting> {
        let acct = Accounting::new("acme", 2, 1, Limits::default());
        for (id, parent, name) in [(1u32, 0u32, "web"), (2, 1, "api")] {
            let e = RingEntry::new(EntryKind::DeclareContainer, id, parent, 0, name.as_bytes());
            acct.apply(&e).unwrap();
        }
        acct.apply(&RingEntry {
            kind: EntryKind::BeginRequest as u16,
            id: 7,
            arg: 2,
            ..Default::default()
        })
        .unwrap();
        acct
    }

    #[test]
    fn report_sums_paths_requests_and_conservation() {
        let acct = books();
        let mut w0 = acct.writer(0);
        let mut w1 = acct.writer(1);
        let mut sampler = acct.writer(2);
        w0.charge_exit(Some(tag(2, 7)), ExitReason::PortOut, 30);
        w1.charge_exit(Some(tag(1, 0)), ExitReason::MmioWrite, 20);
        w1.charge_exit(None, ExitReason::PortOut, 10);
        sampler.charge_run(0, Some(tag(2, 7)), 1000);

        let r = Report::build(
            &acct,
            VmInfo {
                vcpus: 2,
                ..Default::default()
            },
        );
        assert!(r.conservation.holds);
        assert_eq!(r.totals.exits_total.count, 3);
        let api = r.container("web/api").unwrap();
        assert_eq!(api.charges.exits_of(ExitReason::PortOut).count, 1);
        assert_eq!(api.charges.guest_run_ns, 1000);
        assert_eq!(api.requests.live, 1);
        assert_eq!(api.requests.charged.exits_total.count, 1);
        assert_eq!(r.requests[0].container_path, "web/api");
        assert_eq!(
            r.container("unattributed").unwrap().provenance.exits,
            Provenance::Unattributed
        );

        // The JSON shape round-trips and the table names every container.
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        let table = r.to_table(10);
        assert!(table.contains("web/api") && table.contains("conservation: holds"));
    }

    #[test]
    fn a_vm_section_without_slots_reads_as_no_source() {
        let vm: VmInfo = serde_json::from_str(r#"{"vcpus":2,"boot":"linux"}"#).unwrap();
        assert_eq!(vm.slots, SlotsInfo::default());
        assert_eq!(vm.slots.source, "none");
        let back = serde_json::to_value(&vm).unwrap();
        assert_eq!(
            back["slots"],
            serde_json::json!({"source": "none", "vcpus": [], "pages": 0, "registrations": 0, "refusals": 0})
        );
    }

    #[test]
    fn vsock_charges_are_conserved_and_get_a_table_section() {
        let acct = books();
        let mut dev = acct.writer(2);
        let tx = VsockCharge {
            tx_packets: 1,
            tx_bytes: 5,
            host_ns: 7,
            connections: 1,
            ..Default::default()
        };
        dev.charge_vsock(Some(tag(2, 7)), &tx);
        dev.charge_vsock(
            None,
            &VsockCharge {
                rx_packets: 1,
                rx_bytes: 9,
                resets: 1,
                ..Default::default()
            },
        );

        let r = Report::build(&acct, VmInfo::default());

        assert!(r.conservation.holds);
        assert!(r
            .conservation
            .lines
            .iter()
            .any(|l| l.resource == "vsock.rx_bytes"));
        assert_eq!(r.container("web/api").unwrap().charges.vsock, tx);
        assert_eq!(r.requests[0].charges.vsock.tx_bytes, 5);
        assert_eq!((r.totals.vsock.rx_bytes, r.totals.vsock.resets), (9, 1));
        assert!(r.to_table(0).contains("VSOCK"));
    }

    #[test]
    fn the_streamed_report_is_the_built_report_byte_for_byte() {
        let acct = books();
        let mut w0 = acct.writer(0);
        // Requests with equal and different costs, finished in another
        // order than begun, and one live: the table's ranking and the
        // JSON's begin order both have something to get wrong.
        for (id, cost) in [(20u32, 5u64), (21, 9), (22, 5), (23, 9), (24, 1)] {
            acct.apply(&RingEntry {
                kind: EntryKind::BeginRequest as u16,
                id,
                arg: 1,
                ..Default::default()
            })
            .unwrap();
            w0.charge_exit(Some(tag(1, id)), ExitReason::PortOut, cost);
        }
        for id in [23u32, 20, 24, 21] {
            acct.apply(&RingEntry {
                kind: EntryKind::EndRequest as u16,
                id,
                ..Default::default()
            })
            .unwrap();
        }
        let devices = vec![DeviceCounters {
            name: "disk0".into(),
            kind: "virtio-blk".into(),
            counters: [("dropped".to_string(), 3)].into(),
        }];
        let agent: BTreeMap<String, u64> = [("frames".to_string(), 2)].into();
        let mut report = Report::build(&acct, VmInfo::default());
        report.agent = agent.clone();
        report.devices = devices.clone();
        let writer = ReportWriter::new(&acct, VmInfo::default())
            .with_agent(agent)
            .with_devices(devices);
        let mut json = Vec::new();
        writer.write_json(&mut json).unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), report.to_json());
        let seqs: Vec<u64> = report.requests.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        for n in [0, 1, 2, 3, 10] {
            let mut table = Vec::new();
            writer.write_table(&mut table, n).unwrap();
            assert_eq!(String::from_utf8(table).unwrap(), report.to_table(n), "top {n}");
        }
        let (top, listed) = writer.top_requests(3);
        let ids: Vec<u32> = top.iter().map(|r| r.id).collect();
        assert_eq!((ids, listed), (vec![21, 23, 20], 6));
    }

    #[test]
    fn conservation_detects_a_mismatch() {
        let mut total = Charges::default();
        total.exits[0].count = 2;
        let mut sum = Charges::default();
        sum.exits[0].count = 1;
        let c = conservation(&total, &sum);
        assert!(!c.holds);
        assert_eq!(
            c.lines
                .iter()
                .filter(|l| l.tenant_total != l.containers_sum)
                .count(),
            1
        );
    }
}
