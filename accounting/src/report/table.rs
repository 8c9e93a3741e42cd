//! The report as a table: the VM line, one row per container (exits,
//! then block, network and vsock sections for the containers that have
//! any), the most expensive requests, guest errors and conservation.
//!
//! It is written as it is rendered, flushed every [`SPILL`] bytes, so a
//! VM with a million containers does not need its table in memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::{ChargesReport, Conservation, ConservationLine, ContainerReport, RequestReport, VmInfo};
use crate::resource::{ExitReason, NetCharge, VsockCharge};

/// Bytes of rendered text held before they are written out.
const SPILL: usize = 64 << 10;

/// Calls its argument once for every container, `unattributed` first.
pub(crate) type Containers<'a> = &'a dyn Fn(&mut dyn FnMut(&ContainerReport));

/// What the table shows.
pub(crate) struct Table<'a> {
    pub tenant: &'a str,
    pub vm: &'a VmInfo,
    pub totals: &'a ChargesReport,
    pub requests_begun: u64,
    pub containers: Containers<'a>,
    /// The most expensive requests, most expensive first.
    pub top: &'a [&'a RequestReport],
    /// All requests the JSON report lists.
    pub requests_listed: usize,
    pub guest_errors: &'a BTreeMap<String, u64>,
    pub agent: &'a BTreeMap<String, u64>,
    pub conservation: &'a Conservation,
}

/// How requests rank in the table: exit host time, then exit count.
pub(crate) fn rank(c: &ChargesReport) -> (u64, u64) {
    (c.exits_total.host_ns, c.exits_total.count)
}

/// `text` as the table shows it: control characters written as Rust
/// escapes (`\n`, `\u{1b}`), so a name, a path (`--kernel`) or an error
/// message can neither forge rows nor drive the terminal.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes `s` out once it holds [`SPILL`] bytes; the first error is kept.
fn spill(s: &mut String, w: &mut dyn Write, failed: &mut Option<io::Error>) {
    if s.len() >= SPILL {
        if failed.is_none() {
            *failed = w.write_all(s.as_bytes()).err();
        }
        s.clear();
    }
}

