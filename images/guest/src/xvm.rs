//! `xvm-client` and `xvm-server`: one distributed request across two VMs
//! on one Ethernet segment. The client, in VM A, calls the server, in VM
//! B, with UDP datagrams; each VM charges its part to a request the host
//! side began with the same trace id (docs/distributed-requests.md). The
//! guests never declare anything: they are told the request's container
//! and id (`xvm_container=`, `xvm_request=`) and name it in their tag slot
//! while they work for it. See docs/guest-scenarios.md.

use crate::frame::{self, Ends};
use crate::io::{print, print_dec10};
use crate::net::Net;
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

/// Whether `p` is what a call of `len` bytes carries.
fn is_call(p: &[u8], len: usize) -> bool {
    p.len() == len && p.iter().enumerate().all(|(i, &c)| c == frame::payload_byte(i))
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
        let n = frame::udp(&mut buf, &e, k as u16, len);
        if d.send(&buf[..n], 0).is_err() {
            fail(b, "xvm: tx failed\n", 65)
        }
        loop {
            let Some(f) = d.recv(POLLS) else {
                fail(b, "xvm: no reply\n", 66)
            };
            match frame::udp_payload(f, SERVER_IP, SERVER_PORT, CLIENT_PORT) {
                None => ignored += 1,
                Some(p) if is_call(p, len) => break,
                Some(_) => fail(b, "xvm: bad reply\n", 67),
            }
        }
    }
    acct::set_tag(b.vcpu, 0);
    done(b, ignored, "xvm-client: done\n")
}

/// `xvm-server`: answers `CALLS` datagrams from the client's port with the
/// same payload; each answer is sent (one exit) with the slot naming its
/// part. Frames that are not calls are counted and dropped.
pub fn server(b: &Boot) -> ! {
    print("xvm-server: start\n");
    let part = part_tag(b);
    let mut d = init(b);
    let mut ignored = 0u64;
    let mut buf = [0u8; 512];
    let mut served = 0;
    while served < CALLS {
        let Some(f) = d.recv(LONG_POLLS) else {
            fail(b, "xvm: no call\n", 68)
        };
        let Some(p) = frame::udp_payload(f, CLIENT_IP, CLIENT_PORT, SERVER_PORT) else {
            ignored += 1;
            continue;
        };
        let len = p.len();
        if len > 400 || !is_call(p, len) {
            fail(b, "xvm: bad call\n", 69)
        }
        let mut client_mac = [0u8; 6];
        client_mac.copy_from_slice(&f[6..12]);
        served += 1;
        let e = Ends {
            src_mac: d.mac,
            dst_mac: client_mac,
            src_ip: SERVER_IP,
            dst_ip: CLIENT_IP,
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
        };
        let n = frame::udp(&mut buf, &e, served as u16, len);
        acct::set_tag(b.vcpu, part);
        if d.send(&buf[..n], 0).is_err() {
            fail(b, "xvm: tx failed\n", 65)
        }
        acct::set_tag(b.vcpu, 0);
    }
    done(b, ignored, "xvm-server: done\n")
}
