//! The `agent` scenario: the test guest speaks the agent protocol
//! (docs/agent-protocol.md) over vsock to the VMM's own agent server on
//! host port 1024, with hand-built JSON (no serde here), and charges work to
//! the container and request it declared that way.
//!
//! Declarations sent over the agent channel are applied by the VMM's
//! connection thread, asynchronously to this vCPU, and the guest reads
//! nothing after `welcome` (and the `held` frame that comes with it in
//! one packet). So before charging work to what it
//! declared, the guest waits on a **gate**: a second vsock stream, to a host
//! port served by the test (hybrid vsock, `uds=PATH`: `PATH_<port>`), on
//! which the test writes one byte once the host API shows the declarations.
//! The test writes a second byte once it has read the agent counters, and
//! only then does the guest close its connections. Everything is therefore
//! in a fixed order and every count is exact (docs/guest-scenarios.md).

use crate::acct;
use crate::io::{mmio_read_work, mmio_write_work, port_work, print};
use crate::virtio::{self, UsedError};
use crate::vsock::{self, op, Conn, Vsock};
use crate::{arg, finish, parse_u64, Boot};
use accounting::abi::{tag, NO_REQUEST};

/// Ring-declared container that opens the agent connections and sends on
/// them: every vsock charge of the agent channel lands here.
pub const AG_AGENT: u32 = 1;
/// Ring-declared container that opens the gate and waits on it.
pub const AG_GATE: u32 = 2;
/// The container declared over the agent channel (`guest-svc`, cgroup `/svc`).
pub const AG_SVC: u32 = 0x1000_0001;
/// The request begun over the agent channel, in `guest-svc`.
pub const AG_REQ: u32 = 0x1000_0100;
/// Its external id.
pub const AG_EXTERNAL: u64 = 7;
/// Its trace id.
pub const AG_TRACE: &[u8] = b"0af7651916cd43dd8448eb211c80319c";
/// The host port of the VMM's agent server (`accounting::agent::
/// AGENT_VSOCK_PORT`, which needs `std`).
pub(crate) const AGENT_PORT: u32 = 1024;
/// Guest ports: the agent connection, the garbage connection, the gate.
const PORT_AGENT: u32 = 41_000;
const PORT_GARBAGE: u32 = 41_001;
const PORT_GATE: u32 = 41_002;
/// Default host port of the gate (`agent_gate_port=` overrides).
pub(crate) const GATE_PORT: u32 = 5000;
/// Polls for a packet the VMM sends on its own (about a second or more).
const POLLS: u64 = 1 << 28;
/// Polls for a gate byte: the test writes it after polling the API.
const GATE_POLLS: u64 = 1 << 32;
/// Longest frame this guest builds or accepts.
pub(crate) const FRAME_MAX: usize = 512;

/// Exit statuses.
pub(crate) mod status {
    pub const NO_DEVICE: u32 = 40;
    pub const INIT: u32 = 41;
    pub const TX: u32 = 42;
    pub const TIMEOUT: u32 = 43;
    pub const UNEXPECTED: u32 = 44;
    pub const NO_WELCOME: u32 = 45;
    pub const NO_ERROR: u32 = 46;
    pub const NOT_CLOSED: u32 = 47;
    pub const BAD_GATE: u32 = 48;
    pub const REFUSED: u32 = 49;
    /// `agent-slots`: the answer to `register_slots` is not the expected one.
    pub const SLOTS_REPLY: u32 = 50;
}

/// An agent frame being built: 4-byte big-endian length, then the body.
pub(crate) struct Frame {
    buf: [u8; FRAME_MAX],
    len: usize,
}

impl Frame {
    pub(crate) fn new() -> Self {
        Frame {
            buf: [0; FRAME_MAX],
            len: 4,
        }
    }

    pub(crate) fn s(mut self, bytes: &[u8]) -> Self {
        let n = bytes.len().min(FRAME_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    pub(crate) fn n(self, mut v: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.s(&digits[i..])
    }

    /// The frame with its length prefix filled in.
    pub(crate) fn done(mut self) -> Self {
        let body = (self.len - 4) as u32;
        self.buf[..4].copy_from_slice(&body.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn hello() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"hello\",\"protocol\":3,\"agent_version\":\"test-guest-1\",")
        .s(b"\"kernel\":\"none\",\"boot_id\":\"resourceful-test-guest\",\"hostname\":\"test-guest\"}")
        .done()
}

fn declare_container() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"declare_container\",\"id\":")
        .n(u64::from(AG_SVC))
        .s(b",\"name\":\"guest-svc\",\"cgroup\":\"/svc\"}")
        .done()
}

fn begin_request() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"begin_request\",\"id\":")
        .n(u64::from(AG_REQ))
        .s(b",\"container\":")
        .n(u64::from(AG_SVC))
        .s(b",\"external_id\":")
        .n(AG_EXTERNAL)
        .s(b",\"trace_id\":\"")
        .s(AG_TRACE)
        .s(b"\",\"attributes\":{\"route\":\"/guest\"}}")
        .done()
}

