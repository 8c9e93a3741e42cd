//! `--metrics-addr`: `/metrics` over TCP for Prometheus, from a real VMM
//! run under its seccomp sandbox (the default): the same exposition as the
//! socket's, nothing but `/metrics` and `/`, the bound address in the log,
//! `GET /v1/vm` and the report, the connection bound, and the messages a
//! user gets for a taken port, a bad address and a non-loopback one.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use accounting::report::Report;
use common::{http_get, sum_by, Vmm};

/// `scenario=demo hold=1`: the demo's exits less the exit-port write
/// (docs/guest-scenarios.md), by container.
const DEMO_HELD: [(&str, f64); 5] = [
    ("batch", 400.0),
    ("db", 632.0),
    ("frontend", 1151.0),
    ("frontend/api", 1031.0),
    ("unattributed", 27.0),
];

/// GETs `target` from the Unix API and parses its JSON.
fn api_json(sock: &std::path::Path, target: &str) -> serde_json::Value {
    let r = vmm::api::client::get(sock, target).expect("the API answers");
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

#[test]
fn metrics_are_served_over_tcp_under_the_sandbox() {
    let mut vmm = Vmm::start(
        "acme",
        "scenario=demo hold=1",
        2,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let addr = vmm.metrics_addr();
    assert_ne!(addr.port(), 0, "port 0 is resolved in the log line");
    let text = vmm.wait_for_exits(addr, 3241.0);
    let by_container = sum_by(&text, "resourceful_exits_total", "container");
    assert_eq!(
        by_container,
        DEMO_HELD.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    );
    assert!(text.contains(
        "resourceful_exits_total{tenant=\"acme\",container=\"frontend/api\",reason=\"port_out\"} 951\n"
    ));

    // The same exposition as the socket's, and the address in /v1/vm.
    let unix = vmm::api::client::get(&vmm.api_sock, "/metrics").unwrap();
    let exits = |t: &str| sum_by(t, "resourceful_exits_total", "container");
    assert_eq!(exits(&unix.body), by_container);
    let vm = api_json(&vmm.api_sock, "/v1/vm");
    assert_eq!(vm["metrics_addr"].as_str(), Some(addr.to_string().as_str()));

    // Only /metrics and / are served there.
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("/metrics"), "{body}");
    for target in ["/v1/vm", "/v1/containers", "/v1/requests", "/v1/processes"] {
        let (status, body) = http_get(addr, target).unwrap();
        assert_eq!(status, 404, "{target}");
        assert!(body.contains("--api-sock"), "{target}: {body}");
    }

    // Bounded: with every slot held by an idle client, one more is closed
    // at once; once they go, scrapes are served again.
    let held: Vec<TcpStream> = (0..vmm::api::MAX_METRICS_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Each is accepted (a slot taken) before the next is looked at.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection over the bound is closed");
    assert!(t.elapsed() < Duration::from_secs(4));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(addr, "/metrics").map(|(s, _)| s).ok() != Some(200) {
        assert!(Instant::now() < deadline, "scrapes are not served again");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stopped by the host (status 1, `signal`), not by a sandbox
    // violation (159); the report names the address and agrees with the
    // last scrape.
    let last = http_get(addr, "/metrics").unwrap().1;
    assert_eq!(vmm.stop(), Some(1), "stderr:\n{}", vmm.stderr());
    assert!(!vmm.stderr().contains("seccomp"), "{}", vmm.stderr());
    let report: Report = serde_json::from_slice(&std::fs::read(&vmm.report).unwrap()).unwrap();
    assert_eq!(report.vm.seccomp, "on");
    assert_eq!(report.vm.end, "signal");
    assert_eq!(report.vm.metrics_addr, Some(addr.to_string()));
    assert_eq!(report.totals.exits_total.count, 3241);
    assert_eq!(exits(&last), by_container);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed with the VM"
    );
}

#[test]
fn metrics_addr_mistakes_say_what_to_do() {
    let run = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_resourceful"))
            .args([
                "run",
                "--kernel",
                "builtin:test-guest",
                "--cmdline",
                "scenario=basic",
            ])
            .args(["--metrics-addr", addr])
            .output()
            .expect("the binary runs")
    };
    // A taken port: the flag, the address and a way out.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&addr);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("--metrics-addr {addr}: the address is already in use")),
        "{err}"
    );
    assert!(err.contains("--metrics-addr 127.0.0.1:0"), "{err}");
    // Not an IP:PORT.
    let out = run("localhost:9101");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics-addr") && err.contains("expected IP:PORT"),
        "{err}"
    );
    // Any address is allowed, a non-loopback one with a warning.
    let out = run("0.0.0.0:0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("WITHOUT authentication"), "{err}");
    assert!(
        err.contains("serving Prometheus metrics on http://0.0.0.0:"),
        "{err}"
    );
}
