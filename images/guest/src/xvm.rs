//! `xvm-client` and `xvm-server`: one distributed request across two VMs
//! on one Ethernet segment. The client, in VM A, calls the server, in VM
//! B, with UDP datagrams that carry the request's trace id (its first 32
//! payload bytes); each VM charges its part to a request begun with that
//! trace id (docs/distributed-requests.md). The guests are told the part's
//! container and id (`xvm_container=`, `xvm_request=`) and name it in their
//! tag slot while they work for it. The host begins the client's part; the
//! server's too, unless `xvm_agent=1`: then the server is its own agent and
//! begins its part, over the agent channel, with the trace id that arrived
//! in the first call. See docs/guest-scenarios.md.

use crate::agent::{self, Frame, FRAME_MAX};
use crate::frame::{self, Ends};
use crate::io::{print, print_dec10};
use crate::net::Net;
use crate::vsock::{op, Conn};
use crate::{acct, arg, finish, parse_u64, virtio, Boot};
use accounting::abi::tag;

/// The client's address.
const CLIENT_IP: [u8; 4] = [10, 77, 0, 2];
/// The server's address.
const SERVER_IP: [u8; 4] = [10, 77, 0, 1];
/// The host's address on the segment (it sends the client's gate).
const HOST_IP: [u8; 4] = [10, 77, 0, 254];
const SERVER_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 5001;
/// Source and destination port of the gate datagram.
const GATE_PORT: u16 = 7100;
/// Calls the client makes; call k carries 100·k payload bytes.
const CALLS: usize = 3;
/// Polls of the RX used ring before an answer counts as missing (seconds).
const POLLS: u64 = 1 << 28;
/// Polls while waiting for the host (the gate) or for the first call.
const LONG_POLLS: u64 = 1 << 34;
/// Bytes of a trace id in hex: the first bytes of every call's payload.
const TRACE_LEN: usize = 32;
/// The server's guest port for its agent connection (`xvm_agent=1`).
const AGENT_LOCAL_PORT: u32 = 43_000;
/// Its (unused) gate stream's port.
const AGENT_GATE_PORT: u32 = 43_001;

/// Sets the slot to tag 0, prints `msg` and exits with `status`.
fn fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

/// The request the host began for this VM's part: `xvm_container=` and
/// `xvm_request=` (decimal).
fn part_tag(b: &Boot) -> u64 {
    let num = |key: &[u8]| {
        arg(b.cmdline, key)
            .and_then(parse_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v != 0)
    };
    match (num(b"xvm_container="), num(b"xvm_request=")) {
        (Some(c), Some(r)) => tag(c, r),
        _ => fail(b, "xvm: no part\n", 60),
    }
}

/// Registers the region and brings up the net device (tag 0).
fn init(b: &Boot) -> Net {
    acct::register();
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_NET) else {
        fail(b, "xvm: no device\n", 62)
    };
    match Net::init(mmio) {
        Ok(d) => d,
        Err(_) => fail(b, "xvm: init failed\n", 63),
    }
}

/// Whether `p` is a call: a trace id (32 lowercase hex digits), then the
/// pattern (`payload_byte(i)` at byte i), at most 400 bytes in all.
fn is_call(p: &[u8]) -> bool {
    p.len() >= TRACE_LEN
        && p.len() <= 400
        && p[..TRACE_LEN]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && p.iter()
            .enumerate()
            .skip(TRACE_LEN)
            .all(|(i, &c)| c == frame::payload_byte(i))
}

fn done(b: &Boot, ignored: u64, line: &str) -> ! {
    print("xvm: ignored=");
    print_dec10(ignored);
    print("\n");
    print(line);
    finish(b, 0)
}

/// `xvm-client`: waits for the host's gate datagram, then, with its slot
/// naming its part, sends the server `CALLS` datagrams (one exit each) and
/// awaits each answer.
pub fn client(b: &Boot) -> ! {
    print("xvm-client: start\n");
    let Some(peer) = arg(b.cmdline, b"net_peer_mac=").and_then(frame::parse_mac) else {
        fail(b, "xvm: no peer mac\n", 61)
    };
    let part = part_tag(b);
    let trace = match arg(b.cmdline, b"xvm_trace=") {
        Some(t) if t.len() == TRACE_LEN && t.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) => t,
        _ => fail(b, "xvm: no trace\n", 70),
    };
    let mut d = init(b);
    let mut ignored = 0u64;
    loop {
        let Some(f) = d.recv(LONG_POLLS) else {
            fail(b, "xvm: no gate\n", 64)
        };
        if frame::udp_payload(f, HOST_IP, GATE_PORT, GATE_PORT).is_some() {
            break;
        }
        ignored += 1;
    }
    acct::set_tag(b.vcpu, part);
    let mut buf = [0u8; 512];
    let mut payload = [0u8; 100 * CALLS];
    for k in 1..=CALLS {
        let e = Ends {
            src_mac: d.mac,
            dst_mac: peer,
            src_ip: CLIENT_IP,
            dst_ip: SERVER_IP,
            src_port: CLIENT_PORT,
            dst_port: SERVER_PORT,
        };
        let len = 100 * k;
        for (i, c) in payload[..len].iter_mut().enumerate() {
            *c = if i < TRACE_LEN {
                trace[i]
            } else {
                frame::payload_byte(i)
            };
        }
        let n = frame::udp_with(&mut buf, &e, k as u16, &payload[..len]);
        if d.send(&buf[..n], 0).is_err() {
            fail(b, "xvm: tx failed\n", 65)
        }
        loop {
            let Some(f) = d.recv(POLLS) else {
                fail(b, "xvm: no reply\n", 66)
            };
            match frame::udp_payload(f, SERVER_IP, SERVER_PORT, CLIENT_PORT) {
                None => ignored += 1,
                Some(p) if p == &payload[..len] => break,
                Some(_) => fail(b, "xvm: bad reply\n", 67),
            }
        }
    }
    acct::set_tag(b.vcpu, 0);
    done(b, ignored, "xvm-client: done\n")
}

