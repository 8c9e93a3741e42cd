//! The agent protocol over vsock, end to end: the test guest's `agent`
//! scenario connects to the VMM's agent server (vsock port 1024) itself,
//! declares a container and a request with hand-built JSON, charges work to
//! them through its tag slot, sends garbage on a second connection (answered
//! with an `error` frame and closed) and keeps using the first.
//!
//! The guest waits on a gate (a vsock stream to `uds_5000`, served here)
//! before it charges work to what it declared: the connection thread of the
//! agent server applies declarations asynchronously to the vCPU, so the test
//! opens the gate only once the host API shows them. A second gate byte lets
//! the test read the agent counters (`GET /v1/vm`) while the VM still runs.
//! Exact counts: docs/guest-scenarios.md, `agent`.

use std::io::{Read, Write};

use accounting::agent::{self, ProtocolError, VmmMessage};
use accounting::resource::VsockCharge;
use resourceful_tests::{api_json, boot_gated, scratch_dir, wait_for};
use serde_json::Value;

const GATE_PORT: u32 = 5000;
const REQ: u32 = 0x1000_0100;
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

// The frame bodies the guest sends, byte for byte (images/guest/src/agent.rs).
const HELLO: &str = r#"{"type":"hello","protocol":3,"agent_version":"test-guest-1","kernel":"none","boot_id":"resourceful-test-guest","hostname":"test-guest"}"#;
const DECLARE: &str = r#"{"type":"declare_container","id":268435457,"name":"guest-svc","cgroup":"/svc"}"#;
const BEGIN: &str = r#"{"type":"begin_request","id":268435712,"container":268435457,"external_id":7,"trace_id":"0af7651916cd43dd8448eb211c80319c","attributes":{"route":"/guest"}}"#;
const END: &str = r#"{"type":"end_request","id":268435712}"#;
const CONTEXT: &str = r#"{"type":"context","seq":1,"taken_ns":1000,"interval_ms":1000,"processes":[{"pid":1,"ppid":0,"comm":"guest","cgroup":"/svc","user_ns":2000,"system_ns":500,"voluntary_switches":1,"involuntary_switches":0,"read_bytes":0,"write_bytes":0,"rss_bytes":4096}],"cgroups":[{"path":"/svc","cpu_usage_us":3,"cpu_user_us":2,"cpu_system_us":1,"memory_current":8192}]}"#;
/// The garbage: a length prefix of 0xffffffff and nothing after it.
const GARBAGE: usize = 4;

/// Bytes on the wire of a frame with `body`.
fn framed(body: &str) -> u64 {
    4 + body.len() as u64
}

fn find<'a>(list: &'a Value, key: &str, want: &Value) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| &x[key] == want)
}

