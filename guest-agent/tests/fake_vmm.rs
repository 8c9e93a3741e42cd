//! The whole agent against a fake VMM over a real Unix socket: handshake,
//! declarations, reports; the VMM dies and comes back; the agent reconnects,
//! replays its state and reports what it dropped meanwhile.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::mpsc;

use accounting::agent::{
    decode_agent, encode, AgentMessage, BindFlow, FrameDecoder, Held, HeldContainer, HeldRequest, Previous,
    VmmMessage, PROTOCOL_VERSION,
};
use accounting::agent::{Flow, FlowProto};
use common::{fixture, TempDir};
use guest_agent::agent::{Agent, Options, TaggingMode};
use guest_agent::config::Config;
use guest_agent::link::Endpoint;
use guest_agent::local::Reply;
use guest_agent::state::ID_BASE;

/// The VMM's end of one connection. After the handshake a thread reads
/// the agent's frames, answers each `sync` with `synced` (as the VMM does,
/// after everything before it) and hands the rest to the test.
struct Vmm {
    stream: UnixStream,
    dec: FrameDecoder,
    rx: Option<mpsc::Receiver<AgentMessage>>,
}

fn accept(l: &UnixListener) -> Vmm {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return Vmm {
                    stream: s,
                    dec: FrameDecoder::new(),
                    rx: None,
                };
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the agent did not connect: {e}"),
        }
    }
}

fn read_frame(stream: &mut UnixStream, dec: &mut FrameDecoder) -> Option<AgentMessage> {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(body) = dec.next_frame().unwrap() {
            return Some(decode_agent(&body).unwrap());
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => dec.push(&buf[..n]),
            _ => return None,
        }
    }
}

impl Vmm {
    /// The next message, decoded and validated as the VMM would.
    fn next(&mut self) -> AgentMessage {
        match &self.rx {
            Some(rx) => rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the agent closed the connection or went quiet"),
            None => read_frame(&mut self.stream, &mut self.dec).expect("the agent closed the connection"),
        }
    }

    fn send(&mut self, m: &VmmMessage) {
        self.stream.write_all(&encode(m).unwrap()).unwrap();
    }

