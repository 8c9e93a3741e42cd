//! `--otlp-endpoint` and `--otlp-interval` through the `resourceful`
//! binary (docs/opentelemetry.md): mistakes name the flag and the expected
//! form; a real run, every thread filtered (the main thread too), exports
//! every finished request to a collector in the test; and without the flag
//! the report has no `otlp`. The field-by-field check of what is exported
//! is `tests/tests/otlp.rs`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accounting::report::Report;

fn resourceful(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn otlp_mistakes_name_the_flag_and_the_expected_form() {
    for bad in [
        "https://127.0.0.1:4318",
        "127.0.0.1:4318",
        "http://127.0.0.1:0",
        "http://127.0.0.1:4318/v1/traces",
        "http://",
    ] {
        let out = resourceful(&["demo", "--vms", "1", "--otlp-endpoint", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let e = stderr(&out);
        assert!(
            e.contains("--otlp-endpoint")
                && e.contains("http://HOST[:PORT][/PATH]")
                && e.contains("/v1/traces"),
            "{bad}: {e}"
        );
    }
    for bad in ["0", "0.05", "3601", "nan", "ten"] {
        let out = resourceful(&[
            "demo",
            "--vms",
            "1",
            "--otlp-endpoint",
            "http://127.0.0.1:1",
            "--otlp-interval",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let e = stderr(&out);
        assert!(
            e.contains("--otlp-interval") && e.contains("from 0.1 to 3600"),
            "{bad}: {e}"
        );
    }
    let out = resourceful(&["demo", "--vms", "1", "--otlp-interval", "1"]);
    assert!(stderr(&out).contains("--otlp-endpoint"), "{}", stderr(&out));
    // Resolved when the VM starts: a name that does not resolve stops it.
    let out = resourceful(&[
        "demo",
        "--vms",
        "1",
        "--otlp-endpoint",
        "http://no-such-host.invalid:4318",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("--otlp-endpoint") && e.contains("cannot resolve"),
        "{e}"
    );
}

/// A collector that accepts everything: counts the POSTs by path.
fn accept_all(listener: TcpListener, stop: Arc<AtomicBool>, traces: Arc<AtomicU64>, metrics: Arc<AtomicU64>) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Acquire) {
        let Ok((mut c, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_end, len) = loop {
            let n = c.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                break (i + 4, len);
            }
        };
        while buf.len() < head_end + len {
            let n = c.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        if buf.starts_with(b"POST /v1/traces ") {
            traces.fetch_add(1, Ordering::Relaxed);
        } else {
            assert!(buf.starts_with(b"POST /v1/metrics "));
            metrics.fetch_add(1, Ordering::Relaxed);
        }
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    }
}

#[test]
fn the_binary_exports_every_finished_request_under_its_sandbox() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (traces, metrics) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let rx = {
        let (s, t, m) = (Arc::clone(&stop), Arc::clone(&traces), Arc::clone(&metrics));
        std::thread::spawn(move || accept_all(listener, s, t, m))
    };
    let out = resourceful(&[
        "demo",
        "--vms",
        "1",
        "--json",
        "--otlp-endpoint",
        &url,
        "--otlp-interval",
        "0.2",
    ]);
    stop.store(true, Ordering::Release);
    rx.join().expect("the collector thread");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report.vm.seccomp, "on");
    let o = report.vm.otlp.expect("vm.otlp");
    let finished = report.requests.iter().filter(|r| r.state == "finished").count() as u64;
    assert!(finished > 0);
    assert_eq!(
        (o.spans_exported, o.spans_dropped, o.spans_queued),
        (finished, 0, 0)
    );
    assert_eq!(o.traces_url, format!("{url}/v1/traces"));
    assert!(traces.load(Ordering::Relaxed) >= finished.div_ceil(512));
    assert_eq!(metrics.load(Ordering::Relaxed), o.metric_exports);
    assert!(o.metric_exports >= 1);

    // The table says it too; here with no collector: connections refused,
    // every span counted as dropped, and the run still succeeds.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("http://127.0.0.1:{port}");
    let out = resourceful(&["demo", "--vms", "1", "--otlp-endpoint", &refused]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = format!("  otlp to {refused}/v1/traces: 0 spans exported, {finished} dropped (0 evicted before export, {finished} failed); 0 metric exports, ");
    assert!(table.lines().any(|l| l.starts_with(&line)), "{line} in:\n{table}");

    // Without the flag: nothing exported, nothing reported.
    let out = resourceful(&["demo", "--vms", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.vm.otlp.is_none());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["vm"].get("otlp").is_none());
}
