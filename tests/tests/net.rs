//! virtio-net end to end: a real TAP in a network namespace the test makes,
//! a UDP echo server on the host side, and the test guest's `net` scenario.
//! Every frame is charged to the principal it was for: TX to the request or
//! container that sent it (or its explicit tag), RX to the flow's principal
//! through the flow table; the retransmission and the spoofed frame are
//! counted. Expected numbers: `docs/guest-scenarios.md`.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use resourceful_tests::netns::{NetNs, GUEST_MAC, HOST_IP};
use resourceful_tests::{boot, config};
use vmm::config::{ContainerLimit, NetConfig};

/// Boots the `net` scenario on a TAP in a fresh namespace with an echo
/// server, with `limits` (`--limit` flags); returns the run and how many
/// datagrams the server echoed.
fn run_net(limits: Vec<ContainerLimit>) -> (resourceful_tests::Run, u32) {
    let ns = Arc::new(NetNs::new());
    let peer_mac = ns.tap_mac();

    // The host side: a UDP echo server in the namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = {
        let (ns, stop) = (Arc::clone(&ns), Arc::clone(&stop));
        std::thread::spawn(move || {
            ns.enter();
            let sock = UdpSocket::bind((HOST_IP, 7000)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            ready_tx.send(()).unwrap();
            let mut echoed = 0u32;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Acquire) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    sock.send_to(&buf[..n], from).unwrap();
                    echoed += 1;
                }
            }
            echoed
        })
    };
    ready_rx.recv().unwrap();

    // The VM, from a thread in the namespace (its threads inherit it).
    let run = {
        let ns = Arc::clone(&ns);
        let peer_mac = peer_mac.clone();
        std::thread::spawn(move || {
            ns.enter();
            let mut cfg = config("net", 1);
            cfg.cmdline = Some(format!("scenario=net net_peer_mac={peer_mac}"));
            cfg.nets = vec![NetConfig {
                tap: ns.tap.clone(),
                mac: GUEST_MAC,
            }];
            cfg.container_limits = limits;
            boot(cfg)
        })
        .join()
        .unwrap()
    };
    stop.store(true, Ordering::Release);
    (run, echo.join().unwrap())
}