/// `xvm-server`: answers `CALLS` datagrams from the client's port with the
/// same payload; each answer is sent (one exit) with the slot naming its
/// part. Frames that are not calls are counted and dropped. With
/// `xvm_agent=1` it first connects to the VMM's agent server (vsock port
/// 1024) and, on the first call, begins its part with the call's trace id
/// and binds the call's flow to it; after the last answer it ends the part.
pub fn server(b: &Boot) -> ! {
    print("xvm-server: start\n");
    let part = part_tag(b);
    let (container, request) = ((part >> 32) as u32, part as u32);
    let mut d = init(b);
    let mut agent = (arg(b.cmdline, b"xvm_agent=") == Some(&b"1"[..])).then(|| {
        let (mut r, mut a, _gate) = agent::open(b, AGENT_LOCAL_PORT, AGENT_GATE_PORT);
        let mut buf = [0u8; FRAME_MAX];
        r.connect(&mut a);
        r.handshake(&mut a, &mut buf);
        (r, a)
    });
    let mut ignored = 0u64;
    let mut buf = [0u8; 512];
    let mut payload = [0u8; 400];
    let mut served = 0;
    while served < CALLS {
        let Some(f) = d.recv(LONG_POLLS) else {
            fail(b, "xvm: no call\n", 68)
        };
        let Some(p) = frame::udp_payload(f, CLIENT_IP, CLIENT_PORT, SERVER_PORT) else {
            ignored += 1;
            continue;
        };
        if !is_call(p) {
            fail(b, "xvm: bad call\n", 69)
        }
        let len = p.len();
        payload[..len].copy_from_slice(p);
        let mut client_mac = [0u8; 6];
        client_mac.copy_from_slice(&f[6..12]);
        if let Some((r, a)) = agent.as_mut().filter(|_| served == 0) {
            begin_part(r, a, container, request, &payload[..TRACE_LEN]);
        }
        served += 1;
        let e = Ends {
            src_mac: d.mac,
            dst_mac: client_mac,
            src_ip: SERVER_IP,
            dst_ip: CLIENT_IP,
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
        };
        let n = frame::udp_with(&mut buf, &e, served as u16, &payload[..len]);
        acct::set_tag(b.vcpu, part);
        if d.send(&buf[..n], 0).is_err() {
            fail(b, "xvm: tx failed\n", 65)
        }
        acct::set_tag(b.vcpu, 0);
    }
    if let Some((r, a)) = agent.as_mut() {
        let end = Frame::new()
            .s(b"{\"type\":\"end_request\",\"id\":")
            .n(u64::from(request))
            .s(b"}")
            .done();
        r.send(a, op::RW, end.bytes(), 0);
        sync(r, a, 2);
    }
    done(b, ignored, "xvm-server: done\n")
}

/// Over the agent channel (slot 0): `declare_container` (`svc`),
/// `begin_request` with `trace`, `bind_flow` of the calls' flow to the
/// part (one packet, one exit each), then [`sync`].
fn begin_part(r: &mut agent::Run<'_>, a: &mut Conn, container: u32, request: u32, trace: &[u8]) {
    let frames = [
        Frame::new()
            .s(b"{\"type\":\"declare_container\",\"id\":")
            .n(u64::from(container))
            .s(b",\"name\":\"svc\"}")
            .done(),
        Frame::new()
            .s(b"{\"type\":\"begin_request\",\"id\":")
            .n(u64::from(request))
            .s(b",\"container\":")
            .n(u64::from(container))
            .s(b",\"trace_id\":\"")
            .s(trace)
            .s(b"\"}")
            .done(),
        Frame::new()
            .s(b"{\"type\":\"bind_flow\",\"flow\":{\"proto\":\"udp\",\"local\":\"10.77.0.1:7000\",")
            .s(b"\"remote\":\"10.77.0.2:5001\"},\"container\":")
            .n(u64::from(container))
            .s(b",\"request\":")
            .n(u64::from(request))
            .s(b"}")
            .done(),
    ];
    for f in &frames {
        r.send(a, op::RW, f.bytes(), 0);
    }
    sync(r, a, 1);
}

/// `sync` with `seq` (one exit) and its answer `synced` (one exit): every
/// frame sent before was applied, none refused (a refusal comes first).
fn sync(r: &mut agent::Run<'_>, a: &mut Conn, seq: u64) {
    let f = Frame::new()
        .s(b"{\"type\":\"sync\",\"seq\":")
        .n(seq)
        .s(b"}")
        .done();
    r.send(a, op::RW, f.bytes(), 0);
    let mut buf = [0u8; FRAME_MAX];
    let n = r.recv_frame(a, &mut buf, 71, "xvm: not synced\n");
    if !agent::contains(&buf[4..n], b"\"type\":\"synced\"") {
        agent::fail(r.b, "xvm: not synced\n", 71)
    }
}
