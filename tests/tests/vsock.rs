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

#[test]
fn vsock_packets_are_charged_to_the_sender_and_the_connection_owner() {
    let dir = scratch_dir("echo");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
    let server = echo_server(listener);
    let mut cfg = config("vsock", 1);
    cfg.cmdline = Some(format!("scenario=vsock vsock_port={PORT}"));
    cfg.vsock = Some(VsockConfig {
        cid: 3,
        uds: Some(uds.clone()),
    });

    let run = boot(cfg);

    run.assert_clean();
    let (got, eof) = server.join().unwrap();
    assert_eq!(got.len(), 300);
    assert!(got[..100].iter().all(|&b| b == 0xa5) && got[100..].iter().all(|&b| b == 0x5b));
    assert!(eof, "the guest's shutdown closes the host stream");
    let exact = |v: VsockCharge| VsockCharge { host_ns: 0, ..v };
    // vs-a: REQUEST, RW 100, SHUTDOWN; back: RESPONSE, the two echoes
    // (one packet each: the server writes each at once), the RST.
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
        }
    );
    // vs-b sent 200 bytes on vs-a's connection; the echo is vs-a's.
    assert_eq!(
        exact(run.container("vs-b").charges.vsock),
        VsockCharge {
            tx_packets: 1,
            tx_bytes: 200,
            ..Default::default()
        }
    );
    assert_eq!(
        exact(run.container("unattributed").charges.vsock),
        VsockCharge::default()
    );
    let t = run.report.totals.vsock;
    assert_eq!(
        (t.tx_packets, t.rx_packets, t.tx_bytes, t.rx_bytes),
        (4, 4, 300, 300)
    );
    assert!(t.host_ns > 0);
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
