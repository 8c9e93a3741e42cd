//! `GET /metrics`: the books as Prometheus counters (text exposition format
//! 0.0.4).
//!
//! Every series is labelled `tenant` and `container` (the container's path;
//! containers that share a path, a retired one and its successor, are
//! summed, so each series stays cumulative). Exits are also labelled
//! `reason`, device work `op` or `dir`; guest errors are per tenant, labelled
//! `kind`.
//!
//! The same text is served on the API socket and on `--metrics-addr`
//! (`server`). No series carries a per-VM label: Prometheus adds its
//! target's labels (`instance`, and `vm` in docs/prometheus.yml), so two
//! VMMs of one tenant never collide and `sum by (tenant)` adds them up.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use accounting::report::{ChargesReport, ContainerReport, DeviceCounters, Report};
use accounting::resource::ExitReason;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    escape_label_into(&mut out, v);
    out
}

/// [`escape_label`] appended to `out`.
fn escape_label_into(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        Self { out, name }
    }

    /// Writes one sample straight into the output: a scrape of 10,000
    /// containers is ~10^5 samples, so no per-sample allocation.
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(self.name);
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_into(self.out, v);
            self.out.push('"');
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// Nanoseconds as seconds (a decimal, never in exponent form).
fn seconds(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

type Extract = fn(&ChargesReport) -> Vec<(&'static str, String)>;

/// Metric families over containers: name, help, label key for the split
/// (empty: none), and how to read the values.
const FAMILIES: &[(&str, &str, &str, Extract)] = &[
    (
        "resourceful_exits_total",
        "vCPU exits charged, by reason.",
        "reason",
        // Every reason, zeros included: a series exists from the start.
        |c| {
            ExitReason::ALL
                .iter()
                .map(|r| (r.name(), c.exits_of(*r).count.to_string()))
                .collect()
        },
    ),
    (
        "resourceful_exit_host_seconds_total",
        "Host time spent handling charged exits, by reason.",
        "reason",
        |c| {
            ExitReason::ALL
                .iter()
                .map(|r| (r.name(), seconds(c.exits_of(*r).host_ns)))
                .collect()
        },
    ),
    (
        "resourceful_guest_run_seconds_total",
        "Guest run time (inside KVM_RUN), attributed by sampling.",
        "",
        |c| vec![("", seconds(c.guest_run_ns))],
    ),
    (
        "resourceful_block_requests_total",
        "virtio-blk requests, by kind.",
        "op",
        |c| {
            vec![
                ("read", c.block.reads.to_string()),
                ("write", c.block.writes.to_string()),
                ("flush", c.block.flushes.to_string()),
                ("other", c.block.other.to_string()),
            ]
        },
    ),
    (
        "resourceful_block_errors_total",
        "virtio-blk requests answered with an error.",
        "",
        |c| vec![("", c.block.errors.to_string())],
    ),
    (
        "resourceful_block_bytes_total",
        "virtio-blk data bytes moved, by direction.",
        "dir",
        |c| {
            vec![
                ("read", c.block.bytes_read.to_string()),
                ("write", c.block.bytes_written.to_string()),
            ]
        },
    ),
    (
        "resourceful_block_throttle_events_total",
        "virtio-blk requests a per-container limit (--limit) held back.",
        "",
        |c| vec![("", c.block.throttle_events.to_string())],
    ),
    (
        "resourceful_block_throttled_seconds_total",
        "Time virtio-blk requests were held by a per-container limit.",
        "",
        |c| vec![("", seconds(c.block.throttled_ns))],
    ),
    (
        "resourceful_net_frames_total",
        "virtio-net frames, by direction.",
        "dir",
        |c| {
            vec![
                ("tx", c.net.tx_frames.to_string()),
                ("rx", c.net.rx_frames.to_string()),
            ]
        },
    ),
    (
        "resourceful_net_bytes_total",
        "virtio-net frame bytes, by direction.",
        "dir",
        |c| {
            vec![
                ("tx", c.net.tx_bytes.to_string()),
                ("rx", c.net.rx_bytes.to_string()),
            ]
        },
    ),
    (
        "resourceful_net_retransmitted_bytes_total",
        "TCP payload bytes the guest sent again.",
        "",
        |c| vec![("", c.net.retransmitted_bytes.to_string())],
    ),
    (
        "resourceful_net_spoofed_frames_total",
        "Frames dropped because their source MAC was not the device's.",
        "",
        |c| vec![("", c.net.spoofed_frames.to_string())],
    ),
    (
        "resourceful_net_throttle_events_total",
        "virtio-net TX frames held by a per-container limit.",
        "",
        |c| vec![("", c.net.throttle_events.to_string())],
    ),
    (
        "resourceful_net_throttled_seconds_total",
        "Time virtio-net TX frames were held by a per-container limit.",
        "",
        |c| vec![("", seconds(c.net.throttled_ns))],
    ),
    (
        "resourceful_net_rx_dropped_frames_total",
        "Received frames a per-container limit with net-rx-drop dropped before they reached the guest.",
        "",
        |c| vec![("", c.net.rx_dropped_frames.to_string())],
    ),
    (
        "resourceful_net_rx_dropped_bytes_total",
        "Bytes of the received frames a per-container limit with net-rx-drop dropped.",
        "",
        |c| vec![("", c.net.rx_dropped_bytes.to_string())],
    ),
    (
        "resourceful_cpu_throttle_events_total",
        "Holds of a vCPU by a guest CPU limit (--limit PATH:cpu=...).",
        "",
        |c| vec![("", c.cpu.throttle_events.to_string())],
    ),
    (
        "resourceful_cpu_throttled_seconds_total",
        "Time vCPUs were held out of the guest by a guest CPU limit.",
        "",
        |c| vec![("", seconds(c.cpu.throttled_ns))],
    ),
    (
        "resourceful_vsock_packets_total",
        "virtio-vsock packets, by direction.",
        "dir",
        |c| {
            vec![
                ("tx", c.vsock.tx_packets.to_string()),
                ("rx", c.vsock.rx_packets.to_string()),
            ]
        },
    ),
    (
        "resourceful_vsock_bytes_total",
        "virtio-vsock payload bytes, by direction.",
        "dir",
        |c| {
            vec![
                ("tx", c.vsock.tx_bytes.to_string()),
                ("rx", c.vsock.rx_bytes.to_string()),
            ]
        },
    ),
    (
        "resourceful_vsock_host_seconds_total",
        "Device thread CPU time spent on virtio-vsock packets and host streams.",
        "",
        |c| vec![("", seconds(c.vsock.host_ns))],
    ),
    (
        "resourceful_vsock_connections_total",
        "virtio-vsock connections opened.",
        "",
        |c| vec![("", c.vsock.connections.to_string())],
    ),
    (
        "resourceful_vsock_resets_total",
        "virtio-vsock connections reset.",
        "",
        |c| vec![("", c.vsock.resets.to_string())],
    ),
    (
        "resourceful_vsock_throttle_events_total",
        "virtio-vsock connections' bytes held by a per-container limit (either way).",
        "",
        |c| vec![("", c.vsock.throttle_events.to_string())],
    ),
    (
        "resourceful_vsock_throttled_seconds_total",
        "Time virtio-vsock bytes were held by a per-container limit.",
        "",
        |c| vec![("", seconds(c.vsock.throttled_ns))],
    ),
    (
        "resourceful_agent_frames_total",
        "Agent-channel frames the VMM handled.",
        "",
        |c| vec![("", c.agent.frames.to_string())],
    ),
    (
        "resourceful_agent_host_seconds_total",
        "VMM CPU spent handling agent-channel frames.",
        "",
        |c| vec![("", seconds(c.agent.host_ns))],
    ),
    (
        "resourceful_ring_drain_entries_total",
        "Declaration-ring entries the sampler consumed off the exit path.",
        "",
        |c| vec![("", c.ring.entries.to_string())],
    ),
    (
        "resourceful_ring_drain_host_seconds_total",
        "VMM CPU the sampler spent consuming declaration-ring entries.",
        "",
        |c| vec![("", seconds(c.ring.host_ns))],
    ),
    (
        "resourceful_interrupts_total",
        "Interrupts injected into the guest.",
        "",
        |c| vec![("", c.interrupts.to_string())],
    ),
];

/// Adds `b` into `a` (for containers sharing a path).
fn add(a: &mut ChargesReport, b: &ChargesReport) {
    for (r, e) in &b.exits {
        let slot = a.exits.entry(r.clone()).or_default();
        slot.count += e.count;
        slot.host_ns += e.host_ns;
    }
    a.exits_total.count += b.exits_total.count;
    a.exits_total.host_ns += b.exits_total.host_ns;
    a.guest_run_ns += b.guest_run_ns;
    a.run_samples += b.run_samples;
    let (x, y) = (&mut a.block, &b.block);
    x.reads += y.reads;
    x.writes += y.writes;
    x.flushes += y.flushes;
    x.other += y.other;
    x.errors += y.errors;
    x.bytes_read += y.bytes_read;
    x.bytes_written += y.bytes_written;
    x.device_ns += y.device_ns;
    x.latency_ns += y.latency_ns;
    x.throttle_events += y.throttle_events;
    x.throttled_ns += y.throttled_ns;
    let (x, y) = (&mut a.net, &b.net);
    x.tx_frames += y.tx_frames;
    x.tx_bytes += y.tx_bytes;
    x.rx_frames += y.rx_frames;
    x.rx_bytes += y.rx_bytes;
    x.host_ns += y.host_ns;
    x.retransmitted_bytes += y.retransmitted_bytes;
    x.spoofed_frames += y.spoofed_frames;
    x.throttle_events += y.throttle_events;
    x.throttled_ns += y.throttled_ns;
    x.rx_dropped_frames += y.rx_dropped_frames;
    x.rx_dropped_bytes += y.rx_dropped_bytes;
    let (x, y) = (&mut a.vsock, &b.vsock);
    x.tx_packets += y.tx_packets;
    x.tx_bytes += y.tx_bytes;
    x.rx_packets += y.rx_packets;
    x.rx_bytes += y.rx_bytes;
    x.host_ns += y.host_ns;
    x.connections += y.connections;
    x.resets += y.resets;
    x.throttle_events += y.throttle_events;
    x.throttled_ns += y.throttled_ns;
    a.interrupts += b.interrupts;
    a.agent.frames += b.agent.frames;
    a.agent.host_ns += b.agent.host_ns;
    a.ring.entries += b.ring.entries;
    a.ring.host_ns += b.ring.host_ns;
}

/// The exposition of `report`.
pub fn render(report: &Report) -> String {
    render_parts(&report.tenant, &report.containers, &report.guest_errors)
}

/// The exposition from the parts of a report it uses (the API builds them
/// without the report's requests: `/metrics` is O(containers)).
pub fn render_parts(
    tenant: &str,
    containers: &[ContainerReport],
    guest_errors: &BTreeMap<String, u64>,
) -> String {
    let mut by_path: BTreeMap<&str, ChargesReport> = BTreeMap::new();
    for c in containers {
        add(by_path.entry(c.path.as_str()).or_default(), &c.charges);
    }
    let mut out = String::new();
    for (name, help, key, extract) in FAMILIES {
        let mut f = Family::new(&mut out, name, help);
        for (path, charges) in &by_path {
            for (label, value) in extract(charges) {
                if key.is_empty() {
                    f.sample(&[("tenant", tenant), ("container", path)], value);
                } else {
                    f.sample(&[("tenant", tenant), ("container", path), (key, label)], value);
                }
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "resourceful_guest_errors_total",
        "Guest mistakes (rejected declarations, bad tags), by kind.",
    );
    for (kind, n) in guest_errors {
        f.sample(&[("tenant", tenant), ("kind", kind)], n);
    }
    out
}

/// Appends the agent channel's counters: `resourceful_agent_events_total`
/// labelled `tenant` and `event` (frames, bytes, each kind of refusal).
pub fn render_agent(out: &mut String, tenant: &str, stats: &crate::agent::AgentStats) {
    let mut f = Family::new(
        out,
        "resourceful_agent_events_total",
        "Guest agent channel: connections, frames, bytes, reports, and each kind of refused input.",
    );
    for (event, n) in stats.by_name() {
        f.sample(&[("tenant", tenant), ("event", event)], n);
    }
}

/// Appends the OTLP exporter's counters (`--otlp-endpoint`):
/// `resourceful_otlp_events_total` labelled `tenant` and `counter`
/// (`spans_exported`, `spans_dropped_evicted`, `spans_dropped_failed`,
/// `metric_exports`, `metric_points_exported`, `metric_exports_dropped`,
/// `post_errors`, `retries`; docs/opentelemetry.md).
pub fn render_otlp(out: &mut String, tenant: &str, o: &accounting::report::OtlpInfo) {
    let mut f = Family::new(
        out,
        "resourceful_otlp_events_total",
        "OpenTelemetry export: spans exported and dropped (by reason), metric exports, failed POST tries, retries.",
    );
    for (counter, n) in [
        ("spans_exported", o.spans_exported),
        ("spans_dropped_evicted", o.spans_dropped_evicted),
        ("spans_dropped_failed", o.spans_dropped_failed),
        ("metric_exports", o.metric_exports),
        ("metric_points_exported", o.metric_points_exported),
        ("metric_exports_dropped", o.metric_exports_dropped),
        ("post_errors", o.post_errors),
        ("retries", o.retries),
    ] {
        f.sample(&[("tenant", tenant), ("counter", counter)], n);
    }
}

/// Appends the API server's counters (`vm.api`):
/// `resourceful_api_events_total` labelled `tenant` and `event`
/// (`requests`, `client_errors`, `server_errors`, `refused_connections`,
/// `bad_connections`), and `resourceful_api_answers_total` labelled
/// `tenant` and `status` for each refusing status given at least once.
pub fn render_api(out: &mut String, tenant: &str, a: &accounting::report::ApiInfo) {
    {
        let mut f = Family::new(
            out,
            "resourceful_api_events_total",
            "API server: requests answered, refused (4xx) and failed (5xx), connections refused at the bound or ended without an answer.",
        );
        for (event, n) in [
            ("requests", a.requests),
            ("client_errors", a.client_errors),
            ("server_errors", a.server_errors),
            ("refused_connections", a.refused_connections),
            ("bad_connections", a.bad_connections),
        ] {
            f.sample(&[("tenant", tenant), ("event", event)], n);
        }
    }
    let mut f = Family::new(
        out,
        "resourceful_api_answers_total",
        "API server: answers by refusing or failing status (400, 404, 405, 408, 413, 500).",
    );
    for (status, n) in &a.by_status {
        f.sample(&[("tenant", tenant), ("status", status)], n);
    }
}

/// Appends every device's counters: `resourceful_device_events_total`
/// labelled `tenant`, `device` (`disk0`, …), `kind` (`virtio-blk`, …) and
/// `counter` (`malformed`, `transport.bad_accesses`, …).
pub fn render_devices(out: &mut String, tenant: &str, devices: &[DeviceCounters]) {
    let mut f = Family::new(
        out,
        "resourceful_device_events_total",
        "Device counters: work done, and each kind of malformed or dropped guest input.",
    );
    for d in devices {
        for (counter, n) in &d.counters {
            f.sample(
                &[
                    ("tenant", tenant),
                    ("device", &d.name),
                    ("kind", &d.kind),
                    ("counter", counter),
                ],
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn seconds_are_plain_decimals() {
        assert_eq!(seconds(0), "0.000000000");
        assert_eq!(seconds(1_500_000_001), "1.500000001");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let acct = accounting::ledger::Accounting::new("t", 1, 1, Default::default());
        let report = Report::build(&acct, Default::default());
        let text = render(&report);
        for (name, ..) in FAMILIES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
            assert!(
                text.contains(&format!("{name}{{tenant=\"t\",container=\"unattributed\"")),
                "{name}"
            );
        }
        assert!(text.contains("# TYPE resourceful_guest_errors_total counter"));
    }
}