fn end_request() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"end_request\",\"id\":")
        .n(u64::from(AG_REQ))
        .s(b"}")
        .done()
}

fn context() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"context\",\"seq\":1,\"taken_ns\":1000,\"interval_ms\":1000,\"processes\":[")
        .s(b"{\"pid\":1,\"ppid\":0,\"comm\":\"guest\",\"cgroup\":\"/svc\",\"user_ns\":2000,")
        .s(b"\"system_ns\":500,\"voluntary_switches\":1,\"involuntary_switches\":0,")
        .s(b"\"read_bytes\":0,\"write_bytes\":0,\"rss_bytes\":4096}],")
        .s(b"\"cgroups\":[{\"path\":\"/svc\",\"cpu_usage_us\":3,\"cpu_user_us\":2,")
        .s(b"\"cpu_system_us\":1,\"memory_current\":8192}]}")
        .done()
}

/// Whether `hay` contains `needle`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sets the slot to tag 0, prints `msg` and exits with `status`.
pub(crate) fn fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

pub(crate) struct Run<'a> {
    pub(crate) b: &'a Boot,
    pub(crate) d: Vsock,
}

impl Run<'_> {
    pub(crate) fn send(&mut self, c: &Conn, op: u16, payload: &[u8], flags: u32) {
        match self.d.send_on(c, op, payload, flags) {
            Ok(()) => {}
            Err(UsedError::Timeout | UsedError::WrongId) => fail(self.b, "agent: tx failed\n", status::TX),
        }
    }

    /// Receives the next packet, which must belong to `c`: its op and
    /// payload (copied into `out`, truncated); CREDIT_UPDATEs are skipped.
    fn recv(&mut self, c: &mut Conn, polls: u64, out: &mut [u8]) -> (u16, usize) {
        loop {
            let Some((h, p)) = self.d.recv_on(c, polls) else {
                fail(self.b, "agent: timeout\n", status::TIMEOUT)
            };
            if h.dst_port != c.port || h.src_port != c.peer_port {
                fail(self.b, "agent: unexpected packet\n", status::UNEXPECTED);
            }
            if h.op == op::CREDIT_UPDATE {
                continue;
            }
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            return (h.op, n);
        }
    }

    /// Waits for a packet of op `want` on `c`.
    pub(crate) fn expect(&mut self, c: &mut Conn, want: u16, status: u32, msg: &str) {
        let (got, _) = self.recv(c, POLLS, &mut []);
        if got != want {
            fail(self.b, msg, status);
        }
    }

    /// REQUEST to the host port of `c`, answered by RESPONSE: 2 exits.
    pub(crate) fn connect(&mut self, c: &mut Conn) {
        self.send(c, op::REQUEST, &[], 0);
        self.expect(c, op::RESPONSE, status::REFUSED, "agent: connect refused\n");
    }

    /// Reads one whole agent frame from `c` into `buf` (RW packets only);
    /// its length with the prefix. One exit per packet.
    pub(crate) fn recv_frame(
        &mut self,
        c: &mut Conn,
        buf: &mut [u8; FRAME_MAX],
        status: u32,
        msg: &str,
    ) -> usize {
        let mut got = 0;
        loop {
            let mut pkt = [0u8; FRAME_MAX];
            let (o, n) = self.recv(c, POLLS, &mut pkt);
            if o != op::RW || got + n > FRAME_MAX {
                fail(self.b, msg, status);
            }
            buf[got..got + n].copy_from_slice(&pkt[..n]);
            got += n;
            if got >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if got >= 4 + len {
                    return got;
                }
            }
        }
    }

    /// Waits for the gate byte `want` (one RW packet of 1 byte): 1 exit.
    pub(crate) fn gate(&mut self, g: &mut Conn, want: u8) {
        let mut byte = [0u8; 1];
        let (o, n) = self.recv(g, GATE_POLLS, &mut byte);
        if o != op::RW || n != 1 || byte[0] != want {
            fail(self.b, "agent: bad gate\n", status::BAD_GATE);
        }
    }
}