    fn handshake(&mut self, held: Held, next_id: u32) {
        let AgentMessage::Hello(h) = self.next() else {
            panic!("hello must come first")
        };
        assert_eq!(h.protocol, PROTOCOL_VERSION);
        assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(!h.kernel.is_empty());
        let previous = if held.is_empty() {
            Previous::None
        } else {
            Previous::SameBoot
        };
        self.send(&VmmMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            tenant: "t".into(),
            previous,
            next_id,
        });
        self.send(&VmmMessage::Held(Held { last: true, ..held }));
        let (tx, rx) = mpsc::channel();
        let mut r = self.stream.try_clone().unwrap();
        let mut w = self.stream.try_clone().unwrap();
        let mut dec = std::mem::take(&mut self.dec);
        std::thread::spawn(move || {
            while let Some(m) = read_frame(&mut r, &mut dec) {
                if let AgentMessage::Sync { seq } = m {
                    let _ = w.write_all(&encode(&VmmMessage::Synced { seq }).unwrap());
                } else if tx.send(m).is_err() {
                    break;
                }
            }
        });
        self.rx = Some(rx);
    }

    /// Messages up to and including the first context report.
    fn until_context(&mut self) -> Vec<AgentMessage> {
        let mut out = Vec::new();
        loop {
            let m = self.next();
            let done = matches!(m, AgentMessage::Context(_));
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(p: &Path) -> Self {
        let w = UnixStream::connect(p).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn call(&mut self, line: &str) -> Reply {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    }
}

fn kinds(ms: &[AgentMessage]) -> Vec<&'static str> {
    ms.iter()
        .map(|m| match m {
            AgentMessage::Hello(_) => "hello",
            AgentMessage::DeclareContainer(_) => "declare",
            AgentMessage::RetireContainer { .. } => "retire",
            AgentMessage::BeginRequest(_) => "begin",
            AgentMessage::EndRequest { .. } => "end",
            AgentMessage::BindFlow(_) => "bind",
            AgentMessage::UnbindFlow { .. } => "unbind",
            AgentMessage::Context(_) => "context",
            AgentMessage::RegisterSlots(_) => "register_slots",
            AgentMessage::UnregisterSlots {} => "unregister_slots",
            AgentMessage::ClockSync { .. } => "clock_sync",
            AgentMessage::Sync { .. } => "sync",
        })
        .collect()
}

#[test]
fn the_agent_declares_reports_reconnects_and_replays() {
    let dir = TempDir::new("vmm");
    let vmm_path = dir.join("vmm.sock");
    let app_path = dir.join("agent.sock");
    let listener = UnixListener::bind(&vmm_path).unwrap();
    let agent = Agent::start(Options {
        connect: Endpoint::Unix(vmm_path.clone()),
        listen: Some(app_path.clone()),
        config: Config::parse(r#"{"containers":[{"cgroup":"/system.slice/*.service"}]}"#, "test").unwrap(),
        interval: Duration::from_millis(20),
        buffer_bytes: 8 * 1024,
        proc_root: fixture("proc"),
        cgroup_root: Some(fixture("cgroup")),
        list_threads: true,
        tagging: TaggingMode::Off,
        bpf_pin_dir: None,
    })
    .unwrap();

    // First connection: hello, welcome, the rule containers, a report.
    let mut vmm = accept(&listener);
    vmm.handshake(Held::default(), 1);
    let first = vmm.until_context();
    let declared: Vec<(String, Option<String>, u32)> = first
        .iter()
        .filter_map(|m| match m {
            AgentMessage::DeclareContainer(d) => Some((d.name.clone(), d.cgroup.clone(), d.id)),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = declared.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, ["db.service", "web.service"]);
    assert_eq!(declared[1].1.as_deref(), Some("/system.slice/web.service"));
    assert!(declared.iter().all(|d| d.2 >= ID_BASE));
    let AgentMessage::Context(report) = first.last().unwrap() else {
        unreachable!()
    };
    assert!(report.processes.iter().any(|p| p.pid == 42 && p.comm == "a) (b"));
    assert_eq!(report.cgroups.len(), 5);
    assert!(report.agent_cpu_ns > 0 && report.agent_rss_bytes > 0);
    assert_eq!(report.drops.reconnects, 0);

    // An application declares a container, a request and a flow.
    let mut app = Client::connect(&app_path);
    let api = app
        .call(r#"{"op":"declare","container":"api"}"#)
        .container
        .unwrap();
    let req = app
        .call(r#"{"op":"begin","container":"api","external_id":42,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#)
        .request
        .unwrap();
    let bound = app.call(&format!(
        r#"{{"op":"bind_flow","proto":"tcp","local":"10.0.0.2:40000","remote":"1.2.3.4:443","container":"api","request":{req}}}"#
    ));
    assert!(bound.ok, "{bound:?}");
    let mut seen = Vec::new();
    while !seen.iter().any(|m| matches!(m, AgentMessage::BindFlow(_))) {
        seen.push(vmm.next());
    }
    let events: Vec<&AgentMessage> = seen
        .iter()
        .filter(|m| !matches!(m, AgentMessage::Context(_)))
        .collect();
    assert!(matches!(events[0], AgentMessage::DeclareContainer(d) if d.id == api && d.name == "api"));
    assert!(
        matches!(events[1], AgentMessage::BeginRequest(b) if b.id == req && b.container == api && b.external_id == 42)
    );
    assert!(matches!(events[2], AgentMessage::BindFlow(b) if b.request == Some(req)));

    // The VMM goes away; meanwhile another request begins.
    drop(vmm);
    drop(listener);
    std::fs::remove_file(&vmm_path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let refused = app.call(r#"{"op":"begin","container":"api"}"#);
    assert!(!refused.ok, "not confirmed while the VMM is away: {refused:?}");
    std::thread::sleep(Duration::from_millis(700));
    assert!(app.call(&format!(r#"{{"op":"end","request":{req}}}"#)).ok);
    std::thread::sleep(Duration::from_millis(700));

    // It comes back, refuses the first attempt, then welcomes the agent.
    let listener = UnixListener::bind(&vmm_path).unwrap();
    let mut refused = accept(&listener);
    assert!(matches!(refused.next(), AgentMessage::Hello(_)));
    refused.send(&VmmMessage::Error {
        reason: "not yet".into(),
    });
    drop(refused);
    let mut vmm = accept(&listener);
    // The VMM kept what the first connection declared and says so.
    let held = Held {
        containers: declared
            .iter()
            .map(|(name, cgroup, id)| HeldContainer {
                id: *id,
                name: name.clone(),
                parent: None,
                cgroup: cgroup.clone(),
            })
            .chain([HeldContainer {
                id: api,
                name: "api".into(),
                parent: None,
                cgroup: None,
            }])
            .collect(),
        requests: vec![HeldRequest {
            id: req,
            container: api,
        }],
        flows: vec![BindFlow {
            flow: Flow {
                proto: FlowProto::Tcp,
                local: "10.0.0.2:40000".parse().unwrap(),
                remote: "1.2.3.4:443".parse().unwrap(),
            },
            container: api,
            request: Some(req),
        }],
        last: true,
    };
    vmm.handshake(held, req + 1);
    let replay = vmm.until_context();
    // The request that ended during the outage is ended first, then the
    // state is replayed under the same ids.
    assert_eq!(
        kinds(&replay),
        ["end", "declare", "declare", "declare", "bind", "context"]
    );
    assert_eq!(replay[0], AgentMessage::EndRequest { id: req });
    assert!(matches!(&replay[4], AgentMessage::BindFlow(b) if b.request.is_none() && b.container == api));
    let replayed_ids: Vec<u32> = replay
        .iter()
        .filter_map(|m| match m {
            AgentMessage::DeclareContainer(d) => Some(d.id),
            _ => None,
        })
        .collect();
    let mut want: Vec<u32> = declared.iter().map(|d| d.2).chain([api]).collect();
    want.sort_unstable();
    assert_eq!(replayed_ids, want, "the same ids, declared again");

    // Connected again, a request is confirmed, under an id above next_id.
    let req2 = app.call(r#"{"op":"begin","container":"api"}"#).request.unwrap();
    assert!(req2 > req);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|m| matches!(m, AgentMessage::BeginRequest(b) if b.id == req2))
    {
        seen.push(vmm.next());
    }

    // Reports kept through the outage come first, then fresh ones; a fresh
    // one carries the drops and the reconnection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_seq = 0;
    loop {
        assert!(Instant::now() < deadline, "no report showed the drops");
        if let AgentMessage::Context(c) = vmm.next() {
            assert!(c.seq > last_seq, "reports stay in order");
            last_seq = c.seq;
            if c.drops.reconnects >= 1 {
                assert!(c.drops.messages > 0, "{:?}", c.drops);
                assert!(c.drops.bytes > 0);
                break;
            }
        }
    }

    // The application crashes: its request ends and its flow is unbound.
    drop(app);
    let mut after = Vec::new();
    while !after
        .iter()
        .any(|m| matches!(m, AgentMessage::EndRequest { id } if *id == req2))
    {
        after.push(vmm.next());
    }
    assert!(after.iter().any(|m| matches!(m, AgentMessage::UnbindFlow { .. })));
    agent.stop();
    assert!(!app_path.exists(), "the socket is removed on stop");
}
