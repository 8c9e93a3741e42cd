//! The shipped Prometheus and Grafana files (docs/prometheus.yml,
//! docs/grafana-dashboard.json) against what the VMM exports, so they
//! cannot drift: every metric a dashboard expression names is one the
//! VMM's `/metrics` has, every label it groups or selects by is one the
//! series carry, and the scrape configuration scrapes `/metrics` of two
//! VMMs, each labelled `vm`. (vmm/tests/prometheus.rs runs every dashboard
//! expression through a real Prometheus.)

use std::collections::BTreeSet;

use accounting::report::{DeviceCounters, Report};
use serde_json::Value;

fn doc(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// An exposition with every family the VMM writes, each with a sample:
/// the books' families, a guest error, the agent's and a device's events.
fn full_exposition() -> String {
    let acct = accounting::ledger::Accounting::new("t", 1, 1, Default::default());
    let report = Report::build(&acct, Default::default());
    let errors = [("bad_tag".to_string(), 1u64)].into_iter().collect();
    let mut text = vmm::api::metrics::render_parts("t", &report.containers, &errors);
    vmm::api::metrics::render_agent(&mut text, "t", &vmm::agent::AgentStats::default());
    let disk = DeviceCounters {
        name: "disk0".into(),
        kind: "virtio-blk".into(),
        counters: [("malformed".to_string(), 0u64)].into_iter().collect(),
    };
    vmm::api::metrics::render_devices(&mut text, "t", &[disk]);
    text
}

/// Metric names (from `# TYPE`) and label names (from the samples).
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = full_exposition();
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some((_, rest)) = line.split_once('{') {
            for kv in rest.split("\",") {
                if let Some((k, _)) = kv.split_once("=\"") {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    (names, labels)
}

/// Every string under a key `expr` (panel targets) or `query` strings
/// (template variables), anywhere in `v`.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

/// The identifiers of `expr` that name resourceful metrics.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("resourceful_"))
        .map(str::to_string)
        .collect()
}

/// Label names used in `by (...)`, `without (...)`, selectors `{l=...}`
/// and `label_values(m, l)`.
fn label_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by (", "without (", "label_values("] {
        for part in expr.split(kw).skip(1) {
            let list = part.split(')').next().unwrap();
            let list = if kw == "label_values(" {
                list.split(',').skip(1).collect::<Vec<_>>().join(",")
            } else {
                list.to_string()
            };
            out.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    for part in expr.split('{').skip(1) {
        let sel = part.split('}').next().unwrap();
        for m in sel.split(',') {
            let name: String = m
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn every_dashboard_expression_names_exported_metrics_and_labels() {
    let (names, mut labels) = exported();
    assert!(names.contains("resourceful_exits_total") && names.contains("resourceful_device_events_total"));
    // Target labels Prometheus adds (docs/prometheus.yml sets `vm`).
    labels.extend(["instance", "job", "vm"].map(String::from));
    let dash: Value = serde_json::from_str(&doc("grafana-dashboard.json")).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        let used = metric_names(e);
        assert!(!used.is_empty(), "{e}: names no resourceful metric");
        for m in used {
            assert!(
                names.contains(&m),
                "{e}: {m} is not exported by the VMM ({names:?})"
            );
        }
        for l in label_names(e) {
            assert!(labels.contains(&l), "{e}: label {l} is on no series ({labels:?})");
        }
    }
    // The panels the docs promise.
    let titles: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for want in [
        "exits/s per tenant",
        "host cpu per tenant",
        "exits/s per container",
        "top 10 containers",
        "device events",
        "held by limits",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want:?} panel in {titles:?}"
        );
    }
}

#[test]
fn the_scrape_config_scrapes_metrics_of_two_vmms_each_named() {
    let cfg: serde_norway::Value = serde_norway::from_str(&doc("prometheus.yml")).expect("YAML");
    let jobs = cfg["scrape_configs"].as_sequence().unwrap();
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("resourceful"))
        .expect("a resourceful job");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let statics = job["static_configs"].as_sequence().unwrap();
    assert_eq!(statics.len(), 2);
    let mut vms = BTreeSet::new();
    for s in statics {
        let target = s["targets"][0].as_str().unwrap();
        let addr: std::net::SocketAddr = target.parse().expect("IP:PORT, as --metrics-addr takes");
        assert!(addr.ip().is_loopback(), "the example stays on loopback");
        vms.insert(s["labels"]["vm"].as_str().expect("a vm label").to_string());
    }
    assert_eq!(vms.len(), 2, "each VMM has its own vm label");
}
