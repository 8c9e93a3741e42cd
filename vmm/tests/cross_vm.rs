//! One request across two VMs, joined by its trace id
//! (docs/distributed-requests.md).
//!
//! A private network namespace holds a bridge and two TAPs; two VMMs (the
//! `resourceful` binary) run the test guest there: `xvm-client` in VM A,
//! `xvm-server` in VM B. On each VM a host-side agent (`--agent-sock`)
//! begins the VM's part of the request under the same W3C trace id; on B it
//! also binds the flow A's calls arrive on, so B's RX frames are charged to
//! B's part. A's guest sends three UDP calls once the host's gate datagram
//! arrives; B's guest answers each, its slot naming its part. Then
//! `resourceful trace` joins both parts, and each VM's final report must
//! conserve. Every count is exact (docs/guest-scenarios.md, `xvm-*`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{scratch, Vmm};
use serde_json::{json, Value};
use vmm::xvm_net::{HostAgent, NetNs, CLIENT_MAC, SERVER_MAC};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The agents' container and request ids (each VM has its own books).
const CONTAINER: u32 = 0x1000_0001;
const REQUEST: u32 = 0x1000_0100;
/// The three calls' frames: 14 + 20 + 8 + 100·k bytes.
const CALL_BYTES: u64 = 142 + 242 + 342;
/// The gate datagram's frame: 14 + 20 + 8 + 2 bytes of payload.
const GATE_BYTES: u64 = 44;
/// Each guest's exits once it holds: 59 unattributed `port_out` (printed
/// bytes), 33 + 20 unattributed MMIO (register and net init), 3 MMIO
/// writes (its TX notifies) charged to its part.
const EXITS: u64 = 59 + 33 + 20 + 3;

/// The namespace of this file's test `tag` (they run in parallel):
/// [`NetNs`], removed with everything in it when dropped.
fn netns(tag: &str) -> NetNs {
    NetNs::new(&format!("rsrc-xvm{}-{tag}", std::process::id())).expect("the namespace, bridge and TAPs")
}

/// A host-side agent connection to one VMM ([`HostAgent`]).
struct Agent(HostAgent);

impl Agent {
    fn connect(path: &Path) -> Self {
        Self(HostAgent::connect(path, "cross-vm-test").expect("the agent connects"))
    }

    /// Sends `msgs`, then `sync`: every one must be applied (nothing refused).
    fn apply(&mut self, msgs: &[Value], seq: u64) {
        self.0.apply(msgs, seq).expect("applied");
    }

    /// Declares `name` and begins this VM's part of the trace.
    fn begin_part(&mut self, name: &str, extra: &[Value]) {
        self.0
            .begin_part(CONTAINER, name, REQUEST, TRACE, extra)
            .expect("the part begun");
    }
}

fn wait_for_path(p: &Path, vmm: &mut Vmm) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared:\n{}",
            p.display(),
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vm_view(vmm: &Vmm) -> Value {
    let r = vmm::api::client::get(&vmm.api_sock, "/v1/vm").expect("GET /v1/vm");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str::<Value>(&r.body).unwrap()
}

