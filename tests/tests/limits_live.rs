//! Per-container limits changed live through the API (`/v1/limits`), in a
//! real VM running the `blk` scenario with `loop=1` (rounds of one writer
//! OUT, one reader IN and one unattributed GET_ID until the VM is stopped;
//! docs/limits-per-container.md). Its own test binary: it ends its VM with
//! the process-wide stop flag.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use resourceful_tests::{api_json, boot, config, scratch_dir, wait_for};
use serde_json::Value;
use vmm::api::client;
use vmm::config::DiskConfig;
use vmm::vcpu::exit::VmEnd;

/// `(writes + reads + other ops, throttle_events)` of container `path` now
/// (zeros before the guest declares it or sends it any block work).
fn block(sock: &Path, path: &str) -> (u64, u64) {
    let all = api_json(sock, "/v1/containers?limit=1000");
    let Some(c) = all.as_array().unwrap().iter().find(|c| c["path"] == path) else {
        return (0, 0);
    };
    let b = &c["charges"]["block"];
    let n = |k: &str| b[k].as_u64().unwrap_or(0);
    (n("writes") + n("reads") + n("other"), n("throttle_events"))
}

/// `method target` with `body`: status and JSON answer.
fn call(sock: &Path, method: &str, target: &str, body: Option<&str>) -> (u16, Value) {
    let r = client::request(sock, method, target, body).expect("a request over the API socket");
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {target}: {e}: {}", r.body));
    (r.status, v)
}

/// Polls until container `path` has done `more` block requests after `from`.
fn wait_ops(
    vm: &std::thread::JoinHandle<resourceful_tests::Run>,
    sock: &Path,
    path: &str,
    at_least: u64,
) -> (u64, u64) {
    wait_for(&format!("{path} to reach {at_least} block requests"), vm, || {
        let (ops, ev) = block(sock, path);
        (ops >= at_least).then_some((ops, ev))
    })
}