/// What the agent scenarios open with: the vsock device, and the agent
/// stream (guest port `agent_port`, to the VMM's agent port) and the gate
/// stream (guest port `gate_port`, to `agent_gate_port=` of the command
/// line or [`GATE_PORT`]), not yet connected.
pub(crate) fn open(b: &Boot, agent_port: u32, gate_port: u32) -> (Run<'_>, Conn, Conn) {
    let peer_gate = arg(b.cmdline, b"agent_gate_port=")
        .and_then(parse_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(GATE_PORT);
    let Some(mmio) = virtio::find(b.cmdline, vsock::DEVICE_ID_VSOCK) else {
        fail(b, "agent: no device\n", status::NO_DEVICE)
    };
    let Ok(d) = Vsock::init(mmio) else {
        fail(b, "agent: init failed\n", status::INIT)
    };
    let a = Conn {
        port: agent_port,
        peer_port: AGENT_PORT,
        fwd_cnt: 0,
    };
    let g = Conn {
        port: gate_port,
        peer_port: peer_gate,
        fwd_cnt: 0,
    };
    (Run { b, d }, a, g)
}

impl Run<'_> {
    /// `hello` on the connected agent stream, and the VMM's `welcome`.
    pub(crate) fn handshake(&mut self, a: &mut Conn, buf: &mut [u8; FRAME_MAX]) {
        self.send(a, op::RW, hello().bytes(), 0);
        let n = self.recv_frame(a, buf, status::NO_WELCOME, "agent: no welcome\n");
        if !contains(&buf[4..n], b"\"type\":\"welcome\"") {
            fail(self.b, "agent: no welcome\n", status::NO_WELCOME);
        }
    }
}

/// See the module documentation and docs/guest-scenarios.md.
pub fn scenario(b: &Boot) -> ! {
    print("agent: start\n");
    acct::register();
    acct::declare_container(AG_AGENT, 0, b"agent");
    acct::declare_container(AG_GATE, 0, b"gate");
    let (mut r, mut a, mut g) = open(b, PORT_AGENT, PORT_GATE);
    let mut buf = [0u8; FRAME_MAX];
    let gate_tag = tag(AG_GATE, NO_REQUEST);
    let agent_tag = tag(AG_AGENT, NO_REQUEST);

    // 1. gate: open the gate stream.
    acct::set_tag(b.vcpu, gate_tag);
    r.connect(&mut g);

    // 2. agent: hello, welcome, declare_container, begin_request.
    acct::set_tag(b.vcpu, agent_tag);
    r.connect(&mut a);
    r.handshake(&mut a, &mut buf);
    r.send(&a, op::RW, declare_container().bytes(), 0);
    r.send(&a, op::RW, begin_request().bytes(), 0);

    // 3. gate: the test saw both declarations applied.
    acct::set_tag(b.vcpu, gate_tag);
    r.gate(&mut g, b'1');

    // 4. Work in the request, then in the container alone.
    acct::set_tag(b.vcpu, tag(AG_SVC, AG_REQ));
    port_work(7);
    mmio_read_work(3);
    acct::set_tag(b.vcpu, tag(AG_SVC, NO_REQUEST));
    mmio_write_work(4);

    // 5. agent: a second connection that sends a length of 0xffffffff; the
    //    VMM answers `error` and closes it (SHUTDOWN); the guest resets it.
    acct::set_tag(b.vcpu, agent_tag);
    let mut bad = Conn {
        port: PORT_GARBAGE,
        peer_port: AGENT_PORT,
        fwd_cnt: 0,
    };
    r.connect(&mut bad);
    r.send(&bad, op::RW, &[0xff; 4], 0);
    let n = r.recv_frame(&mut bad, &mut buf, status::NO_ERROR, "agent: no error frame\n");
    if !contains(&buf[4..n], b"\"type\":\"error\"") {
        fail(b, "agent: no error frame\n", status::NO_ERROR);
    }
    r.expect(&mut bad, op::SHUTDOWN, status::NOT_CLOSED, "agent: not closed\n");
    r.send(&bad, op::RST, &[], 0);

    // 6. agent: the first connection still works.
    r.send(&a, op::RW, end_request().bytes(), 0);
    r.send(&a, op::RW, context().bytes(), 0);

    // 7. gate: the test has read the counters.
    acct::set_tag(b.vcpu, gate_tag);
    r.gate(&mut g, b'2');

    // 8. Close both streams: SHUTDOWN, answered by RST.
    acct::set_tag(b.vcpu, agent_tag);
    r.send(&a, op::SHUTDOWN, &[], vsock::SHUTDOWN_BOTH);
    r.expect(&mut a, op::RST, status::UNEXPECTED, "agent: unexpected packet\n");
    acct::set_tag(b.vcpu, gate_tag);
    r.send(&g, op::SHUTDOWN, &[], vsock::SHUTDOWN_BOTH);
    r.expect(&mut g, op::RST, status::UNEXPECTED, "agent: unexpected packet\n");

    acct::set_tag(b.vcpu, 0);
    print("agent: done\n");
    finish(b, 0)
}