/// Renders `t` into `w`.
pub(crate) fn write(w: &mut dyn Write, t: &Table<'_>) -> io::Result<()> {
    let mut s = String::new();
    let mut failed = None;
    let ms = |ns: u64| ns as f64 / 1e6;
    let v = t.vm;
    let _ = writeln!(
        s,
        "tenant {}  |  {} vCPU(s), {} MiB, {} boot of {}  |  wall {:.1} ms  |  end: {}{}",
        shown(t.tenant),
        v.vcpus,
        v.mem_mib,
        shown(&v.boot),
        shown(&v.kernel),
        ms(v.wall_ns),
        shown(&v.end),
        v.guest_status
            .map(|st| format!(" (status {st})"))
            .unwrap_or_default(),
    );
    if let Some(d) = &v.end_detail {
        let _ = writeln!(s, "  {}", shown(d));
    }
    if let Some(o) = &v.otlp {
        let _ = writeln!(
            s,
            "  otlp to {}: {} spans exported, {} dropped ({} evicted before export, {} failed); {} metric exports, {} dropped; {} failed tries, {} retries",
            shown(&o.traces_url),
            o.spans_exported,
            o.spans_dropped,
            o.spans_dropped_evicted,
            o.spans_dropped_failed,
            o.metric_exports,
            o.metric_exports_dropped,
            o.post_errors,
            o.retries,
        );
    }
    let header = format!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>6}",
        "CONTAINER", "EXITS", "PIO_IN", "PIO_OUT", "MMIO_RD", "MMIO_WR", "OTHER", "HOST_MS", "RUN_MS", "REQS"
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
    (t.containers)(&mut |c| {
        let name = if c.retired {
            format!("{} (retired)", shown(&c.path))
        } else {
            shown(&c.path).into_owned()
        };
        row(&mut s, &name, &c.charges, c.requests.begun.to_string());
        spill(&mut s, w, &mut failed);
    });
    row(&mut s, "= tenant total", t.totals, t.requests_begun.to_string());

    if t.totals.block.ops() > 0 || t.totals.interrupts > 0 {
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
        (t.containers)(&mut |c| {
            if c.charges.block.ops() > 0 || c.charges.interrupts > 0 {
                block_row(&mut s, &shown(&c.path), &c.charges);
                spill(&mut s, w, &mut failed);
            }
        });
        block_row(&mut s, "= tenant total", t.totals);
    }
    let any_net = |n: &NetCharge| n.tx_frames + n.rx_frames + n.rx_dropped_frames > 0;
    if any_net(&t.totals.net) {
        let _ = writeln!(
            s,
            "\n{:<28} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>7} {:>8}",
            "NET", "TX", "TX_KIB", "RX", "RX_KIB", "HOST_MS", "RETX_KIB", "SPOOFED", "RX_DROP"
        );
        let net_row = |s: &mut String, name: &str, n: &NetCharge| {
            let _ = writeln!(
                s,
                "{:<28} {:>8} {:>10.1} {:>8} {:>10.1} {:>9.3} {:>9.1} {:>7} {:>8}",
                name,
                n.tx_frames,
                n.tx_bytes as f64 / 1024.0,
                n.rx_frames,
                n.rx_bytes as f64 / 1024.0,
                ms(n.host_ns),
                n.retransmitted_bytes as f64 / 1024.0,
                n.spoofed_frames,
                n.rx_dropped_frames,
            );
        };
        (t.containers)(&mut |c| {
            if any_net(&c.charges.net) {
                net_row(&mut s, &shown(&c.path), &c.charges.net);
                spill(&mut s, w, &mut failed);
            }
        });
        net_row(&mut s, "= tenant total", &t.totals.net);
    }
    if t.totals.vsock.tx_packets + t.totals.vsock.rx_packets > 0 {
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
        (t.containers)(&mut |c| {
            if c.charges.vsock.tx_packets + c.charges.vsock.rx_packets > 0 {
                vsock_row(&mut s, &shown(&c.path), &c.charges.vsock);
                spill(&mut s, w, &mut failed);
            }
        });
        vsock_row(&mut s, "= tenant total", &t.totals.vsock);
    }
    if !t.top.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
            "REQUEST", "CONTAINER", "STATE", "EXITS", "PIO_OUT", "MMIO_WR", "HOST_MS", "RUN_MS"
        );
        for r in t.top {
            let c = &r.charges;
            let _ = writeln!(
                s,
                "{:<10} {:<20} {:>9} {:>8} {:>8} {:>8} {:>10.3} {:>10.3}",
                r.id,
                shown(&r.container_path),
                shown(&r.state),
                c.exits_total.count,
                c.exits_of(ExitReason::PortOut).count,
                c.exits_of(ExitReason::MmioWrite).count,
                ms(c.exits_total.host_ns),
                ms(c.guest_run_ns),
            );
        }
        if t.requests_listed > t.top.len() {
            let _ = writeln!(
                s,
                "… {} more requests in the JSON report",
                t.requests_listed - t.top.len()
            );
        }
    }
    if !t.guest_errors.is_empty() {
        let errs: Vec<String> = t
            .guest_errors
            .iter()
            .map(|(k, n)| format!("{}={n}", shown(k)))
            .collect();
        let _ = writeln!(s, "\nguest errors: {}", errs.join(", "));
    }
    if !t.agent.is_empty() {
        let counts: Vec<String> = t.agent.iter().map(|(k, n)| format!("{}={n}", shown(k))).collect();
        let _ = writeln!(s, "agent channel: {}", counts.join(", "));
    }
    let broken: Vec<&ConservationLine> = t
        .conservation
        .lines
        .iter()
        .filter(|l| l.tenant_total != l.containers_sum)
        .collect();
    if broken.is_empty() {
        let _ = writeln!(
            s,
            "\nconservation: holds for all {} resources",
            t.conservation.lines.len()
        );
    } else {
        for l in broken {
            let _ = writeln!(
                s,
                "\nconservation BROKEN: {} tenant {} != containers {}",
                shown(&l.resource),
                l.tenant_total,
                l.containers_sum
            );
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    w.write_all(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::{Report, VmInfo};
    use super::shown;
    use crate::ledger::Accounting;

    #[test]
    fn control_characters_in_texts_are_escaped_not_printed() {
        // Found by the report_table fuzz target: the tenant, a `--kernel`
        // path and an end detail reached the terminal as they were.
        let acct = Accounting::new("t\x1b[2J", 1, 0, Default::default());
        let vm = VmInfo {
            kernel: "/tmp/a\nb".into(),
            end_detail: Some("x\ry\u{9b}".into()),
            ..Default::default()
        };

        let table = Report::build(&acct, vm).to_table(10);

        assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
        for escaped in [r"t\u{1b}[2J", r"/tmp/a\nb", r"x\ry\u{9b}"] {
            assert!(table.contains(escaped), "{escaped} missing from {table:?}");
        }
    }

    #[test]
    fn clean_text_is_shown_as_it_is() {
        assert!(matches!(shown("web/api"), std::borrow::Cow::Borrowed("web/api")));
        assert_eq!(shown("名前 é"), "名前 é");
    }
}