#[test]
fn limits_change_live_through_the_api_and_refused_changes_change_nothing() {
    let dir = scratch_dir("limits-live");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("api.sock");
    let mut cfg = config("blk loop=1", 1);
    cfg.disks = vec![DiskConfig {
        path: disk.clone(),
        read_only: false,
    }];
    cfg.api_sock = Some(sock.clone());
    // A guard only: the test stops the VM itself.
    cfg.time_limit_ms = Some(120_000);
    let vm = std::thread::spawn(move || boot(cfg));
    wait_for("the API socket", &vm, || sock.exists().then_some(()));

    // Unlimited: nothing is held.
    let (w0, ev) = wait_ops(&vm, &sock, "writer", 20);
    assert_eq!(ev, 0);
    let (status, v) = call(&sock, "GET", "/v1/limits", None);
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"limits": [], "rejected_changes": 0}));

    // Refused changes: each answers with its reason and changes nothing.
    let refused: [(&str, &str, Option<&str>, u16, &str); 10] = [
        ("PUT", "/v1/limits/writer", Some("{"), 400, "EOF"),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"blk-iops": "1/s"}"#),
            400,
            "unknown key `blk-iops`",
        ),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"blk-ops": "-1/s"}"#),
            400,
            "blk-ops",
        ),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"blk-ops": "0/s"}"#),
            400,
            "at least 1",
        ),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"blk-ops": "99999999999999999999/s"}"#),
            400,
            "not a whole number",
        ),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"blk-ops": "1/s", "priority": 8}"#),
            400,
            "is not a whole number from 0 to 7",
        ),
        (
            "PUT",
            "/v1/limits/writer",
            Some(r#"{"container": "x", "blk-ops": "1/s"}"#),
            400,
            "named by the URL",
        ),
        ("PUT", "/v1/limits/writer", None, 400, "needs a JSON body"),
        (
            "PUT",
            "/v1/limits",
            Some(
                r#"{"limits": [{"container": "writer", "blk-ops": "1/s"}, {"container": "reader", "blk-ops": "0/s"}]}"#,
            ),
            400,
            "reader",
        ),
        ("POST", "/v1/limits", None, 405, "use GET, HEAD, PUT, DELETE"),
    ];
    for (method, target, body, status, says) in refused {
        let (got, v) = call(&sock, method, target, body);
        assert_eq!(got, status, "{method} {target} {body:?}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(says), "{method} {target}: {e}");
    }
    // Oversized bodies: announced (refused unread) or chunked (refused at
    // the cap); 413, the connection closed. The client's write may fail
    // once the server has closed: only the answer matters.
    let chunk = format!("{:x}\r\n{}\r\n", 40_000, "x".repeat(40_000));
    for head in [
        "PUT /v1/limits/writer HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n{\"blk-ops\": \"1/s\"".to_string(),
        format!("PUT /v1/limits/writer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"),
    ] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(head.as_bytes());
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
        assert!(raw.contains("larger than 65536 bytes"), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("connection: close"), "{raw}");
    }
    // A wrong method on a limit says which are allowed.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PATCH /v1/limits/writer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        assert!(
            raw.to_ascii_lowercase().contains("allow: get, head, put, delete"),
            "{raw}"
        );
    }
    let (_, v) = call(&sock, "GET", "/v1/limits", None);
    assert_eq!(v["limits"], serde_json::json!([]), "nothing was applied");
    // The 413s never reached the limits and are not counted; the PATCH is.
    assert_eq!(v["rejected_changes"], 10 + 1, "{v}");
    assert_eq!(call(&sock, "GET", "/v1/limits/writer", None).0, 404);
    assert_eq!(call(&sock, "DELETE", "/v1/limits/writer", None).0, 404);
    let (_, ev) = block(&sock, "writer");
    assert_eq!(ev, 0, "no change was applied, nothing held");

    // Limited live: 1 write per 20 ms, a bucket of 1. Holds appear only now.
    let (status, v) = call(
        &sock,
        "PUT",
        "/v1/limits/writer",
        Some(r#"{"blk-ops": "1/20ms"}"#),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["path"], "writer");
    assert_eq!(
        v["blk_ops"],
        serde_json::json!({"size": 1, "one_time_burst": 0, "refill_time_ms": 20})
    );
    let (w1, _) = block(&sock, "writer");
    let ev1 = wait_for("writer to be held", &vm, || {
        let (_, ev) = block(&sock, "writer");
        (ev >= 3).then_some(ev)
    });
    assert!(w1 >= w0);
    let (_, v) = call(&sock, "GET", "/v1/limits/writer", None);
    let d = &v["devices"][0];
    assert_eq!(d["device"], "disk0", "{v}");
    assert!(d["throttle_events"].as_u64().unwrap() >= 3, "{v}");
    assert!(d["throttled_ns"].as_u64().unwrap() > 0, "{v}");
    assert!(d["ops_tokens"].as_u64().unwrap() <= 1, "{v}");
    assert!(d["bytes_tokens"].is_null(), "{v}");
    assert!(
        d["held"].as_u64().unwrap() <= 1,
        "one write in flight at a time: {v}"
    );
    assert!(ev1 >= 3);
    // The reader and unattributed work are not held.
    assert_eq!(block(&sock, "reader").1, 0);
    assert_eq!(block(&sock, "unattributed").1, 0);

    // DELETE lifts it: at most the one write held then is still counted,
    // then no more holds however many writes follow.
    let (status, v) = call(&sock, "DELETE", "/v1/limits/writer", None);
    assert_eq!((status, &v["deleted"]), (200, &Value::from("writer")), "{v}");
    let (w2, ev2) = block(&sock, "writer");
    let (w3, ev3) = wait_ops(&vm, &sock, "writer", w2 + 30);
    assert!(ev3 <= ev2 + 1, "{ev2} -> {ev3}");
    let (_, ev4) = wait_ops(&vm, &sock, "writer", w3 + 30);
    assert_eq!(ev4, ev3, "no holds after the limit was deleted");
    assert_eq!(
        call(&sock, "GET", "/v1/limits", None).1["limits"],
        serde_json::json!([])
    );

    // `unattributed` (the GET_IDs the guest sends under no container) is
    // limited by its own entry, set with PUT /v1/limits (the file's form).
    let (status, v) = call(
        &sock,
        "PUT",
        "/v1/limits",
        Some(r#"{"limits": [{"container": "unattributed", "blk-ops": "1/20ms"}]}"#),
    );
    assert_eq!(status, 200, "{v}");
    wait_for("unattributed to be held", &vm, || {
        let (_, ev) = block(&sock, "unattributed");
        (ev >= 3).then_some(())
    });
    let (_, ev5) = block(&sock, "writer");
    assert_eq!(ev5, ev4, "writer is no longer limited");
    assert_eq!(block(&sock, "reader").1, 0);

    // A tenant limit (replacing the table): every container's work draws
    // from it, so all of them are held, `reader` included, which no limit
    // of its own ever named.
    let (status, v) = call(
        &sock,
        "PUT",
        "/v1/limits",
        Some(r#"{"limits": [{"container": "tenant", "blk-ops": "1/20ms"}]}"#),
    );
    assert_eq!(status, 200, "{v}");
    let (_, u0) = block(&sock, "unattributed");
    wait_for("every container to be held by the tenant limit", &vm, || {
        let held = |p: &str| block(&sock, p).1;
        (held("reader") >= 2 && held("writer") >= ev5 + 2 && held("unattributed") >= u0 + 2).then_some(())
    });
    let (_, v) = call(&sock, "GET", "/v1/limits/tenant", None);
    assert!(v["devices"][0]["throttle_events"].as_u64().unwrap() >= 2, "{v}");

    // Lift every limit before stopping, so that nothing is held at the
    // stop (a request held then would never complete).
    let (status, v) = call(&sock, "DELETE", "/v1/limits", None);
    assert_eq!((status, &v["limits"]), (200, &serde_json::json!([])), "{v}");
    let (w_now, _) = block(&sock, "writer");
    wait_ops(&vm, &sock, "writer", w_now + 10);
    assert_eq!(call(&sock, "GET", "/v1/limits", None).1["rejected_changes"], 11);
    vmm::vm::STOP_REQUESTED.store(true, Ordering::Release);
    let run = vm.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(run.end, VmEnd::Signal, "{}", run.console);
    run.assert_conserved();
    let b = |p: &str| run.container(p).charges.block;
    let (w, r, u) = (b("writer"), b("reader"), b("unattributed"));
    // Exact counts: each round is one write, then one read, then one
    // GET_ID, after the scenario's own 5 writes, 4 reads, 1 GET_ID (and its
    // flush), none lost: the stop may fall anywhere in a round.
    let rounds = [w.writes - 5, r.reads - 4, u.other - 1];
    assert!(
        rounds[0] >= rounds[1] && rounds[1] >= rounds[2] && rounds[2] + 1 >= rounds[0],
        "{rounds:?}: {w:?} {r:?} {u:?}"
    );
    assert_eq!((w.errors, r.errors, u.errors), (1, 0, 0));
    assert!(r.throttle_events >= 2 && w.throttle_events >= ev4 + 2 && u.throttle_events >= 3 + 2);
    let disk = run.report.devices.iter().find(|d| d.name == "disk0").unwrap();
    let held = w.throttle_events + r.throttle_events + u.throttle_events;
    assert_eq!(disk.counters.get("throttled"), Some(&held));
    assert_eq!(run.conservation_line("block.throttle_events"), (held, held));
    let ns = w.throttled_ns + r.throttled_ns + u.throttled_ns;
    assert_eq!(run.conservation_line("block.throttled_ns"), (ns, ns));
}
