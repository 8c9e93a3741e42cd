//! The report: everything the books say, summed, in a stable JSON shape
//! (`resourceful.report/v1`, documented in `docs/report.md`) and as a table.
//!
//! Sums are taken from the atomic ledgers without stopping writers; a report
//! taken while vCPUs run is a consistent-enough view, one taken after they
//! stopped is exact, and that is when [`Conservation`] must hold exactly:
//! for every resource, the sum over the tenant's containers equals the
//! tenant total counted independently per vCPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::ledger::Accounting;
use crate::registry::{Limits, Registry, RegistryStats, RequestRow};
use crate::resource::{
    AgentCharge, BlockCharge, Charges, ExitCharge, ExitReason, NetCharge, Provenance, RingCharge, VsockCharge,
};

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
    /// Exits by reason name; every reason is present in memory, and the
    /// JSON leaves out reasons with no exits (an absent reason reads as 0).
    #[serde(
        default = "no_exits",
        serialize_with = "exits_with_any",
        deserialize_with = "exits_all_reasons"
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
}

/// Whether `v` is its type's zero.
pub fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Every reason, with no exits.
fn no_exits() -> BTreeMap<String, ExitCharge> {
    ExitReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), ExitCharge::default()))
        .collect()
}

/// Reads the sparse map back with every reason present.
fn exits_all_reasons<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ExitCharge>, D::Error> {
    let mut m = BTreeMap::<String, ExitCharge>::deserialize(d)?;
    for r in ExitReason::ALL {
        m.entry(r.name().to_string()).or_default();
    }
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
        ("agent.frames", total.agent.frames, sum.agent.frames),
        ("agent.host_ns", total.agent.host_ns, sum.agent.host_ns),
        ("ring.entries", total.ring.entries, sum.ring.entries),
        ("ring.host_ns", total.ring.host_ns, sum.ring.host_ns),
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
    /// Sums the books into a report.
    pub fn build(acct: &Accounting, vm: VmInfo) -> Report {
        let vcpu_totals = acct.vcpu_totals();
        let mut total = Charges::default();
        for w in &acct.writer_totals() {
            total.add(w);
        }
        let mut reg = acct.registry();
        reg.sweep();
        let requests = reg.request_rows();

        // Per-container request sums: settled (compacted and evicted
        // requests) plus what live and pending requests read now.
        let in_requests = reg.requests_charged();

        let mut sum = Charges::default();
        let containers: Vec<ContainerReport> = reg
            .containers()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let charges = c.cells.sum();
                sum.add(&charges);
                let unattributed = i == 0;
                ContainerReport {
                    index: i,
                    id: c.guest_id,
                    name: c.name.clone(),
                    path: path_of(&reg, i),
                    parent: c.parent,
                    retired: c.retired,
                    provenance: ProvenanceReport {
                        exits: if unattributed {
                            Provenance::Unattributed
                        } else {
                            Provenance::Exact
                        },
                        guest_run: if unattributed {
                            Provenance::Unattributed
                        } else {
                            Provenance::Sampled
                        },
                        devices: if unattributed {
                            Provenance::Unattributed
                        } else {
                            Provenance::Exact
                        },
                    },
                    charges: ChargesReport::from(&charges),
                    requests: RequestSummary {
                        begun: c.requests_begun,
                        ended: c.requests_ended,
                        live: c.requests_live,
                        retained: c.requests_retained,
                        evicted: c.requests_evicted,
                        charged: ChargesReport::from(&in_requests[i]),
                    },
                }
            })
            .collect();

        Report {
            schema: SCHEMA.to_string(),
            tenant: acct.tenant().to_string(),
            vm,
            totals: ChargesReport::from(&total),
            vcpus: vcpu_totals
                .iter()
                .enumerate()
                .map(|(id, c)| VcpuReport {
                    id,
                    charges: ChargesReport::from(c),
                })
                .collect(),
            containers,
            requests: requests.iter().map(|r| request_report(&reg, r)).collect(),
            guest_errors: acct.errors().nonzero(),
            declarations: reg.stats().into(),
            limits: reg.limits().into(),
            conservation: conservation(&total, &sum),
            agent: BTreeMap::new(),
        }
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
        let mut s = String::new();
        let ms = |ns: u64| ns as f64 / 1e6;
        let v = &self.vm;
        let _ = writeln!(
            s,
            "tenant {}  |  {} vCPU(s), {} MiB, {} boot of {}  |  wall {:.1} ms  |  end: {}{}",
            self.tenant,
            v.vcpus,
            v.mem_mib,
            v.boot,
            v.kernel,
            ms(v.wall_ns),
            v.end,
            v.guest_status
                .map(|st| format!(" (status {st})"))
                .unwrap_or_default(),
        );
        if let Some(d) = &v.end_detail {
            let _ = writeln!(s, "  {d}");
        }
        let header = format!(
            "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>6}",
            "CONTAINER",
            "EXITS",
            "PIO_IN",
            "PIO_OUT",
            "MMIO_RD",
            "MMIO_WR",
            "OTHER",
            "HOST_MS",
            "RUN_MS",
            "REQS"
        );
        let _ = writeln!(s, "\n{header}");
        let row = |s: &mut String, name: &str, c: &ChargesReport, reqs: String| {
            let other = c.exits_of(ExitReason::Shutdown).count
                + c.exits_of(ExitReason::InternalError).count
                + c.exits_of(ExitReason::Other).count;
            let _ = writeln!(
                s,
                "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10.3} {:>10.3} {:>6}",
                name,
                c.exits_total.count,
                c.exits_of(ExitReason::PortIn).count,
                c.exits_of(ExitReason::PortOut).count,
                c.exits_of(ExitReason::MmioRead).count,
                c.exits_of(ExitReason::MmioWrite).count,
                other,
                ms(c.exits_total.host_ns),
                ms(c.guest_run_ns),
                reqs,
            );
        };
        for c in &self.containers {
            let name = if c.retired {
                format!("{} (retired)", c.path)
            } else {
                c.path.clone()
            };
            row(&mut s, &name, &c.charges, c.requests.begun.to_string());
        }
        row(
            &mut s,
            "= tenant total",
            &self.totals,
            self.declarations.requests_begun.to_string(),
        );

        if self.totals.block.ops() > 0 || self.totals.interrupts > 0 {
            let _ = writeln!(
                s,
                "\n{:<28} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10} {:>10} {:>9} {:>10} {:>5}",
                "BLOCK",
                "READS",
                "WRITES",
                "FLUSHES",
                "OTHER",
                "ERRORS",
                "KIB_READ",
                "KIB_WRITE",
                "DEV_MS",
                "AVG_LAT_US",
                "IRQS"
            );
            let block_row = |s: &mut String, name: &str, c: &ChargesReport| {
                let b = &c.block;
                let avg_lat_us = if b.ops() > 0 {
                    b.latency_ns as f64 / b.ops() as f64 / 1e3
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    "{:<28} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10.1} {:>10.1} {:>9.3} {:>10.1} {:>5}",
                    name,
                    b.reads,
                    b.writes,
                    b.flushes,
                    b.other,
                    b.errors,
                    b.bytes_read as f64 / 1024.0,
                    b.bytes_written as f64 / 1024.0,
                    ms(b.device_ns),
                    avg_lat_us,
                    c.interrupts,
                );
            };
            for c in self
                .containers
                .iter()
                .filter(|c| c.charges.block.ops() > 0 || c.charges.interrupts > 0)
            {
                block_row(&mut s, &c.path, &c.charges);
            }
            block_row(&mut s, "= tenant total", &self.totals);
        }
        if self.totals.net.tx_frames + self.totals.net.rx_frames > 0 {
            let _ = writeln!(
                s,
                "\n{:<28} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>7}",
                "NET", "TX", "TX_KIB", "RX", "RX_KIB", "HOST_MS", "RETX_KIB", "SPOOFED"
            );
            let net_row = |s: &mut String, name: &str, n: &NetCharge| {
                let _ = writeln!(
                    s,
                    "{:<28} {:>8} {:>10.1} {:>8} {:>10.1} {:>9.3} {:>9.1} {:>7}",
                    name,
                    n.tx_frames,
                    n.tx_bytes as f64 / 1024.0,
                    n.rx_frames,
                    n.rx_bytes as f64 / 1024.0,
                    ms(n.host_ns),
                    n.retransmitted_bytes as f64 / 1024.0,
                    n.spoofed_frames,
                );
            };
            for c in self
                .containers
                .iter()
                .filter(|c| c.charges.net.tx_frames + c.charges.net.rx_frames > 0)
            {
                net_row(&mut s, &c.path, &c.charges.net);
            }
            net_row(&mut s, "= tenant total", &self.totals.net);
        }
        if self.totals.vsock.tx_packets + self.totals.vsock.rx_packets > 0 {
            let _ = writeln!(
                s,
                "\n{:<28} {:>8} {:>10} {:>8} {:>10} {:>9} {:>6} {:>6}",
                "VSOCK", "TX", "TX_KIB", "RX", "RX_KIB", "HOST_MS", "CONNS", "RESETS"
            );
            let vsock_row = |s: &mut String, name: &str, v: &VsockCharge| {
                let _ = writeln!(
                    s,
                    "{:<28} {:>8} {:>10.1} {:>8} {:>10.1} {:>9.3} {:>6} {:>6}",
                    name,
                    v.tx_packets,
                    v.tx_bytes as f64 / 1024.0,
                    v.rx_packets,
                    v.rx_bytes as f64 / 1024.0,
                    ms(v.host_ns),
                    v.connections,
                    v.resets,
                );
            };
            for c in self
                .containers
                .iter()
                .filter(|c| c.charges.vsock.tx_packets + c.charges.vsock.rx_packets > 0)
            {
                vsock_row(&mut s, &c.path, &c.charges.vsock);
            }
            vsock_row(&mut s, "= tenant total", &self.totals.vsock);
        }
        if !self.requests.is_empty() && max_requests > 0 {
            let mut top: Vec<&RequestReport> = self.requests.iter().collect();
            top.sort_by_key(|r| {
                std::cmp::Reverse((r.charges.exits_total.host_ns, r.charges.exits_total.count))
            });
            let _ = writeln!(
                s,
                "\n{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
                "REQUEST", "CONTAINER", "STATE", "EXITS", "PIO_OUT", "MMIO_WR", "HOST_MS", "RUN_MS"
            );
            for r in top.iter().take(max_requests) {
                let c = &r.charges;
                let _ = writeln!(
                    s,
                    "{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>10.3} {:>10.3}",
                    r.id,
                    r.container_path,
                    r.state,
                    c.exits_total.count,
                    c.exits_of(ExitReason::PortOut).count,
                    c.exits_of(ExitReason::MmioWrite).count,
                    ms(c.exits_total.host_ns),
                    ms(c.guest_run_ns),
                );
            }
            if self.requests.len() > max_requests {
                let _ = writeln!(
                    s,
                    "… {} more requests in the JSON report",
                    self.requests.len() - max_requests
                );
            }
        }
        if !self.guest_errors.is_empty() {
            let errs: Vec<String> = self
                .guest_errors
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let _ = writeln!(s, "\nguest errors: {}", errs.join(", "));
        }
        if !self.agent.is_empty() {
            let counts: Vec<String> = self.agent.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(s, "agent channel: {}", counts.join(", "));
        }
        let broken: Vec<&ConservationLine> = self
            .conservation
            .lines
            .iter()
            .filter(|l| l.tenant_total != l.containers_sum)
            .collect();
        if broken.is_empty() {
            let _ = writeln!(
                s,
                "\nconservation: holds for all {} resources",
                self.conservation.lines.len()
            );
        } else {
            for l in broken {
                let _ = writeln!(
                    s,
                    "\nconservation BROKEN: {} tenant {} != containers {}",
                    l.resource, l.tenant_total, l.containers_sum
                );
            }
        }
        s
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
