//! `resourceful top --api-sock PATH`: a live per-container view of a running
//! VM, refreshed every interval, like top(1).
//!
//! Each frame is three GETs (`/v1/vm`, `/v1/containers`,
//! `/v1/requests?order=cost`); rates are the differences between two frames
//! divided by the time between them, so the view shows what is happening
//! now, not since boot. Everything here reads the public API only: `top`
//! works against any VM that serves it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::client::{self, ClientError};

/// Requests listed under the containers.
pub const TOP_REQUESTS: usize = 5;

/// One poll of the API.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When the poll was made.
    pub at: Instant,
    /// `GET /v1/vm`.
    pub vm: Value,
    /// `GET /v1/containers`.
    pub containers: Value,
    /// `GET /v1/requests?order=cost&limit=TOP_REQUESTS`.
    pub requests: Value,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The socket could not be reached or answered badly.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An answer was not the JSON the API documents.
    #[error("GET {target}: {what}")]
    Answer {
        /// The request.
        target: String,
        /// What was wrong.
        what: String,
    },
}

fn get_json(sock: &Path, target: &str) -> Result<Value, TopError> {
    // Paged lists (`/v1/containers`) are followed to their end.
    let r = client::get_all(sock, target)?;
    let bad = |what: String| TopError::Answer {
        target: target.to_string(),
        what,
    };
    if r.status != 200 {
        return Err(bad(format!("HTTP {}: {}", r.status, r.body.trim())));
    }
    serde_json::from_str(&r.body).map_err(|e| bad(format!("not JSON: {e}")))
}