#[test]
fn the_guest_speaks_the_agent_protocol_over_vsock_and_is_charged_exactly() {
    // The guest's frames are valid messages of the protocol.
    for body in [HELLO, DECLARE, BEGIN, END, CONTEXT] {
        agent::decode_agent(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
    // `welcome` (nothing held; ids 1 and 2 were declared through the ring)
    // and the empty `held` frame, written at once.
    let welcome = agent::encode(&VmmMessage::Welcome {
        protocol: agent::PROTOCOL_VERSION,
        tenant: "acme".into(),
        previous: agent::Previous::None,
        next_id: 3,
    })
    .unwrap()
    .len() as u64
        + agent::encode(&VmmMessage::Held(agent::Held {
            last: true,
            ..Default::default()
        }))
        .unwrap()
        .len() as u64;
    let error = agent::encode(&VmmMessage::Error {
        reason: ProtocolError::FrameLength(u64::from(u32::MAX)).to_string(),
    })
    .unwrap()
    .len() as u64;
    let sent_before_gate = framed(HELLO) + framed(DECLARE) + framed(BEGIN);
    let sent = sent_before_gate + framed(END) + framed(CONTEXT) + GARBAGE as u64;
    // As docs/guest-scenarios.md lists them.
    assert_eq!((sent_before_gate, sent, welcome, error), (380, 782, 153, 75));

    let dir = scratch_dir("agent-vsock");
    let (vm, mut gate, api_sock) = boot_gated(
        &dir,
        "agent",
        format!("scenario=agent agent_gate_port={GATE_PORT}"),
        GATE_PORT,
    );

    // Gate 1: the declarations the guest sent over vsock are applied.
    let live = wait_for("the request begun over vsock", &vm, || {
        let reqs = api_json(&api_sock, "/v1/requests?order=begin&limit=100");
        find(&reqs, "id", &REQ.into()).cloned()
    });
    assert_eq!(live["state"], "live", "{live}");
    assert_eq!(live["trace_id"], TRACE);
    assert_eq!(live["external_id"], 7);
    assert_eq!(live["attributes"]["route"], "/guest");
    let containers = api_json(&api_sock, "/v1/containers");
    assert!(
        find(&containers, "path", &"guest-svc".into()).is_some(),
        "{containers}"
    );
    let vm_info = api_json(&api_sock, "/v1/vm");
    let stats = &vm_info["agent"]["stats"];
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["frames"], 3, "{stats}");
    assert_eq!(stats["bytes"], sent_before_gate, "{stats}");
    let procs = api_json(&api_sock, "/v1/processes");
    assert_eq!(procs["agent"]["connected"], true, "{procs}");
    assert_eq!(procs["agent"]["peer"]["hello"]["agent_version"], "test-guest-1");
    assert_eq!(procs["agent"]["peer"]["hello"]["hostname"], "test-guest");
    gate.write_all(b"1").unwrap();

    // Gate 2: the garbage connection was closed and counted, and the first
    // connection's end_request and context report arrived after it.
    let stats = wait_for("the context report", &vm, || {
        let s = api_json(&api_sock, "/v1/vm")["agent"]["stats"].clone();
        (s["reports"] == 1).then_some(s)
    });
    let want = serde_json::json!({
        "connections": 2, "refused": 0, "frames": 5, "bytes": sent, "malformed": 0, "invalid": 0,
        "oversized": 1, "out_of_sequence": 0, "bad_version": 0, "rejected": 0, "replayed": 0,
        "reports": 1, "flows_refused": 0, "boot_retired": 0, "evicted": 0,
    });
    assert_eq!(stats, want);
    let procs = api_json(&api_sock, "/v1/processes");
    assert_eq!(procs["provenance"], "agent");
    let report = &procs["context"]["report"];
    assert_eq!(report["seq"], 1, "{procs}");
    assert_eq!(report["processes"][0]["comm"], "guest");
    let containers = api_json(&api_sock, "/v1/containers");
    let svc = find(&containers, "path", &"guest-svc".into()).unwrap();
    let guest = &svc["guest"];
    assert_eq!(guest["provenance"], "agent", "{svc}");
    assert_eq!(guest["cgroup"], "/svc");
    assert_eq!(guest["cpu_usage_us"], 3);
    assert_eq!(guest["memory_current"], 8192);
    assert_eq!(guest["processes"], 1);
    assert_eq!(guest["process_cpu_ns"], 2500);
    let reqs = api_json(&api_sock, "/v1/requests?order=begin&limit=100");
    let ended = find(&reqs, "id", &REQ.into()).unwrap_or_else(|| panic!("{reqs}"));
    assert_eq!(ended["state"], "finished", "{ended}");
    gate.write_all(b"2").unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        gate.read_to_end(&mut rest).unwrap(),
        0,
        "the guest closes the gate"
    );

    let run = vm.join().unwrap();
    run.assert_clean();
    assert!(
        run.report.guest_errors.is_empty(),
        "{:?}",
        run.report.guest_errors
    );

    // Exits: [port_in, port_out, mmio_read, mmio_write, shutdown].
    assert_eq!(
        run.counts_of("unattributed"),
        [0, 26, 16, 42, 0],
        "{}",
        run.console
    );
    assert_eq!(run.counts_of("agent"), [0, 0, 0, 16, 0]);
    assert_eq!(run.counts_of("gate"), [0, 0, 0, 6, 0]);
    assert_eq!(run.counts_of("guest-svc"), [0, 7, 3, 4, 0]);
    let req = run.request(REQ);
    assert_eq!(req.state, "finished");
    assert_eq!(req.container_path, "guest-svc");
    assert_eq!(req.external_id, 7);
    assert_eq!(req.trace_id.as_deref(), Some(TRACE));
    assert_eq!(resourceful_tests::counts(&req.charges), [0, 7, 3, 0, 0]);
    let svc = run.container("guest-svc");
    assert_eq!(svc.requests.charged.exits_total.count, 10);

    // vsock: the agent channel is `agent`'s (it opened both connections and
    // sent every packet); the gate is `gate`'s.
    let exact = |v: VsockCharge| VsockCharge { host_ns: 0, ..v };
    assert_eq!(
        exact(run.container("agent").charges.vsock),
        VsockCharge {
            // A: REQUEST, 5 frames, SHUTDOWN; B: REQUEST, garbage, RST.
            tx_packets: 10,
            tx_bytes: sent,
            // A: RESPONSE, welcome, RST; B: RESPONSE, error, SHUTDOWN.
            rx_packets: 6,
            rx_bytes: welcome + error,
            host_ns: 0,
            connections: 2,
            // The guest's RST of B and the device's RST closing A.
            resets: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        exact(run.container("gate").charges.vsock),
        VsockCharge {
            tx_packets: 2,
            tx_bytes: 0,
            rx_packets: 4,
            rx_bytes: 2,
            host_ns: 0,
            connections: 1,
            resets: 1,
            ..Default::default()
        }
    );
    for path in ["guest-svc", "unattributed"] {
        assert_eq!(
            exact(run.container(path).charges.vsock),
            VsockCharge::default(),
            "{path}"
        );
    }
    assert_eq!(req.charges.vsock, VsockCharge::default());
    let t = run.report.totals.vsock;
    assert_eq!(
        (t.tx_packets, t.tx_bytes, t.rx_packets, t.rx_bytes),
        (12, sent, 10, welcome + error + 2)
    );
    assert!(run.console.contains("agent: done"), "{}", run.console);
    let _ = std::fs::remove_dir_all(&dir);
}
