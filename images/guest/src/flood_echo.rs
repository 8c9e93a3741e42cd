//! `flood-echo`: a UDP echo server for two containers, the guest of the
//! flood-immunity experiment (docs/experiments.md, section 3).
//!
//! Container `flooded` (1) and container `echo` (2) each own one UDP flow
//! with the host: the guest first sends one "hello" datagram on each flow
//! with its slot naming the container, so the device's flow table learns
//! which container the replies are for. Then every datagram received on
//! either flow is echoed back (one exit each, the TX notify) with the slot
//! naming the flow's container: a frame of the flooded flow costs the
//! guest what a frame of the echo flow costs. A datagram on the echo flow
//! whose payload starts with `stop` ends the run (it is echoed too). Every
//! 4 receive buffers reposted, and whenever nothing came for a while, the
//! guest notifies the RX queue (one exit) so a device that ran out of
//! buffers reads again. See docs/guest-scenarios.md.

use crate::frame::{self, Ends};
use crate::io::{print, print_dec10};
use crate::net::Net;
use crate::{acct, arg, finish, virtio, Boot};
use accounting::abi::{self, tag};

const FLOODED: u32 = 1;
const ECHO: u32 = 2;
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
/// Both ends' port of the flooded container's flow.
pub const FLOODED_PORT: u16 = 7200;
/// Both ends' port of the echo container's flow.
pub const ECHO_PORT: u16 = 7100;
/// Polls of the RX used ring before the guest notifies the RX queue (a
/// safety net: a device out of buffers left the guest used buffers to
/// repost, and every `NOTIFY_EVERY` reposts notify).
const IDLE_POLLS: u64 = 1 << 20;
/// Idle rounds (of `IDLE_POLLS`) with nothing received before the run
/// fails: tens of seconds.
const IDLE_ROUNDS: u64 = 1 << 12;
/// Reposted buffers between two RX notifies.
const NOTIFY_EVERY: u64 = 4;
/// Longest payload echoed (longer ones are cut).
const MAX_PAYLOAD: usize = 256;

fn fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

/// The flow of container `c` (`FLOODED` or `ECHO`) as the guest sends it.
fn ends(d: &Net, peer: [u8; 6], port: u16) -> Ends {
    Ends {
        src_mac: d.mac,
        dst_mac: peer,
        src_ip: GUEST_IP,
        dst_ip: HOST_IP,
        src_port: port,
        dst_port: port,
    }
}

/// Sends `payload` on the flow of `port`, charged to `container` (its
/// slot names it for the one exit). A chain the device never used ends
/// the run.
fn send(b: &Boot, d: &mut Net, peer: [u8; 6], port: u16, container: u32, id: u16, payload: &[u8]) {
    let mut buf = [0u8; 512];
    let n = frame::udp_with(&mut buf, &ends(d, peer, port), id, payload);
    acct::set_tag(b.vcpu, tag(container, abi::NO_REQUEST));
    let sent = d.send(&buf[..n], 0);
    acct::set_tag(b.vcpu, 0);
    if sent.is_err() {
        fail(b, "flood-echo: tx failed\n", 81);
    }
}

pub fn scenario(b: &Boot) -> ! {
    print("flood-echo: start\n");
    let Some(peer) = arg(b.cmdline, b"net_peer_mac=").and_then(frame::parse_mac) else {
        fail(b, "flood-echo: no peer mac\n", 82)
    };
    acct::register();
    acct::declare_container(FLOODED, 0, b"flooded");
    acct::declare_container(ECHO, 0, b"echo");
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_NET) else {
        fail(b, "flood-echo: no device\n", 83)
    };
    let Ok(mut d) = Net::init(mmio) else {
        fail(b, "flood-echo: init failed\n", 84)
    };
    let mut id = 0u16;
    send(b, &mut d, peer, FLOODED_PORT, FLOODED, id, b"hello");
    id = id.wrapping_add(1);
    send(b, &mut d, peer, ECHO_PORT, ECHO, id, b"hello");
    print("flood-echo: ready\n");

    let (mut echoed, mut flooded, mut ignored) = (0u64, 0u64, 0u64);
    let mut reposted = 0u64;
    let mut idle = 0u64;
    let mut payload = [0u8; MAX_PAYLOAD];
    loop {
        let Some(f) = d.recv(IDLE_POLLS) else {
            // Nothing for a while: a device out of buffers waits for this.
            d.notify_rx();
            reposted = 0;
            idle += 1;
            if idle >= IDLE_ROUNDS {
                fail(b, "flood-echo: nothing received\n", 85);
            }
            continue;
        };
        idle = 0;
        let mine = [(ECHO_PORT, ECHO), (FLOODED_PORT, FLOODED)]
            .into_iter()
            .find_map(|(port, c)| frame::udp_payload(f, HOST_IP, port, port).map(|p| (port, c, p)));
        let Some((port, c, p)) = mine else {
            ignored += 1;
            continue;
        };
        let n = p.len().min(MAX_PAYLOAD);
        payload[..n].copy_from_slice(&p[..n]);
        let stop = c == ECHO && payload[..n].starts_with(b"stop");
        id = id.wrapping_add(1);
        send(b, &mut d, peer, port, c, id, &payload[..n]);
        if c == ECHO {
            echoed += 1;
        } else {
            flooded += 1;
        }
        if stop {
            break;
        }
        reposted += 1;
        if reposted >= NOTIFY_EVERY {
            d.notify_rx();
            reposted = 0;
        }
    }
    print("flood-echo: echo=");
    print_dec10(echoed);
    print(" flooded=");
    print_dec10(flooded);
    print(" ignored=");
    print_dec10(ignored);
    print("\n");
    print("flood-echo: done\n");
    finish(b, 0)
}
