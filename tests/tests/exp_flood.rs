//! Experiment 3 of issue 10, flood immunity (docs/experiments.md section
//! 3): a flood of datagrams to one container's flow leaves another
//! container's echo throughput at 90 % or more of its unflooded value when
//! the flooded container has an RX limit that drops (`net-rx-drop=on`),
//! and the dropped frames are charged to the flooded container. A real VM
//! (the guest's `flood-echo` scenario) on a real TAP in a private network
//! namespace; the host's client and flooder are in `tests/src/flood.rs`.
//! Timings are asserted only as a shape with a margin; the counts exactly.

use std::time::Duration;

use resourceful_tests::flood::{self, FRAME_BYTES};
use vmm::config::ContainerLimit;

/// The flood's offered rate, datagrams per second.
const RATE: u64 = 2_000;

/// The flooded container's limit: 200 frames a second, the rest dropped.
fn dropping_limit() -> ContainerLimit {
    "flooded:net-rx-frames=200/s,net-rx-drop=on".parse().unwrap()
}

#[test]
fn a_flood_to_one_container_leaves_the_others_echoes_and_is_charged_to_it() {
    // Phases without a flood and with one at 2,000 datagrams a second (ten
    // times the limit),
    // interleaved: the host's other load moves both alike.
    let rates = [0, RATE, 0, RATE, 0, RATE, 0, RATE, 0, RATE, 0, RATE];
    let r = flood::run(&rates, Duration::from_secs(1), vec![dropping_limit()]);
    let run = &r.run;
    run.assert_clean();
    eprintln!("{:#?}", r.points);

    // The shape: the echo container keeps at least 90 % of its unflooded
    // rate (the median phase without the flood against the best with it:
    // generous, as the machine is shared; without the policy the flood
    // takes nearly all of it, see docs/experiments.md).
    let of = |rate: u64| -> Vec<f64> {
        let mut v: Vec<f64> = r
            .points
            .iter()
            .filter(|p| p.rate == rate)
            .map(|p| p.echo_per_s)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (unflooded, flooded_rates) = ((of(0)[2] + of(0)[3]) / 2.0, of(RATE));
    let best_flooded = flooded_rates[5];
    assert!(unflooded > 50.0, "{:?}", r.points);
    assert!(
        best_flooded >= 0.9 * unflooded,
        "echo/s with the flood {flooded_rates:?}: the best < 90 % of {unflooded} without"
    );
    assert!(r
        .points
        .iter()
        .filter(|p| p.rate == RATE)
        .all(|p| p.flood_sent > RATE / 2));

    // Exact counts: what the guest echoed is what the device delivered.
    let (echoed, flooded, ignored) = flood::guest_counts(&run.console).expect(&run.console);
    let echo = run.container("echo").charges.net;
    let fl = run.container("flooded").charges.net;
    assert_eq!(ignored, 0, "only the two flows reach the guest");
    assert_eq!((echo.rx_frames, echo.tx_frames), (echoed, echoed + 1));
    assert_eq!((fl.rx_frames, fl.tx_frames), (flooded, flooded + 1));
    // All the client's datagrams carry PAYLOAD bytes but the one stop
    // (4 bytes) the guest ended on.
    assert_eq!(echo.rx_bytes, (echoed - 1) * FRAME_BYTES + 14 + 20 + 8 + 4);
    assert_eq!(r.echo_received, echoed, "every echo came back to the client");

    // The flood's dropped frames are charged to the flooded container,
    // nobody else's; with the frames delivered, at most what was sent.
    assert!(fl.rx_dropped_frames > 0, "{fl:?}");
    assert_eq!(fl.rx_dropped_bytes, fl.rx_dropped_frames * FRAME_BYTES);
    assert!(fl.rx_dropped_frames + fl.rx_frames <= r.flood_sent);
    for c in &run.report.containers {
        if c.path != "flooded" {
            assert_eq!(c.charges.net.rx_dropped_frames, 0, "{}", c.path);
        }
    }
    // The limit let about 200 a second through: far fewer than the flood.
    assert!(fl.rx_frames < fl.rx_dropped_frames, "{fl:?}");
    let dev = run.report.devices.iter().find(|d| d.name == "net0").unwrap();
    assert_eq!(dev.counters.get("rx_limit_dropped"), Some(&fl.rx_dropped_frames));
    assert_eq!(
        dev.counters.get("rx_limit_dropped_bytes"),
        Some(&fl.rx_dropped_bytes)
    );
    assert_eq!(dev.counters.get("rx_throttled"), Some(&0));
    assert_eq!(
        run.conservation_line("net.rx_dropped_frames"),
        (fl.rx_dropped_frames, fl.rx_dropped_frames)
    );
    assert_eq!(
        run.conservation_line("net.rx_dropped_bytes"),
        (fl.rx_dropped_bytes, fl.rx_dropped_bytes)
    );
}