/// Polls the API once.
pub fn fetch(sock: &Path) -> Result<Frame, TopError> {
    Ok(Frame {
        at: Instant::now(),
        vm: get_json(sock, "/v1/vm")?,
        containers: get_json(sock, "/v1/containers")?,
        requests: get_json(sock, &format!("/v1/requests?order=cost&limit={TOP_REQUESTS}"))?,
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The counters of one container that `top` turns into rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Sample {
    exits: u64,
    host_ns: u64,
    run_ns: u64,
    blk_ops: u64,
    /// Block requests held by a per-container limit, and for how long.
    blk_throttled_ns: u64,
    net_frames: u64,
    /// TX frames held by a per-container limit: for how long.
    net_throttled_ns: u64,
    /// Vsock bytes held by a per-container limit: for how long.
    vsock_throttled_ns: u64,
    /// Received frames a `net-rx-drop` limit dropped.
    net_rx_dropped: u64,
    /// vCPUs held by a guest CPU limit: for how long.
    cpu_throttled_ns: u64,
    begun: u64,
}

fn sample(c: &Value) -> Sample {
    let ch = &c["charges"];
    let blk = &ch["block"];
    let net = &ch["net"];
    Sample {
        exits: u(&ch["exits_total"]["count"]),
        host_ns: u(&ch["exits_total"]["host_ns"]),
        run_ns: u(&ch["guest_run_ns"]),
        blk_ops: u(&blk["reads"]) + u(&blk["writes"]) + u(&blk["flushes"]) + u(&blk["other"]),
        blk_throttled_ns: u(&blk["throttled_ns"]),
        net_frames: u(&net["tx_frames"]) + u(&net["rx_frames"]),
        net_throttled_ns: u(&net["throttled_ns"]),
        vsock_throttled_ns: u(&ch["vsock"]["throttled_ns"]),
        net_rx_dropped: u(&net["rx_dropped_frames"]),
        cpu_throttled_ns: u(&ch["cpu"]["throttled_ns"]),
        begun: u(&c["requests"]["begun"]),
    }
}

fn by_path(f: &Frame) -> HashMap<String, Sample> {
    f.containers
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| (c["path"].as_str().unwrap_or_default().to_string(), sample(c)))
        .collect()
}

/// Renders `cur` with rates against `prev` (none on the first frame).
pub fn render(prev: Option<&Frame>, cur: &Frame) -> String {
    let mut out = String::new();
    let vm = &cur.vm;
    let secs = prev
        .map(|p| cur.at.duration_since(p.at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let before = prev.map(by_path).unwrap_or_default();
    let rate = |now: u64, then: Option<u64>| match (secs, then) {
        (Some(s), Some(t)) => now.saturating_sub(t) as f64 / s,
        _ => 0.0,
    };
    let agent = if vm["agent"]["connected"].as_bool() == Some(true) {
        format!(
            "agent {} connected",
            vm["agent"]["peer"]["hello"]["agent_version"]
                .as_str()
                .unwrap_or("?")
        )
    } else {
        "no agent".to_string()
    };
    let _ = writeln!(
        out,
        "resourceful top — tenant {}  {} vCPU(s)  {} MiB  up {:.1} s  {}",
        vm["tenant"].as_str().unwrap_or_default(),
        vm["vcpus"],
        vm["mem_mib"],
        u(&vm["uptime_ns"]) as f64 / 1e9,
        agent,
    );
    let _ = writeln!(
        out,
        "{}",
        if secs.is_some() {
            "rates over the last interval; %RUN is guest run time per vCPU-second of wall time"
        } else {
            "first sample: rates appear on the next refresh"
        }
    );
    let _ = writeln!(
        out,
        "\n{:<30} {:>9} {:>9} {:>7} {:>8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "CONTAINER",
        "EXITS/s",
        "HOSTms/s",
        "%RUN",
        "BLKop/s",
        "NETfr/s",
        "REQ/s",
        "REQS",
        "GUEST_CPU",
        "THROTms/s",
        "NTHROTms/s",
        "VTHROTms/s",
        "RXDROP/s",
        "CTHROTms/s"
    );
    let mut rows: Vec<(String, Sample, f64, String)> = cur
        .containers
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let path = c["path"].as_str().unwrap_or_default().to_string();
            let s = sample(c);
            let then = before.get(&path).copied();
            let host = rate(s.host_ns, then.map(|t| t.host_ns));
            let guest = match c["guest"]["cpu_usage_us"].as_u64() {
                Some(us) => format!("{:.2}s", us as f64 / 1e6),
                None => "-".to_string(),
            };
            let mut name = path;
            if c["retired"].as_bool() == Some(true) {
                name.push_str(" (retired)");
            }
            (name, s, host, guest)
        })
        .collect();
    // Busiest first: host time spent for the container, then run time.
    rows.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.1.run_ns.cmp(&a.1.run_ns)));
    let vcpus = u(&vm["vcpus"]).max(1) as f64;
    for (name, s, host, guest) in &rows {
        let then = before.get(name.trim_end_matches(" (retired)")).copied();
        let _ = writeln!(
            out,
            "{:<30} {:>9.0} {:>9.2} {:>6.1}% {:>8.0} {:>8.0} {:>7.0} {:>9} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>9.0} {:>10.1}",
            truncate(name, 30),
            rate(s.exits, then.map(|t| t.exits)),
            host / 1e6,
            rate(s.run_ns, then.map(|t| t.run_ns)) / 1e9 / vcpus * 100.0,
            rate(s.blk_ops, then.map(|t| t.blk_ops)),
            rate(s.net_frames, then.map(|t| t.net_frames)),
            rate(s.begun, then.map(|t| t.begun)),
            s.begun,
            guest,
            // Block time held by a per-container --limit, ms per second.
            rate(s.blk_throttled_ns, then.map(|t| t.blk_throttled_ns)) / 1e6,
            // The same for TX frames.
            rate(s.net_throttled_ns, then.map(|t| t.net_throttled_ns)) / 1e6,
            // The same for vsock bytes.
            rate(s.vsock_throttled_ns, then.map(|t| t.vsock_throttled_ns)) / 1e6,
            // Received frames a `net-rx-drop` limit dropped, per second.
            rate(s.net_rx_dropped, then.map(|t| t.net_rx_dropped)),
            // vCPU time held by a guest CPU limit.
            rate(s.cpu_throttled_ns, then.map(|t| t.cpu_throttled_ns)) / 1e6,
        );
    }
    let requests = cur.requests.as_array().map(Vec::as_slice).unwrap_or_default();
    if !requests.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<10} {:<30} {:>8} {:>8} {:>10} {:>10}",
            "REQUEST", "CONTAINER", "STATE", "EXITS", "HOST_MS", "RUN_MS"
        );
        for r in requests {
            let _ = writeln!(
                out,
                "{:<10} {:<30} {:>8} {:>8} {:>10.3} {:>10.3}",
                r["id"],
                truncate(r["container_path"].as_str().unwrap_or_default(), 30),
                r["state"].as_str().unwrap_or_default(),
                u(&r["charges"]["exits_total"]["count"]),
                u(&r["charges"]["exits_total"]["host_ns"]) as f64 / 1e6,
                u(&r["charges"]["guest_run_ns"]) as f64 / 1e6,
            );
        }
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(at: Instant, exits: u64, host_ns: u64, run_ns: u64, begun: u64) -> Frame {
        Frame {
            at,
            vm: json!({"tenant": "acme", "vcpus": 2, "mem_mib": 128, "uptime_ns": 5_000_000_000u64,
                       "agent": {"connected": false}}),
            containers: json!([
                {"path": "unattributed", "retired": false,
                 "charges": {"exits_total": {"count": 1, "host_ns": 10}, "guest_run_ns": 0},
                 "requests": {"begun": 0}},
                {"path": "web", "retired": false,
                 "charges": {"exits_total": {"count": exits, "host_ns": host_ns}, "guest_run_ns": run_ns,
                             "block": {"reads": 3, "throttled_ns": run_ns / 10},
                             "net": {"tx_frames": 1, "throttled_ns": run_ns / 20,
                                     "rx_dropped_frames": begun * 3},
                             "vsock": {"throttled_ns": run_ns / 40},
                             "cpu": {"throttle_events": 1, "throttled_ns": run_ns / 5}},
                 "requests": {"begun": begun}, "guest": {"cpu_usage_us": 1_500_000}},
            ]),
            requests: json!([{"id": 7, "container_path": "web", "state": "live",
                              "charges": {"exits_total": {"count": 4, "host_ns": 2_000_000}, "guest_run_ns": 0}}]),
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let t0 = Instant::now();
        let a = frame(t0, 100, 1_000_000, 0, 10);
        let b = frame(
            t0 + std::time::Duration::from_secs(2),
            300,
            5_000_000,
            1_000_000_000,
            30,
        );
        let first = render(None, &a);
        assert!(first.contains("first sample"), "{first}");
        let out = render(Some(&a), &b);
        let web = out.lines().find(|l| l.starts_with("web ")).expect(&out);
        let cols: Vec<&str> = web.split_whitespace().collect();
        // 200 exits / 2 s; 4 ms host / 2 s; 1 s run / 2 s / 2 vCPUs; 20 begun / 2 s.
        assert_eq!(cols[1], "100", "{web}");
        assert_eq!(cols[2], "2.00", "{web}");
        assert_eq!(cols[3], "25.0%", "{web}");
        assert_eq!(cols[6], "10", "{web}");
        assert_eq!(cols[7], "30", "{web}");
        assert_eq!(cols[8], "1.50s", "{web}");
        // 100 ms held by a --limit over 2 s.
        assert_eq!(cols[9], "50.0", "{web}");
        // 50 ms of TX frames held over 2 s.
        assert_eq!(cols[10], "25.0", "{web}");
        // 25 ms of vsock bytes held over 2 s.
        assert_eq!(cols[11], "12.5", "{web}");
        // 60 received frames dropped by a net-rx-drop limit over 2 s.
        assert_eq!(cols[12], "30", "{web}");
        // 200 ms of vCPU time held by a guest CPU limit over 2 s.
        assert_eq!(cols[13], "100.0", "{web}");
        // Busiest first.
        let order: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let web_at = order.iter().position(|n| *n == "web").unwrap();
        let un_at = order.iter().position(|n| *n == "unattributed").unwrap();
        assert!(web_at < un_at);
        assert!(out.contains("REQUEST"));
        assert!(out.contains("tenant acme"));
    }
}
