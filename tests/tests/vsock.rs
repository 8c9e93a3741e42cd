//! virtio-vsock end to end: the test guest's `vsock` scenario connects to a
//! host Unix socket (hybrid vsock: `uds_PORT`), gets its bytes echoed, and
//! shuts down. TX packets are charged to the container that sent them; every
//! packet the device sends to the container that opened the connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use accounting::resource::VsockCharge;
use resourceful_tests::{boot, config};
use vmm::config::VsockConfig;

const PORT: u32 = 5000;

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resourceful-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Echoes the 100 and the 200 bytes the guest sends, each in one write,
/// then waits for end of file; returns what it received.
fn echo_server(listener: UnixListener) -> thread::JoinHandle<(Vec<u8>, bool)> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut all = Vec::new();
        for n in [100usize, 200] {
            let mut b = vec![0u8; n];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            all.extend_from_slice(&b);
        }
        let mut rest = [0u8; 16];
        let eof = matches!(s.read(&mut rest), Ok(0));
        (all, eof)
    })
}

/// Boots the `vsock` scenario against the echo server, with `limits`;
/// checks the echo and the exact counts of every container (the same with
/// a limit or without), and returns the run and the socket's path.
fn echo_run(name: &str, limits: &[&str]) -> (resourceful_tests::Run, PathBuf, PathBuf) {
    let dir = scratch_dir(name);
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
    let server = echo_server(listener);
    let mut cfg = config("vsock", 1);
    cfg.cmdline = Some(format!("scenario=vsock vsock_port={PORT}"));
    cfg.vsock = Some(VsockConfig {
        cid: 3,
        uds: Some(uds.clone()),
    });
    cfg.container_limits = limits.iter().map(|l| l.parse().unwrap()).collect();

    let run = boot(cfg);

    run.assert_clean();
    let (got, eof) = server.join().unwrap();
    assert_eq!(got.len(), 300);
    assert!(got[..100].iter().all(|&b| b == 0xa5) && got[100..].iter().all(|&b| b == 0x5b));
    assert!(eof, "the guest's shutdown closes the host stream");
    // Packet counts may not be exact with a limit (a held echo may reach
    // the guest in two packets): bytes, connections and resets are.
    let exact = |v: VsockCharge| (v.tx_bytes, v.rx_bytes, v.connections, v.resets);
    // vs-a: REQUEST, RW 100, SHUTDOWN; back: RESPONSE, the two echoes, the RST.
    assert_eq!(exact(run.container("vs-a").charges.vsock), (100, 300, 1, 1));
    assert_eq!(run.container("vs-a").charges.vsock.tx_packets, 3);
    // vs-b sent 200 bytes on vs-a's connection; the echo is vs-a's.
    assert_eq!(exact(run.container("vs-b").charges.vsock), (200, 0, 0, 0));
    assert_eq!(run.container("vs-b").charges.vsock.tx_packets, 1);
    assert_eq!(
        run.container("unattributed").charges.vsock,
        VsockCharge::default()
    );
    let t = run.report.totals.vsock;
    assert_eq!((t.tx_packets, t.tx_bytes, t.rx_bytes), (4, 300, 300));
    assert!(t.host_ns > 0);
    (run, dir, uds)
}

#[test]
fn vsock_packets_are_charged_to_the_sender_and_the_connection_owner() {
    let (run, dir, uds) = echo_run("echo", &[]);

    let exact = |v: VsockCharge| VsockCharge { host_ns: 0, ..v };
    // Without a limit each echo is one packet (the server writes each at once).
    assert_eq!(
        exact(run.container("vs-a").charges.vsock),
        VsockCharge {
            tx_packets: 3,
            tx_bytes: 100,
            rx_packets: 4,
            rx_bytes: 300,
            host_ns: 0,
            connections: 1,
            resets: 1,
            throttle_events: 0,
            throttled_ns: 0,
        }
    );
    assert_eq!(run.report.totals.vsock.rx_packets, 4);
    let table = run.report.to_table(0);
    eprintln!("{table}");
    assert!(table.contains("VSOCK"));
    assert!(
        run.report.guest_errors.is_empty(),
        "{:?}",
        run.report.guest_errors
    );
    assert!(!uds.exists(), "the listener's socket goes with the VM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_limited_container_is_throttled_on_vsock_and_the_others_are_not() {
    // vs-a owns the connection: its 100 bytes, vs-b's 200 sent on it and
    // the 300 echoed draw from vs-a's 64-byte bucket; vs-b's own limit
    // holds nothing (it owns no connection).
    let (run, dir, _) = echo_run("limited", &["vs-a:vsock-bytes=64/20ms", "vs-b:vsock-bytes=1/s"]);

    let a = run.container("vs-a").charges.vsock;
    // The first 100 bytes pass a full bucket (cut to its size); the rest
    // (500 bytes at 64 per 20 ms) cannot all pass without waiting.
    assert!(a.throttle_events >= 1, "{a:?}");
    assert!(a.throttle_events <= 16, "{a:?}");
    assert!(a.throttled_ns > 0);
    for other in ["vs-b", "unattributed"] {
        let v = run.container(other).charges.vsock;
        assert_eq!((v.throttle_events, v.throttled_ns), (0, 0), "{other}");
    }
    let dev = run.report.devices.iter().find(|d| d.name == "vsock0").unwrap();
    assert_eq!(dev.counters.get("throttled"), Some(&a.throttle_events));
    assert_eq!(
        run.conservation_line("vsock.throttle_events"),
        (a.throttle_events, a.throttle_events)
    );
    assert_eq!(
        run.conservation_line("vsock.throttled_ns"),
        (a.throttled_ns, a.throttled_ns)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