/// Polls `GET /v1/vm` until `f` of its totals holds (the guest got there).
fn wait_until(vmm: &Vmm, what: &str, f: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vm = vm_view(vmm);
        if f(&vm["totals"]) {
            return;
        }
        if Instant::now() >= deadline {
            // The links of this process's namespaces, for a frame that did
            // not arrive: which TAP sent (to its VMM) or dropped it.
            let out = Command::new("sh")
                .args(["-c", &format!("for n in $(ip netns list | grep -o 'rsrc-xvm{}[^ ]*'); do echo $n; ip netns exec $n ip -s link; ip netns exec $n bridge fdb show; done", std::process::id())])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!("{out}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {}\ndevices: {}\n{}\nconsole: {}",
            vm["totals"],
            vm["device_counters"],
            vmm.stderr(),
            std::fs::read_to_string(&vmm.console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exits(t: &Value, reason: &str) -> u64 {
    t["exits"][reason]["count"].as_u64().unwrap_or(0)
}

fn start(
    ns: &NetNs,
    tenant: &str,
    scenario: &str,
    tap: &str,
    mac: &str,
    more: &str,
) -> (Vmm, std::path::PathBuf) {
    let agent_sock = scratch(&format!("{tenant}-agent.sock"));
    let cmdline = format!(
        "scenario={scenario} hold=1 xvm_container={CONTAINER} xvm_request={REQUEST} net_peer_mac={SERVER_MAC} \
         xvm_trace={TRACE} {more}"
    );
    let net = format!("tap={tap},mac={mac}");
    let agent = agent_sock.to_str().unwrap();
    let mut flags = vec!["--net", &net, "--agent-sock", agent];
    if more.contains("xvm_agent=1") {
        // The guest's own agent channel: vsock port 1024.
        flags.extend(["--vsock", "cid=3"]);
    }
    let mut vmm = Vmm::start_in(Some(&ns.name), tenant, &cmdline, 1, &flags);
    // A VMM killed by a failing test leaves its agent socket behind.
    vmm.also_remove.push(agent_sock.clone());
    wait_for_path(&agent_sock, &mut vmm);
    let api = vmm.api_sock.clone();
    wait_for_path(&api, &mut vmm);
    (vmm, agent_sock)
}

fn trace(socks: &[&Path], json: bool) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resourceful"));
    cmd.args(["trace", TRACE]);
    for s in socks {
        cmd.arg("--api-sock").arg(s);
    }
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("resourceful trace runs");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn net(c: &Value) -> [u64; 4] {
    ["tx_frames", "tx_bytes", "rx_frames", "rx_bytes"].map(|k| c["net"][k].as_u64().unwrap_or(0))
}

/// The final report: conservation holds, and the part's charges.
fn check_report(vmm: &Vmm, container: &str, exits: u64) -> Value {
    let text = std::fs::read_to_string(&vmm.report).expect("the JSON report");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["conservation"]["holds"], true, "{}", r["conservation"]);
    for l in r["conservation"]["lines"].as_array().unwrap() {
        assert_eq!(l["tenant_total"], l["containers_sum"], "{l}");
    }
    assert_eq!(r["totals"]["exits_total"]["count"], exits);
    let req = r["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == REQUEST)
        .expect("the part in the report")
        .clone();
    assert_eq!(req["container_path"], container);
    assert_eq!(req["trace_id"], TRACE);
    assert_eq!(req["state"], "finished");
    req
}

/// Who begins B's part, and whether the calls' flow is bound to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    /// A host-side agent, with `bind_flow`.
    HostBound,
    /// A host-side agent, without `bind_flow`.
    HostUnbound,
    /// B's guest, over its own agent channel (`xvm_agent=1`), with the
    /// trace id that arrived in the first call, and `bind_flow`.
    Guest,
}

/// B's exits in `xvm_agent=1` mode: [`EXITS`] plus the vsock device (6
/// probe reads, 39 + 12 init), and 12 packets on the agent stream (REQUEST
/// and RESPONSE, `hello` and `welcome`, 3 declarations and `sync` and
/// `synced`, `end_request` and `sync` and `synced`).
const GUEST_AGENT_EXITS: u64 = EXITS + 6 + 39 + 12 + 12;

/// Both VMs, their parts begun, the three calls made and answered, the
/// parts ended.
struct Setup {
    ns: NetNs,
    a: Vmm,
    b: Vmm,
    agents: (Agent, Option<Agent>),
}

fn call_across(tag: &str, server: Server) -> Setup {
    let ns = netns(tag);
    // B first: its part begun (and the calls' flow bound to it) before any
    // call can arrive, unless its guest does that itself.
    let more = if server == Server::Guest {
        "xvm_agent=1"
    } else {
        ""
    };
    let (b, b_agent) = start(
        &ns,
        &format!("globex{tag}"),
        "xvm-server",
        "tapb",
        SERVER_MAC,
        more,
    );
    let binding = json!({"type": "bind_flow", "flow": {"proto": "udp", "local": "10.77.0.1:7000",
                         "remote": "10.77.0.2:5001"}, "container": CONTAINER, "request": REQUEST});
    let mut agent_b = (server != Server::Guest).then(|| {
        let mut agent = Agent::connect(&b_agent);
        let bind = if server == Server::HostBound {
            std::slice::from_ref(&binding)
        } else {
            &[]
        };
        agent.begin_part("svc", bind);
        agent
    });
    let (a, a_agent) = start(&ns, &format!("acme{tag}"), "xvm-client", "tapa", CLIENT_MAC, "");
    let mut agent_a = Agent::connect(&a_agent);
    agent_a.begin_part("web", &[]);
    // Both guests past their net init (its last exit is the RX notify; on
    // a guest agent's VM, the `welcome` packet's): B polls for calls, A for
    // its gate.
    let b_ready = if server == Server::Guest { 33 + 39 + 4 } else { 33 };
    wait_until(&a, "net init", |t| exits(t, "mmio_write") == 33);
    wait_until(&b, "net init", |t| exits(t, "mmio_write") == b_ready);
    for tap in ["tapa", "tapb"] {
        ns.wait_forwarding(tap).expect("forwarding");
    }
    ns.send_gate().expect("the gate sent");
    let b_exits = if server == Server::Guest {
        GUEST_AGENT_EXITS
    } else {
        EXITS
    };
    wait_until(&a, "the calls", |t| t["exits_total"]["count"] == EXITS);
    wait_until(&b, "the calls", |t| t["exits_total"]["count"] == b_exits);
    agent_a.apply(&[json!({"type": "end_request", "id": REQUEST})], 2);
    if let Some(agent) = agent_b.as_mut() {
        agent.apply(&[json!({"type": "end_request", "id": REQUEST})], 2);
    }
    Setup {
        ns,
        a,
        b,
        agents: (agent_a, agent_b),
    }
}

/// Without `bind_flow` on B, B's device knows nothing of the first call's
/// flow: that frame is B's `unattributed`; B's first answer teaches it the
/// flow (under the slot's part), so the later calls are the part's
/// (docs/distributed-requests.md).
#[test]
fn without_the_binding_the_first_call_is_unattributed_on_the_server() {
    let Setup {
        ns,
        mut a,
        mut b,
        agents,
    } = call_across("nobind", Server::HostUnbound);
    drop(agents);
    assert_eq!(a.stop(), Some(1));
    assert_eq!(b.stop(), Some(1));
    let part = check_report(&b, "svc", EXITS);
    assert_eq!(net(&part["charges"]), [3, CALL_BYTES, 2, 242 + 342]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&b.report).unwrap()).unwrap();
    let unattributed = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "unattributed")
        .unwrap();
    assert_eq!(net(&unattributed["charges"]), [0, 0, 1, 142]);
    // A is as with the binding.
    assert_eq!(
        net(&check_report(&a, "web", EXITS)["charges"]),
        [3, CALL_BYTES, 3, CALL_BYTES]
    );
    drop(ns);
}

#[test]
fn a_request_across_two_vms_is_joined_by_its_trace_id() {
    // The namespace lives (and is removed) with `_ns`.
    let Setup {
        ns: _ns,
        mut a,
        mut b,
        agents: (agent_a, agent_b),
    } = call_across("", Server::HostBound);

    // The join, with a socket that does not exist: named on one line, the
    // two VMs still joined, exit status 1.
    let gone = scratch("gone.sock");
    let (code, out, err) = trace(&[&a.api_sock, &gone, &b.api_sock], true);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(gone.to_str().unwrap()) && err.contains("--api-sock"),
        "{err}"
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["trace_id"], TRACE);
    assert_eq!(j["parts"], 2);
    assert_eq!(j["unreachable"][0]["api_sock"], gone.to_str().unwrap());
    // Total: A's three calls out and their answers in, B's three calls in
    // and answers out; one TX notify exit per frame sent, on each side.
    let total = &j["total"];
    assert_eq!(net(total), [6, 2 * CALL_BYTES, 6, 2 * CALL_BYTES]);
    assert_eq!(exits(total, "mmio_write"), 6);
    assert_eq!(total["exits_total"]["count"], 6);
    let vms = j["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    for (vm, sock, tenant, container) in [
        (&vms[0], &a.api_sock, "acme", "web"),
        (&vms[1], &b.api_sock, "globex", "svc"),
    ] {
        assert_eq!(vm["api_sock"], sock.to_str().unwrap());
        assert_eq!(vm["tenant"], tenant);
        assert_eq!(vm["parts"], 1);
        assert_eq!(net(&vm["total"]), [3, CALL_BYTES, 3, CALL_BYTES], "{tenant}");
        assert_eq!(exits(&vm["total"], "mmio_write"), 3, "{tenant}");
        assert_eq!(vm["containers"][0]["path"], container);
        assert_eq!(vm["containers"][0]["total"], vm["total"]);
    }
    let parts = j["requests"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert!(parts
        .iter()
        .all(|p| p["request"]["trace_id"] == TRACE && p["request"]["id"] == REQUEST));
    // The table, all sockets reachable: exit status 0.
    let (code, table, err) = trace(&[&a.api_sock, &b.api_sock], false);
    assert_eq!(code, Some(0), "{err}");
    assert!(table.contains("2 part(s) in 2 VM(s)"), "{table}");
    assert!(
        table.contains(a.api_sock.to_str().unwrap()) && table.contains("globex"),
        "{table}"
    );
    assert!(!table.contains("unreachable"), "{table}");
    eprintln!("{table}");
    // A directory stands for every socket in it (here: links to both).
    let dir = scratch("socks");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::hard_link(&a.api_sock, dir.join("a.sock")).unwrap();
    std::fs::hard_link(&b.api_sock, dir.join("b.sock")).unwrap();
    let (code, out, err) = trace(&[&dir], true);
    assert_eq!(code, Some(0), "{err}");
    let by_dir: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&by_dir["parts"], &by_dir["total"]), (&j["parts"], &j["total"]));
    let _ = std::fs::remove_dir_all(&dir);

    // Each VM's own books, final: its part as the join saw it, the rest
    // where it belongs, conservation.
    drop((agent_a, agent_b));
    assert_eq!(a.stop(), Some(1), "ended by SIGTERM");
    assert_eq!(b.stop(), Some(1), "ended by SIGTERM");
    let ra = check_report(&a, "web", EXITS);
    let rb = check_report(&b, "svc", EXITS);
    for (r, vm) in [(&ra, &vms[0]), (&rb, &vms[1])] {
        assert_eq!(net(&r["charges"]), [3, CALL_BYTES, 3, CALL_BYTES]);
        assert_eq!(r["charges"]["exits"], vm["total"]["exits"]);
    }
    // A received one frame outside its part: the host's gate, no flow.
    let report_a: Value = serde_json::from_str(&std::fs::read_to_string(&a.report).unwrap()).unwrap();
    assert_eq!(
        net(&report_a["totals"]),
        [3, CALL_BYTES, 4, CALL_BYTES + GATE_BYTES]
    );
    let unattributed = report_a["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "unattributed")
        .unwrap();
    assert_eq!(net(&unattributed["charges"]), [0, 0, 1, GATE_BYTES]);
    let report_b: Value = serde_json::from_str(&std::fs::read_to_string(&b.report).unwrap()).unwrap();
    assert_eq!(net(&report_b["totals"]), [3, CALL_BYTES, 3, CALL_BYTES]);
    for vmm in [&a, &b] {
        let console = std::fs::read_to_string(&vmm.console).unwrap();
        assert!(console.contains("xvm: ignored=0000000000\n"), "{console}");
    }
}

