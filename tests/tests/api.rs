//! The host API (`--api-sock`): a real VM runs the `spin` scenario long
//! enough to be queried over its Unix socket with a hand-written HTTP/1.1
//! client; the endpoints, their errors, the Prometheus text, concurrency,
//! the socket's mode and its removal at the end are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// GETs `target`; returns status, headers (lower-case names) and body.
fn get(sock: &Path, target: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()["HTTP/1.1 ".len()..][..3].parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked")),
        "expected a Content-Length body"
    );
    let len: usize = headers["content-length"].parse().unwrap();
    assert_eq!(body.len(), len);
    (status, headers, body.to_string())
}

fn get_json(sock: &Path, target: &str) -> (u16, Value) {
    let (status, headers, body) = get(sock, target);
    assert!(
        headers["content-type"].starts_with("application/json"),
        "{target}"
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}")),
    )
}

/// A strict parser of the Prometheus text format 0.0.4 (the subset we emit):
/// returns samples as (name, labels, value) and checks that every metric has
/// HELP and TYPE lines before its samples.
fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut help = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP name and text");
            assert!(!doc.is_empty());
            assert!(help.insert(name.to_string()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name and kind");
            assert_eq!(kind, "counter", "{line}");
            assert!(typed.insert(name.to_string()), "second TYPE for {name}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let open = line.find('{').expect("labels");
        let name = &line[..open];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        assert!(
            help.contains(name) && typed.contains(name),
            "{name} has no HELP/TYPE"
        );
        // Labels: key="value" pairs, values with \\ \" \n escapes.
        let mut labels = BTreeMap::new();
        let mut chars = line[open + 1..].char_indices().peekable();
        let close;
        loop {
            let (start, c) = chars.next().expect("unterminated labels");
            if c == '}' {
                close = open + 1 + start;
                break;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next().expect("label key");
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect("label value").1 {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    '\n' => panic!("raw newline in a label value"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(key, value).is_none(), "duplicate label in {line}");
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        }
        let value = line[close + 1..]
            .strip_prefix(' ')
            .expect("space before the value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
        samples.push((name.to_string(), labels, value));
    }
    assert_eq!(help, typed, "HELP and TYPE cover the same metrics");
    samples
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the API socket never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn api_serves_the_live_books() {
    let sock: PathBuf = std::env::temp_dir().join(format!("resourceful-api-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    // About 1.25 × 2.4e9 loop iterations per vCPU: a few seconds of guest
    // time, so the VM is still up while it is queried; it ends by itself.
    let mut config = resourceful_tests::config("spin spin_iters=2400000000", 2);
    config.api_sock = Some(sock.clone());
    let vm = std::thread::spawn(move || resourceful_tests::boot(config));
    wait_for_socket(&sock);

    let mode = std::fs::symlink_metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // GET /v1/vm
    let (status, v) = get_json(&sock, "/v1/vm");
    assert_eq!(status, 200);
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["vcpus"], 2);
    assert_eq!(v["state"], "running");
    assert_eq!(v["boot"], "baremetal");
    assert_eq!(v["kernel"], "builtin:test-guest");
    assert!(v["uptime_ns"].as_u64().unwrap() > 0);
    assert_eq!(
        v["devices"],
        serde_json::json!({ "disks": [], "nets": [], "vsock": null })
    );
    // Every device's counters, live: this VM has only the legacy devices
    // that keep any.
    let names: Vec<&str> = v["device_counters"]
        .as_array()
        .expect("device_counters")
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["i8042", "rtc"]);
    assert_eq!(v["device_counters"][1]["counters"]["bad_time_writes"], 0);
    // Per-reason exits (reasons without exits are left out) add up to the total.
    let by_reason = v["totals"]["exits"].as_object().expect("exits by reason");
    let sum: u64 = by_reason.values().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, v["totals"]["exits_total"]["count"].as_u64().unwrap());

    // GET /v1/containers and /v1/containers/{index}: the spin scenario
    // declares cpu-a and cpu-b before it prints its first line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let containers = loop {
        let (status, c) = get_json(&sock, "/v1/containers");
        assert_eq!(status, 200);
        if c.as_array().unwrap().len() >= 3 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let paths: Vec<&str> = containers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["unattributed", "cpu-a", "cpu-b"]);
    // Paged: a page of 2 links to the rest, which has no link.
    let (status, headers, body) = get(&sock, "/v1/containers?limit=2");
    assert_eq!(status, 200);
    assert_eq!(headers["link"], "</v1/containers?after=1&limit=2>; rel=\"next\"");
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, headers, body) = get(&sock, "/v1/containers?after=1&limit=2");
    assert_eq!(status, 200);
    assert!(!headers.contains_key("link"), "{headers:?}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()[0]["path"], "cpu-b");
    // The client follows the links to the end (the charges move on: the
    // VM runs, so compare which containers came back).
    let all = vmm::api::client::get_all(&sock, "/v1/containers?limit=1").unwrap();
    let all: Value = serde_json::from_str(&all.body).unwrap();
    let all_paths: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(all_paths, paths);
    let (status, one) = get_json(&sock, "/v1/containers/1");
    assert_eq!((status, one["path"].as_str()), (200, Some("cpu-a")));
    let (status, err) = get_json(&sock, "/v1/containers/9999");
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("9999"));
    assert_eq!(get_json(&sock, "/v1/containers/abc").0, 400);

    // GET /v1/requests: this scenario begins none; the parameters are still
    // checked (ordering and limits are unit-tested in vmm::api).
    for target in [
        "/v1/requests",
        "/v1/requests?order=cost&limit=10",
        "/v1/requests?container=1&order=begin&limit=0",
    ] {
        let (status, r) = get_json(&sock, target);
        assert_eq!(status, 200, "{target}");
        assert!(r.as_array().is_some(), "{target}");
    }
    for bad in [
        "/v1/requests?limit=abc",
        "/v1/requests?limit=10001",
        "/v1/requests?order=price",
        "/v1/requests?container=x",
    ] {
        let (status, r) = get_json(&sock, bad);
        assert_eq!(status, 400, "{bad}");
        assert!(r["error"].is_string(), "{bad}");
    }

    // Unknown path and wrong method.
    assert_eq!(get_json(&sock, "/nope").0, 404);
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"DELETE /v1/vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    }

    // Bodies are refused without being read: a huge announced length (which
    // a server that buffers or drains it would choke on) and a chunked body
    // both get 413 and a closed connection, and the API goes on serving.
    for head in [
        "GET /v1/vm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000000\r\n\r\n",
        "GET /v1/vm HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "POST /v1/vm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nabcd",
    ] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("the server answers and closes");
        assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("connection: close"), "{raw}");
    }
    // An oversized request head is refused too.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let long = format!(
            "GET /v1/vm HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let _ = s.write_all(long.as_bytes());
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 431"), "{raw}");
    }
    assert_eq!(get_json(&sock, "/v1/vm").0, 200, "still serving");

    // Every refusal above is counted by status (docs/api.yaml, `api`): 404
    // for container 9999 and /nope, 400 for container abc and the four bad
    // /v1/requests, 405 for DELETE, 413 for the three bodies; the oversized
    // head never reached an answer (the HTTP layer ended it: a bad
    // connection).
    let (_, v) = get_json(&sock, "/v1/vm");
    let api = &v["api"];
    assert_eq!(
        api["by_status"],
        serde_json::json!({ "400": 5, "404": 2, "405": 1, "413": 3 }),
        "{api}"
    );
    assert_eq!(
        (api["client_errors"].as_u64(), api["server_errors"].as_u64()),
        (Some(11), Some(0)),
        "{api}"
    );
    assert_eq!(api["refused_connections"], 0, "{api}");
    assert_eq!(api["bad_connections"], 1, "{api}");
    let answered_so_far = api["requests"].as_u64().unwrap();
    assert!(answered_so_far > 11, "{api}");

    // GET /metrics
    let (status, headers, text) = get(&sock, "/metrics");
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&text);
    let names: BTreeSet<&str> = samples.iter().map(|s| s.0.as_str()).collect();
    for want in [
        "resourceful_exits_total",
        "resourceful_exit_host_seconds_total",
        "resourceful_guest_run_seconds_total",
        "resourceful_block_requests_total",
        "resourceful_block_bytes_total",
        "resourceful_net_frames_total",
        "resourceful_net_bytes_total",
        "resourceful_net_retransmitted_bytes_total",
        "resourceful_net_spoofed_frames_total",
        "resourceful_interrupts_total",
        "resourceful_device_events_total",
    ] {
        assert!(names.contains(want), "{want} missing");
    }
    assert!(samples
        .iter()
        .any(|(n, l, v)| n == "resourceful_device_events_total"
            && l["device"] == "rtc"
            && l["kind"] == "cmos-rtc"
            && l["counter"] == "bad_time_writes"
            && *v == 0.0));
    let port_out_unattributed = samples
        .iter()
        .find(|(n, l, _)| {
            n == "resourceful_exits_total"
                && l["tenant"] == "acme"
                && l["container"] == "unattributed"
                && l["reason"] == "port_out"
        })
        .expect("unattributed port_out series");
    assert!(port_out_unattributed.2 >= 1.0);

    // Concurrent clients: 8 threads × 20 requests.
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let target =
                        ["/v1/vm", "/v1/containers", "/v1/requests?order=cost", "/metrics"][(t + i) % 4];
                    assert_eq!(get(&sock, target).0, 200, "{target}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a client thread failed");
    }

    // Still up after all that (the checks above ran against a live VM).
    assert_eq!(get_json(&sock, "/v1/vm").1["state"], "running");

    // The same counters on /metrics, then in the report: 160 more answers
    // from the clients, and every request above once.
    let (_, _, text) = get(&sock, "/metrics");
    let samples = parse_prometheus(&text);
    let series = |name: &str, label: &str, value: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l.get(label).map(String::as_str) == Some(value))
            .map(|s| s.2)
    };
    assert_eq!(
        series("resourceful_api_events_total", "event", "client_errors"),
        Some(11.0)
    );
    assert_eq!(
        series("resourceful_api_answers_total", "status", "413"),
        Some(3.0)
    );
    assert_eq!(
        series("resourceful_api_events_total", "event", "bad_connections"),
        Some(1.0)
    );
    let answered = series("resourceful_api_events_total", "event", "requests").unwrap();
    assert!(
        answered >= (answered_so_far + 1 + 160) as f64,
        "{answered} after {answered_so_far}"
    );

    let run = vm.join().expect("the VM thread");
    run.assert_clean();
    let api = run.report.vm.api.as_ref().expect("vm.api in the report");
    assert_eq!(
        (api.client_errors, api.server_errors, api.bad_connections),
        (11, 0, 1),
        "{api:?}"
    );
    assert!(api.requests as f64 > answered, "{api:?}");
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "the socket file is removed when the VM ends"
    );
}

#[test]
fn api_sock_on_a_regular_file_is_refused() {
    let path = std::env::temp_dir().join(format!("resourceful-api-file-{}", std::process::id()));
    std::fs::write(&path, b"not a socket").unwrap();
    let mut config = resourceful_tests::config("basic", 1);
    config.api_sock = Some(path.clone());
    let err = vmm::run(&config).unwrap_err().to_string();
    assert!(
        err.contains("--api-sock") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
}
