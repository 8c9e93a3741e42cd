//! The agent channel (`--agent-sock`, protocol in docs/agent-protocol.md)
//! against a real VM: a test client speaks the protocol over the Unix
//! socket while the demo workload runs, and everything it said is checked
//! in the host API and in the final report; garbage on other connections is
//! answered with an `error` frame, closed and counted, and the books are not
//! disturbed.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::api::client;

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("resourceful-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the agent socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn send(s: &mut UnixStream, v: &Value) {
    let body = serde_json::to_vec(v).unwrap();
    s.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(&body).unwrap();
}

fn recv(s: &mut UnixStream) -> Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("a frame from the VMM");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Reads an `error` frame, then EOF: the VMM closed the connection.
fn expect_error_and_close(s: &mut UnixStream, about: &str) {
    let e = recv(s);
    assert_eq!(e["type"], "error", "{e}");
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.contains(about), "{reason}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "nothing after the error");
}

fn api(sock: &Path, target: &str) -> Value {
    let r = client::get(sock, target).expect("GET over the API socket");
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn hello() -> Value {
    json!({"type": "hello", "protocol": 3, "agent_version": "test-0", "kernel": "6.1.0-test",
           "boot_id": "5b2a0c1e-0000-4000-8000-000000000001", "hostname": "guest"})
}

const WEB: u32 = 0x1000_0001;
const WEB_WORKER: u32 = 0x1000_0002;
const REQ: u32 = 0x1000_0100;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn process(pid: u32, comm: &str, cgroup: &str, user_ns: u64) -> Value {
    json!({"pid": pid, "ppid": 1, "comm": comm, "cgroup": cgroup, "user_ns": user_ns, "system_ns": 1000,
           "voluntary_switches": 3, "involuntary_switches": 1, "read_bytes": 0, "write_bytes": 0,
           "rss_bytes": 4096, "threads": [{"tid": pid, "comm": comm, "user_ns": user_ns, "system_ns": 1000,
           "voluntary_switches": 3, "involuntary_switches": 1}]})
}

#[test]
fn agent_declarations_context_and_garbage_against_a_running_vm() {
    let agent_sock = scratch("agent");
    let api_sock = scratch("agent-api");
    // The demo workload in rounds, ended by the time limit: long enough for
    // every step below even on a loaded machine.
    let mut config = resourceful_tests::config("demo loop=1", 2);
    config.agent_sock = Some(agent_sock.clone());
    config.api_sock = Some(api_sock.clone());
    config.time_limit_ms = Some(4000);
    let vm = std::thread::spawn(move || resourceful_tests::boot(config));
    wait_for_socket(&agent_sock);
    wait_for_socket(&api_sock);
    let mode = std::fs::metadata(&agent_sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Garbage first, each on its own connection.
    let mut c = connect(&agent_sock);
    send(&mut c, &json!({"type": "end_request", "id": 5}));
    expect_error_and_close(&mut c, "hello must be the first message");
    let mut c = connect(&agent_sock);
    c.write_all(&u32::MAX.to_be_bytes()).unwrap();
    expect_error_and_close(&mut c, "frame length");
    let mut c = connect(&agent_sock);
    send(
        &mut c,
        &json!({"type": "hello", "protocol": 99, "agent_version": "x", "kernel": "k", "boot_id": "b"}),
    );
    expect_error_and_close(&mut c, "protocol 99");
    let mut c = connect(&agent_sock);
    c.write_all(&[0, 0, 0, 5]).unwrap();
    c.write_all(b"{{{{{").unwrap();
    expect_error_and_close(&mut c, "malformed");

    // A well-behaved agent.
    let mut a = connect(&agent_sock);
    send(&mut a, &hello());
    let w = recv(&mut a);
    let next_id = w["next_id"].as_u64().expect("next_id");
    assert!(next_id > 0 && next_id < u64::from(WEB), "{w}");
    assert_eq!(
        w,
        json!({"type": "welcome", "protocol": 3, "tenant": "acme", "previous": "none", "next_id": next_id})
    );
    assert_eq!(
        recv(&mut a),
        json!({"type": "held", "containers": [], "requests": [], "flows": [], "last": true})
    );
    send(
        &mut a,
        &json!({"type": "declare_container", "id": WEB, "name": "web", "cgroup": "/web.slice"}),
    );
    send(
        &mut a,
        &json!({"type": "declare_container", "id": WEB_WORKER, "name": "worker", "parent": WEB,
                "cgroup": "/web.slice/worker"}),
    );
    // A replay of the same declaration is a no-op; a request in an unknown
    // container is refused but keeps the connection.
    send(
        &mut a,
        &json!({"type": "declare_container", "id": WEB, "name": "web", "cgroup": "/web.slice"}),
    );
    send(
        &mut a,
        &json!({"type": "begin_request", "id": REQ + 1, "container": 0x1000_0fff}),
    );
    send(
        &mut a,
        &json!({"type": "begin_request", "id": REQ, "container": WEB_WORKER, "external_id": 42,
                "trace_id": TRACE, "attributes": {"route": "/api/orders"}}),
    );
    send(
        &mut a,
        &json!({"type": "bind_flow", "flow": {"proto": "tcp", "local": "10.0.0.2:40000",
                "remote": "10.0.0.1:443"}, "container": WEB, "request": REQ}),
    );
    // The refusal is answered, in order, before `synced`.
    send(&mut a, &json!({"type": "sync", "seq": 1}));
    assert_eq!(
        recv(&mut a),
        json!({"type": "refused", "message": "begin_request", "id": REQ + 1,
               "reason": "ring_unknown_container"})
    );
    assert_eq!(recv(&mut a), json!({"type": "synced", "seq": 1}));
    send(
        &mut a,
        &json!({"type": "context", "seq": 1, "taken_ns": 5, "interval_ms": 1000,
                "processes": [process(1, "init", "/", 10), process(200, "nginx", "/web.slice", 7_000_000),
                              process(201, "worker (x)", "/web.slice/worker", 3_000_000)],
                "cgroups": [{"path": "/", "cpu_usage_us": 99, "cpu_user_us": 50, "cpu_system_us": 49},
                            {"path": "/web.slice", "cpu_usage_us": 10_500, "cpu_user_us": 10_000,
                             "cpu_system_us": 500, "memory_current": 1_048_576, "io_read_bytes": 4096}]}),
    );

    // The API shows it all once the connection thread has applied it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let procs = loop {
        let p = api(&api_sock, "/v1/processes");
        if p["agent"]["stats"]["reports"] == 1 {
            break p;
        }
        assert!(Instant::now() < deadline, "the context report never arrived: {p}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(procs["provenance"], "agent");
    assert_eq!(procs["agent"]["connected"], true);
    assert_eq!(procs["agent"]["peer"]["hello"]["kernel"], "6.1.0-test");
    let report = &procs["context"]["report"];
    assert_eq!(report["seq"], 1);
    assert_eq!(report["processes"].as_array().unwrap().len(), 3);
    assert_eq!(report["processes"][2]["comm"], "worker (x)");

    let stats = &api(&api_sock, "/v1/vm")["agent"]["stats"];
    assert_eq!(stats["out_of_sequence"], 1, "{stats}");
    assert_eq!(stats["oversized"], 1, "{stats}");
    assert_eq!(stats["bad_version"], 1, "{stats}");
    assert_eq!(stats["malformed"], 1, "{stats}");
    assert_eq!(stats["invalid"], 0, "{stats}");
    assert_eq!(stats["replayed"], 1, "{stats}");
    assert_eq!(stats["rejected"], 1, "{stats}");
    assert_eq!(stats["connections"], 5, "{stats}");

    // The joined view: the hypervisor's charges and the guest's own view of
    // the cgroup side by side.
    let containers = api(&api_sock, "/v1/containers");
    let web = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "web")
        .unwrap_or_else(|| panic!("web in {containers}"));
    let guest = &web["guest"];
    assert_eq!(guest["provenance"], "agent", "{web}");
    assert_eq!(guest["cgroup"], "/web.slice");
    assert_eq!(guest["cpu_usage_us"], 10_500);
    assert_eq!(guest["memory_current"], 1_048_576);
    // nginx and the worker below it.
    assert_eq!(guest["processes"], 2);
    assert_eq!(guest["process_cpu_ns"], 7_000_000 + 1000 + 3_000_000 + 1000);
    let worker = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "web/worker")
        .unwrap_or_else(|| panic!("web/worker in {containers}"));
    assert_eq!(worker["guest"]["processes"], 1);
    // The demo's own containers have no cgroup: no guest view.
    let db = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "db")
        .unwrap();
    assert!(db["guest"].is_null(), "{db}");

    // The live request carries its trace id and attributes.
    let live = api(&api_sock, "/v1/requests?order=begin&limit=10000");
    let r = live
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == REQ)
        .unwrap_or_else(|| panic!("request {REQ} among the requests"));
    assert_eq!(r["state"], "live");
    assert_eq!(r["external_id"], 42);
    assert_eq!(r["trace_id"], TRACE);
    assert_eq!(r["attributes"]["route"], "/api/orders");

    send(&mut a, &json!({"type": "end_request", "id": REQ}));
    send(&mut a, &json!({"type": "retire_container", "id": WEB_WORKER}));
    drop(a);

    let run = vm.join().unwrap();
    assert_eq!(run.end, vmm::vcpu::exit::VmEnd::TimeLimit, "{}", run.console);
    run.assert_conserved();
    // The refused begin is counted under the ring's name for the mistake.
    assert_eq!(run.error("ring_unknown_container"), 1);
    // The channel's counters outlive the VM in the report (non-zero only).
    let agent = &run.report.agent;
    for (k, n) in [
        ("connections", 5),
        ("out_of_sequence", 1),
        ("oversized", 1),
        ("bad_version", 1),
        ("malformed", 1),
        ("replayed", 1),
        ("rejected", 1),
        ("reports", 1),
    ] {
        assert_eq!(agent.get(k), Some(&n), "{k} in {agent:?}");
    }
    assert!(
        !agent.contains_key("invalid"),
        "zero counters are left out: {agent:?}"
    );
    assert!(run.report.to_table(5).contains("agent channel: "));
    // The channel's own work is charged to `unattributed`: every frame the
    // hub handled, and the CPU that took.
    let work = run.container("unattributed").charges.agent;
    assert_eq!(Some(&work.frames), agent.get("frames"), "{agent:?}");
    assert!(work.host_ns > 0);
    assert_eq!(run.report.totals.agent, work, "nobody else has any");
    let req = run.request(REQ);
    assert_eq!(req.state, "finished");
    assert_eq!(req.container_path, "web/worker");
    assert!(run.container("web/worker").retired);
    assert!(!run.container("web").retired);
    // The demo's own work went on beside the agent: its four containers
    // were charged.
    for path in ["frontend", "frontend/api", "db", "batch"] {
        assert!(run.container(path).charges.exits_total.count > 0, "{path}");
    }
    assert!(!agent_sock.exists(), "the agent socket is removed at the end");
}
