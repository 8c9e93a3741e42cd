//! Scenario 3: virtio-net on a TAP in L1. L2 pings L1 and sends a known
//! payload over TCP to a busybox nc server in L1; the report's net section
//! must have charged at least those frames and bytes.

use linux_e2e::{run, scenario_script, u64_at, Scenario};

const PINGS: u64 = 5;
const PAYLOAD: u64 = 20000;

#[test]
fn net_frames_are_charged() {
    let out = run(&Scenario::new("net", &scenario_script("net")));
    let r = out.check_common("net");
    eprintln!("linux-e2e net: report net {}", r["totals"]["net"]);
    let ping = out.l2_value("RSRC-L2: ping transmitted ");
    out.check(
        ping == format!("{PINGS} received {PINGS}"),
        &format!("ping: {ping} (want {PINGS} of {PINGS})"),
    );
    out.check(
        out.l1_value("received-bytes") == PAYLOAD.to_string(),
        "L1's nc server got the whole payload",
    );
    out.check(
        out.l1_value("received-md5") == out.l1_value("expect-md5"),
        "the payload arrived intact",
    );

    let n = |k: &str| u64_at(r, &format!("/totals/net/{k}"));
    // Each echo request is a 98-byte frame; the payload needs >= 14 segments
    // of at most 1448 bytes, each with 54+ bytes of headers.
    assert!(
        n("tx_frames") >= PINGS + PAYLOAD.div_ceil(1448),
        "tx frames {}",
        n("tx_frames")
    );
    assert!(
        n("tx_bytes") >= PINGS * 98 + PAYLOAD,
        "tx bytes {}",
        n("tx_bytes")
    );
    assert!(
        n("rx_frames") >= PINGS,
        "rx frames {} (>= the echo replies)",
        n("rx_frames")
    );
    assert!(n("rx_bytes") >= PINGS * 98, "rx bytes {}", n("rx_bytes"));
    assert_eq!(n("spoofed_frames"), 0);
    let tap_rx: u64 = out.l1_value("tap-rx-packets").parse().unwrap_or(0);
    assert!(
        n("tx_frames") >= tap_rx,
        "the TAP in L1 received {tap_rx} frames, the report charged {} sent",
        n("tx_frames")
    );
}
