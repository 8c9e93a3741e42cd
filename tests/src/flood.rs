//! The flood-immunity experiment (issue 10, experiment 3;
//! docs/experiments.md section 3), shared by its test
//! (`tests/tests/exp_flood.rs`) and its benchmark
//! (`vmm/benches/exp_flood.rs`).
//!
//! A VM runs the guest's `flood-echo` scenario on a TAP in a private
//! namespace: container `echo` and container `flooded` each own one UDP
//! flow, and the guest echoes every datagram of either. On the host, a
//! client keeps [`WINDOW`] datagrams in flight on `echo`'s flow and counts
//! the echoes per second, while a flooder sends datagrams to `flooded`'s
//! flow at a given rate (none in the first phase). Each phase lasts
//! `phase`; the client's echo rate is measured over the phase after a
//! short warm-up.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::config::{ContainerLimit, NetConfig};

use super::netns::{NetNs, GUEST_IP, GUEST_MAC, HOST_IP};
use super::{boot, config, Run};

/// Both ends' port of container `echo`'s flow (the guest's `ECHO_PORT`).
pub const ECHO_PORT: u16 = 7100;
/// Both ends' port of container `flooded`'s flow.
pub const FLOODED_PORT: u16 = 7200;
/// Datagrams the client keeps in flight.
pub const WINDOW: usize = 12;
/// Payload bytes of every client and flood datagram.
pub const PAYLOAD: usize = 64;
/// Bytes of one such frame as the device counts them (Ethernet, IPv4, UDP
/// headers and the payload).
pub const FRAME_BYTES: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// Warm-up of each phase before the client's echoes are counted.
const WARMUP: Duration = Duration::from_millis(200);
/// How long the client waits for an echo before sending another datagram.
const ECHO_WAIT: Duration = Duration::from_millis(5);

/// One phase: the flood's offered rate and what the client got.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Flood datagrams per second offered (0: no flood).
    pub rate: u64,
    /// Flood datagrams the host sent in the phase (warm-up included).
    pub flood_sent: u64,
    /// The client's echoes per second, after the warm-up.
    pub echo_per_s: f64,
}

/// A whole run: the phases, the VM's report, and the host's counts.
#[derive(Debug)]
pub struct FloodRun {
    /// One per rate, in order.
    pub points: Vec<Point>,
    /// The VM.
    pub run: Run,
    /// Datagrams the client sent on `echo`'s flow (the stop included).
    pub echo_sent: u64,
    /// Echoes it received.
    pub echo_received: u64,
    /// Flood datagrams sent, all phases.
    pub flood_sent: u64,
}

/// What the guest printed at its end: (`echo`, `flooded`, `ignored`)
/// datagrams, or `None` if it did not get there.
pub fn guest_counts(console: &str) -> Option<(u64, u64, u64)> {
    let line = console.lines().find(|l| l.starts_with("flood-echo: echo="))?;
    let mut it = line.split(['=', ' ']).filter_map(|w| w.parse::<u64>().ok());
    Some((it.next()?, it.next()?, it.next()?))
}