#[test]
fn frames_are_charged_to_their_principals_through_a_real_tap() {
    let (run, echoed) = run_net(Vec::new());

    run.assert_clean();
    assert_eq!(
        echoed, 4,
        "three request datagrams and the explicitly tagged one were echoed"
    );
    let net = |path: &str| run.container(path).charges.net;
    let udp_frame = |payload: u64| 14 + 20 + 8 + payload;
    let tcp_frame = 14 + 20 + 20 + 100;

    // udp: each request sent one datagram and got its echo back, RX charged
    // through the flow table to the same request.
    for r in 1..=3u32 {
        let n = run.request(r).charges.net;
        let bytes = udp_frame(100 * u64::from(r));
        assert_eq!(
            (n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes),
            (1, bytes, 1, bytes),
            "request {r}"
        );
    }
    // The datagram sent by the tcp-tagged vCPU with an explicit udp tag, and
    // its echo (the flow learned the explicit tag), land on udp itself.
    let udp = net("udp");
    let requests: u64 = (1..=3).map(|r| udp_frame(100 * r)).sum();
    assert_eq!((udp.tx_frames, udp.tx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((udp.rx_frames, udp.rx_bytes), (4, requests + udp_frame(10)));
    // tcp: three segments, the third a retransmission of the first.
    let tcp = net("tcp");
    assert_eq!(
        (tcp.tx_frames, tcp.tx_bytes, tcp.retransmitted_bytes),
        (3, 3 * tcp_frame, 100)
    );
    assert_eq!((tcp.rx_frames, tcp.spoofed_frames), (0, 0));
    // spoof: one frame with a foreign source MAC, dropped and counted.
    let spoof = net("spoof");
    assert_eq!(
        (spoof.tx_frames, spoof.spoofed_frames, spoof.rx_frames),
        (1, 1, 0)
    );
    assert_eq!(run.report.totals.net.spoofed_frames, 1);
    assert_eq!(run.report.totals.net.retransmitted_bytes, 100);
    // Host CPU time of the TAP work is charged with the frames.
    assert!(udp.host_ns > 0 && tcp.host_ns > 0);
    // No --limit: nothing held.
    assert_eq!(run.report.totals.net.throttle_events, 0);
}

/// `tcp` limited to one frame per 30 ms (a bucket of 1 that starts full),
/// the other containers not: every count of the unlimited run is the same,
/// `tcp`'s second and third segments (sent back to back, one in flight at a
/// time) may wait for a token, the others never do. No timing is asserted.
#[test]
fn a_limited_container_is_throttled_on_tx_and_the_others_are_not() {
    let (run, echoed) = run_net(vec!["tcp:net-tx-frames=1/30ms".parse().unwrap()]);

    run.assert_clean();
    assert_eq!(echoed, 4);
    let net = |path: &str| run.container(path).charges.net;
    let udp_frame = |payload: u64| 14 + 20 + 8 + payload;
    let tcp_frame = 14 + 20 + 20 + 100;
    // Held, never dropped: the exact counts of the unlimited run.
    let (tcp, udp, spoof) = (net("tcp"), net("udp"), net("spoof"));
    assert_eq!(
        (
            tcp.tx_frames,
            tcp.tx_bytes,
            tcp.retransmitted_bytes,
            tcp.rx_frames
        ),
        (3, 3 * tcp_frame, 100, 0)
    );
    let requests: u64 = (1..=3).map(|r| udp_frame(100 * r)).sum();
    assert_eq!((udp.tx_frames, udp.tx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((udp.rx_frames, udp.rx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((spoof.tx_frames, spoof.spoofed_frames), (1, 1));
    // The bucket starts full with 1 token: the first of tcp's 3 frames
    // always passes, so at most 2 are held; the guest sends the next as soon
    // as the previous is used, so at least the second finds the bucket empty.
    assert!((1..=2).contains(&tcp.throttle_events), "{tcp:?}");
    assert!(tcp.throttled_ns > 0, "{tcp:?}");
    // The datagram the tcp-tagged vCPU sent with an explicit udp tag is
    // udp's: the limit follows the charge, not the notifying vCPU.
    for other in [udp, spoof, net("unattributed")] {
        assert_eq!((other.throttle_events, other.throttled_ns), (0, 0), "{other:?}");
    }
    for r in 1..=3 {
        let n = run.request(r).charges.net;
        assert_eq!((n.throttle_events, n.throttled_ns), (0, 0), "request {r}");
    }
    // The device counted the holds, never stalled; conservation covers them.
    let dev = run.report.devices.iter().find(|d| d.name == "net0").unwrap();
    assert_eq!(dev.counters.get("tx_throttled"), Some(&tcp.throttle_events));
    assert_eq!(dev.counters.get("tx_throttle_stalls"), Some(&0));
    assert_eq!(
        run.conservation_line("net.throttle_events"),
        (tcp.throttle_events, tcp.throttle_events)
    );
    assert_eq!(
        run.conservation_line("net.throttled_ns"),
        (tcp.throttled_ns, tcp.throttled_ns)
    );
}

/// `udp` limited to one frame per 100 ms: its three requests' datagrams and
/// the explicitly tagged one (sent from tcp's vCPU) share one bucket. Each
/// held frame's wait is charged to the request that sent it (or to the
/// container, for the explicitly tagged one), and those add up; the echoes
/// still come back, so the counts are exact.
#[test]
fn tx_throttling_is_charged_to_the_request_that_sent_the_frame() {
    let (run, echoed) = run_net(vec!["udp:net-tx-frames=1/100ms".parse().unwrap()]);

    run.assert_clean();
    assert_eq!(echoed, 4);
    let net = |path: &str| run.container(path).charges.net;
    let udp_frame = |payload: u64| 14 + 20 + 8 + payload;
    let (udp, tcp) = (net("udp"), net("tcp"));
    let requests: u64 = (1..=3).map(|r| udp_frame(100 * r)).sum();
    assert_eq!((udp.tx_frames, udp.tx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((udp.rx_frames, udp.rx_bytes), (4, requests + udp_frame(10)));
    // The first of udp's 4 frames always passes a full bucket of 1.
    assert!(udp.throttle_events <= 3, "{udp:?}");
    assert_eq!(udp.throttle_events == 0, udp.throttled_ns == 0, "{udp:?}");
    // Per request: each one's own frame, never more than one hold each.
    let mut per_request = (0, 0);
    for r in 1..=3 {
        let n = run.request(r).charges.net;
        assert_eq!((n.tx_frames, n.rx_frames), (1, 1), "request {r}");
        assert!(n.throttle_events <= 1, "request {r}: {n:?}");
        assert_eq!(n.throttle_events == 0, n.throttled_ns == 0, "request {r}: {n:?}");
        per_request.0 += n.throttle_events;
        per_request.1 += n.throttled_ns;
    }
    // The container's totals are its requests' plus, at most, the one
    // explicitly tagged frame charged to the container itself.
    assert!(per_request.0 <= udp.throttle_events && udp.throttle_events <= per_request.0 + 1);
    assert!(per_request.1 <= udp.throttled_ns);
    // tcp is not limited: its own frames never wait, though its vCPU sent
    // the frame charged (and limited) as udp's.
    assert_eq!((tcp.tx_frames, tcp.throttle_events, tcp.throttled_ns), (3, 0, 0));
    let dev = run.report.devices.iter().find(|d| d.name == "net0").unwrap();
    assert_eq!(dev.counters.get("tx_throttled"), Some(&udp.throttle_events));
}

/// `udp` limited on RX to one received frame per 30 ms (`net-rx-frames`):
/// the echoes the flow table charges to it are held in the guest's buffers
/// (off the used ring) and delivered when tokens come. The counts stay
/// exact; the first echo passes a full bucket of 1, so at most 3 of udp's
/// 4 are held; nothing else is held, on RX or TX.
#[test]
fn a_limited_container_is_throttled_on_rx_and_the_others_are_not() {
    let (run, echoed) = run_net(vec!["udp:net-rx-frames=1/30ms".parse().unwrap()]);

    run.assert_clean();
    assert_eq!(echoed, 4);
    let net = |path: &str| run.container(path).charges.net;
    let udp_frame = |payload: u64| 14 + 20 + 8 + payload;
    let (udp, tcp) = (net("udp"), net("tcp"));
    let requests: u64 = (1..=3).map(|r| udp_frame(100 * r)).sum();
    assert_eq!((udp.tx_frames, udp.tx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((udp.rx_frames, udp.rx_bytes), (4, requests + udp_frame(10)));
    assert_eq!((tcp.tx_frames, tcp.rx_frames), (3, 0));
    assert!(udp.throttle_events <= 3, "{udp:?}");
    assert_eq!(udp.throttle_events == 0, udp.throttled_ns == 0, "{udp:?}");
    for other in [tcp, net("spoof"), net("unattributed")] {
        assert_eq!((other.throttle_events, other.throttled_ns), (0, 0), "{other:?}");
    }
    let dev = run.report.devices.iter().find(|d| d.name == "net0").unwrap();
    assert_eq!(dev.counters.get("rx_throttled"), Some(&udp.throttle_events));
    assert_eq!(dev.counters.get("tx_throttled"), Some(&0));
    assert_eq!(
        dev.counters.get("rx_frames"),
        Some(&(udp.rx_frames + net("unattributed").rx_frames))
    );
    assert_eq!(
        run.conservation_line("net.throttle_events"),
        (udp.throttle_events, udp.throttle_events)
    );
    assert_eq!(
        run.conservation_line("net.throttled_ns"),
        (udp.throttled_ns, udp.throttled_ns)
    );
}
