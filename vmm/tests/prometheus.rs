//! A real Prometheus (the Debian package's `prometheus` binary) scrapes two
//! VMMs of two tenants over `--metrics-addr`, and what its query API sums
//! by tenant and by container is exactly what each VMM reports.
//!
//! Exact and not flaky by construction: each guest runs a scenario with a
//! known exit count and `hold=1` (docs/guest-scenarios.md), so once the
//! VMM's books reach that count they no longer move; Prometheus is started
//! only then, so every sample it ever scrapes is the final one, and the
//! VMMs are read again after the query to show they did not move.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, scratch, url_encode, Vmm};
use serde_json::Value;

/// The Prometheus server, killed and its files removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `prometheus` binary on `PATH`; a missing one fails the test with
/// what to install.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("prometheus is not installed: apt-get install prometheus (this test runs the real server)")
        })
}

/// The scrape configuration: both VMMs every second, each target labelled
/// `vm` as docs/prometheus.yml does.
fn config(targets: &[(&str, SocketAddr)]) -> String {
    let mut yml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: resourceful\n    static_configs:\n",
    );
    for (vm, addr) in targets {
        yml.push_str(&format!(
            "      - targets: ['{addr}']\n        labels: {{ vm: '{vm}' }}\n"
        ));
    }
    yml
}

impl Prometheus {
    /// Starts Prometheus scraping `targets`, its storage in a scratch dir.
    fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let bin = prometheus_binary();
        let dir = scratch("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let yml = dir.join("prometheus.yml");
        std::fs::write(&yml, config(targets)).unwrap();
        // A free port, given back for Prometheus to take.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", yml.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Self { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path and returns its `data`, or `None` while the server
    /// is not up or not ready yet.
    fn api(&mut self, target: &str) -> Option<Value> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus ended ({status}):\n{}", self.log());
        }
        let (status, body) = http_get(self.addr, target).ok()?;
        // Prometheus answers 503 "Service Unavailable" from the moment it
        // listens until its storage is open and it is ready.
        if status == 503 {
            return None;
        }
        assert_eq!(status, 200, "{target}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{target}: {body}");
        Some(v["data"].clone())
    }

    /// Waits until every target has been scraped successfully.
    fn wait_until_up(&mut self, targets: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(data) = self.api("/api/v1/targets?state=active") {
                let active = data["activeTargets"].as_array().cloned().unwrap_or_default();
                let up = active.iter().filter(|t| t["health"] == "up").count();
                if active.len() == targets && up == targets {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "targets not up: {active:#?}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never answered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant query's vector as (labels `by`) → value.
    fn query(&mut self, promql: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let target = format!("/api/v1/query?query={}", url_encode(promql));
        let data = self.api(&target).expect("prometheus answers");
        assert_eq!(data["resultType"], "vector", "{promql}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let key = by
                    .iter()
                    .map(|l| s["metric"][l].as_str().unwrap_or_default().to_string())
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (key, value)
            })
            .collect()
    }
}

/// Exits by container path as the VMM's own API reports them.
fn vmm_exits_by_container(sock: &Path) -> BTreeMap<String, f64> {
    let r = vmm::api::client::get_all(sock, "/v1/containers").expect("the API answers");
    let list: Value = serde_json::from_str(&r.body).unwrap();
    let mut out = BTreeMap::new();
    for c in list.as_array().unwrap() {
        let path = c["path"].as_str().unwrap().to_string();
        *out.entry(path).or_insert(0.0) += c["charges"]["exits_total"]["count"].as_f64().unwrap();
    }
    out
}

/// The tenant's totals from `GET /v1/vm`: exits and their host seconds.
fn vmm_totals(sock: &Path) -> (f64, f64) {
    let r = vmm::api::client::get(sock, "/v1/vm").expect("the API answers");
    let vm: Value = serde_json::from_str(&r.body).unwrap();
    let t = &vm["totals"]["exits_total"];
    (t["count"].as_f64().unwrap(), t["host_ns"].as_f64().unwrap() / 1e9)
}

#[test]
fn prometheus_sums_two_tenants_exactly_as_their_vmms_report() {
    // Checked first: without it nothing else is worth starting.
    prometheus_binary();
    let flags = ["--metrics-addr", "127.0.0.1:0"];
    let mut acme = Vmm::start("acme", "scenario=demo hold=1", 2, &flags);
    let mut globex = Vmm::start("globex", "scenario=basic hold=1", 1, &flags);
    let (a_addr, g_addr) = (acme.metrics_addr(), globex.metrics_addr());
    // The scenarios' exits less the exit-port write: then the books hold.
    acme.wait_for_exits(a_addr, 3241.0);
    globex.wait_for_exits(g_addr, 379.0);

    let mut prom = Prometheus::start(&[("vm-a", a_addr), ("vm-g", g_addr)]);
    prom.wait_until_up(2);

    let tenants = prom.query("sum by (tenant) (resourceful_exits_total)", &["tenant"]);
    let host = prom.query(
        "sum by (tenant) (resourceful_exit_host_seconds_total)",
        &["tenant"],
    );
    let containers = prom.query(
        "sum by (tenant, container) (resourceful_exits_total)",
        &["tenant", "container"],
    );
    let vms = prom.query(
        "count by (vm, tenant) (resourceful_exits_total)",
        &["vm", "tenant"],
    );

    let mut want_containers = BTreeMap::new();
    for (tenant, vmm) in [("acme", &acme), ("globex", &globex)] {
        let (exits, host_s) = vmm_totals(&vmm.api_sock);
        let key = vec![tenant.to_string()];
        assert_eq!(tenants[&key], exits, "{tenant}: exits");
        assert!(
            (host[&key] - host_s).abs() < 1e-6,
            "{tenant}: host seconds {} vs {host_s}",
            host[&key]
        );
        for (path, n) in vmm_exits_by_container(&vmm.api_sock) {
            want_containers.insert(vec![tenant.to_string(), path], n);
        }
    }
    assert_eq!(
        tenants,
        BTreeMap::from([(vec!["acme".into()], 3241.0), (vec!["globex".into()], 379.0)])
    );
    assert_eq!(containers, want_containers);
    assert_eq!(
        containers[&vec!["acme".to_string(), "frontend/api".to_string()]],
        1031.0
    );
    // Each VMM's series carry its target's `vm` label and one tenant.
    let vm_tenants: Vec<_> = vms.keys().cloned().collect();
    assert_eq!(
        vm_tenants,
        [
            vec!["vm-a".to_string(), "acme".into()],
            vec!["vm-g".into(), "globex".into()]
        ]
    );
    // Every expression of the shipped dashboard parses and runs in this
    // Prometheus (Grafana's variables given plain values).
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let expr = expr.replace("$__rate_interval", "5s").replace("$tenant", ".*");
            let target = format!("/api/v1/query?query={}", url_encode(&expr));
            assert!(prom.api(&target).is_some(), "{expr}");
        }
    }
    // The books did not move while Prometheus read them.
    assert_eq!(vmm_totals(&acme.api_sock).0, 3241.0);
    assert_eq!(vmm_totals(&globex.api_sock).0, 379.0);
}