/// B's guest is its own agent: no one on B's host knows the trace id; the
/// guest begins its part with the one that arrived in the first call (and
/// binds the flow), so that call's frame, delivered before, is B's
/// `unattributed`, and the rest is the part's. The join finds both parts.
#[test]
fn the_serving_guest_begins_its_part_with_the_trace_id_that_arrived() {
    let Setup {
        ns: _ns,
        mut a,
        mut b,
        agents,
    } = call_across("guest", Server::Guest);
    let (code, out, err) = trace(&[&a.api_sock, &b.api_sock], true);
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["parts"], 2);
    assert_eq!(net(&j["total"]), [6, 2 * CALL_BYTES, 5, 2 * CALL_BYTES - 142]);
    assert_eq!(exits(&j["total"], "mmio_write"), 6);
    let b_part = &j["vms"][1];
    assert_eq!(b_part["containers"][0]["path"], "svc");
    assert_eq!(net(&b_part["total"]), [3, CALL_BYTES, 2, 242 + 342]);
    drop(agents);
    assert_eq!(a.stop(), Some(1));
    assert_eq!(b.stop(), Some(1));
    let part = check_report(&b, "svc", GUEST_AGENT_EXITS);
    assert_eq!(net(&part["charges"]), [3, CALL_BYTES, 2, 242 + 342]);
    assert_eq!(exits(&part["charges"], "mmio_write"), 3);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&b.report).unwrap()).unwrap();
    let unattributed = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "unattributed")
        .unwrap();
    assert_eq!(net(&unattributed["charges"]), [0, 0, 1, 142]);
    assert_eq!(
        report["guest_errors"].as_object().map_or(0, |e| e.len()),
        0,
        "{}",
        report["guest_errors"]
    );
    check_report(&a, "web", EXITS);
}

/// A TRACE_ID that is not one is refused before any socket is read.
#[test]
fn a_malformed_trace_id_is_refused_before_anything_is_read() {
    for bad in [
        "4bf9",
        "00000000000000000000000000000000",
        "g bf92f3577b34da6a3ce929d0e0e473",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_resourceful"))
            .args(["trace", bad, "--api-sock", "/nonexistent/a.sock"])
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("TRACE_ID") && err.contains("32 hex digits"), "{err}");
        assert!(!err.contains("nonexistent") && out.stdout.is_empty(), "{err}");
    }
}