/// Sends to `flooded`'s flow at `rate` datagrams per second until `stop`,
/// counting what the kernel took into `sent`.
fn flood(sock: &UdpSocket, rate: u64, stop: &AtomicBool, sent: &AtomicU64) {
    let payload = [0xf1u8; PAYLOAD];
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due =
            u64::try_from(start.elapsed().as_micros() * u128::from(rate) / 1_000_000).unwrap_or(u64::MAX);
        // At most 1,000 a round: a slow round does not turn into a burst.
        for _ in 0..due.saturating_sub(done).min(1000) {
            done += 1;
            if sock.send(&payload).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The client: keeps `WINDOW` datagrams in flight until `until`; the
/// echoes received after `count_from` are counted.
fn measure(sock: &UdpSocket, count_from: Instant, until: Instant, sent: &mut u64, got: &mut u64) -> u64 {
    let mut buf = [0u8; 2048];
    let mut counted = 0u64;
    let mut seq = 0u64;
    let mut send = |sent: &mut u64| {
        let mut p = [0u8; PAYLOAD];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        seq += 1;
        if sock.send(&p).is_ok() {
            *sent += 1;
        }
    };
    for _ in 0..WINDOW {
        send(sent);
    }
    while Instant::now() < until {
        // An echo, or none for ECHO_WAIT (lost or slow): either way one
        // more datagram keeps the window from emptying.
        if sock.recv(&mut buf).is_ok() {
            *got += 1;
            if Instant::now() >= count_from {
                counted += 1;
            }
        }
        send(sent);
    }
    // Let the echoes in flight come back, uncounted.
    while sock.recv(&mut buf).is_ok() {
        *got += 1;
    }
    counted
}

/// Boots `flood-echo` with `limits` and runs one phase of `phase` per
/// flood rate in `rates` (datagrams per second; 0: no flood), then stops
/// the guest.
pub fn run(rates: &[u64], phase: Duration, limits: Vec<ContainerLimit>) -> FloodRun {
    let ns = Arc::new(NetNs::new());
    let peer_mac = ns.tap_mac();
    let vm = {
        let ns = Arc::clone(&ns);
        std::thread::spawn(move || {
            ns.enter();
            let mut cfg = config("flood-echo", 1);
            cfg.cmdline = Some(format!("scenario=flood-echo net_peer_mac={peer_mac}"));
            cfg.nets = vec![NetConfig {
                tap: ns.tap.clone(),
                mac: GUEST_MAC,
            }];
            cfg.container_limits = limits;
            // A guard: the run ends when the host sends its stop.
            cfg.time_limit_ms = Some(300_000);
            boot(cfg)
        })
    };
    let driver = {
        let ns = Arc::clone(&ns);
        let rates = rates.to_vec();
        std::thread::spawn(move || {
            ns.enter();
            let echo = UdpSocket::bind((HOST_IP, ECHO_PORT)).expect("bind the echo flow's port");
            echo.connect((GUEST_IP, ECHO_PORT)).unwrap();
            let flooder = UdpSocket::bind((HOST_IP, FLOODED_PORT)).expect("bind the flooded flow's port");
            flooder.connect((GUEST_IP, FLOODED_PORT)).unwrap();
            // The guest's hello on each flow: it is up, the flows learned.
            echo.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut buf = [0u8; 2048];
            let n = echo.recv(&mut buf).expect("the guest's hello on the echo flow");
            assert_eq!(&buf[..n], b"hello");
            echo.set_read_timeout(Some(ECHO_WAIT)).unwrap();
            // Nobody reads the flood's echoes: they only fill this socket.
            let (mut echo_sent, mut echo_received, mut flood_total) = (0u64, 0u64, 0u64);
            let mut points = Vec::new();
            for &rate in &rates {
                let stop = Arc::new(AtomicBool::new(false));
                let sent = Arc::new(AtomicU64::new(0));
                let flooding = (rate > 0).then(|| {
                    let (sock, stop, sent) =
                        (flooder.try_clone().unwrap(), Arc::clone(&stop), Arc::clone(&sent));
                    std::thread::spawn(move || flood(&sock, rate, &stop, &sent))
                });
                let start = Instant::now();
                let counted = measure(
                    &echo,
                    start + WARMUP,
                    start + WARMUP + phase,
                    &mut echo_sent,
                    &mut echo_received,
                );
                stop.store(true, Ordering::Release);
                if let Some(f) = flooding {
                    f.join().unwrap();
                }
                let flood_sent = sent.load(Ordering::Relaxed);
                flood_total += flood_sent;
                points.push(Point {
                    rate,
                    flood_sent,
                    echo_per_s: counted as f64 / phase.as_secs_f64(),
                });
                // Let the guest drain what the flood left in the TAP.
                std::thread::sleep(Duration::from_millis(100));
                while echo.recv(&mut buf).is_ok() {
                    echo_received += 1;
                }
            }
            // The stop, every 100 ms until its echo comes back (the guest
            // ends then); behind a held flood it waits its turn in the TAP.
            let mut stopped = false;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped && Instant::now() < deadline {
                if echo.send(b"stop").is_ok() {
                    echo_sent += 1;
                }
                let wait = Instant::now() + Duration::from_millis(100);
                while !stopped && Instant::now() < wait {
                    if let Ok(n) = echo.recv(&mut buf) {
                        echo_received += 1;
                        stopped |= &buf[..n] == b"stop";
                    }
                }
            }
            assert!(stopped, "the guest never echoed the stop");
            (points, echo_sent, echo_received, flood_total)
        })
    };
    let (points, echo_sent, echo_received, flood_sent) = driver.join().expect("the experiment's host side");
    let run = vm.join().expect("the VM thread");
    FloodRun {
        points,
        run,
        echo_sent,
        echo_received,
        flood_sent,
    }
}
