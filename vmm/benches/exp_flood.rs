//! Experiment 3 of issue 10, flood immunity (docs/experiments.md section
//! 3): container `echo`'s UDP echo throughput while a flood of growing rate
//! goes to container `flooded`'s flow, for three policies on `flooded`:
//! no limit, a limit that holds (`net-rx-frames=200/s`: today's
//! behaviour, frames wait in the guest's buffers) and a limit that drops
//! (`net-rx-frames=200/s,net-rx-drop=on`). Each runs one VM (the guest's
//! `flood-echo` scenario on a TAP in a private namespace, as root) through
//! every rate; the driver is `tests/src/flood.rs`, shared with the test.
//! Each rate gets a fresh VM with an unflooded phase, then a flooded one;
//! echo's rate under the flood is given as a share of the rate in the
//! phase just before it (the machine's other load moves both alike). Prints the numbers and writes
//! docs/experiments/flood.svg.
//!
//! `cargo bench -p vmm --bench exp_flood` (as root; `FLOOD_PHASE_MS` sets
//! each phase's length, 1500 by default).

#[allow(dead_code)]
#[path = "../../tests/src/lib.rs"]
mod harness;

use std::time::Duration;

use harness::flood::{self, FloodRun};
use plotters::prelude::*;
use vmm::config::ContainerLimit;

/// Flood datagrams per second offered, one phase each (after one without).
const RATES: [u64; 6] = [1_000, 2_000, 5_000, 10_000, 20_000, 40_000];

fn policies() -> Vec<(&'static str, Vec<ContainerLimit>)> {
    let limit = |s: &str| vec![s.parse::<ContainerLimit>().expect("a valid --limit")];
    vec![
        ("no limit", Vec::new()),
        (
            "limit, held (net-rx-frames=200/s)",
            limit("flooded:net-rx-frames=200/s"),
        ),
        (
            "limit, dropped (net-rx-frames=200/s,net-rx-drop=on)",
            limit("flooded:net-rx-frames=200/s,net-rx-drop=on"),
        ),
    ]
}

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("exp_flood: skipped: needs root (a TAP in a private network namespace)");
        return;
    }
    let phase_ms = std::env::var("FLOOD_PHASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500u64);
    let phase = Duration::from_millis(phase_ms);
    let mut curves = Vec::new();
    for (name, limits) in policies() {
        println!("policy: {name}");
        println!(
            "  {:>9} {:>10} {:>14} {:>10} {:>9} {:>12} {:>12} {:>10}",
            "flood/s", "sent", "echo/s before", "echo/s", "share", "flooded_rx", "flooded_drop", "echo_rx"
        );
        let mut shares = Vec::new();
        for &rate in &RATES {
            // A fresh VM per rate: what a policy left behind (frames held
            // in the guest's buffers, a TAP backlog) cannot leak into the
            // next rate's unflooded phase.
            let r: FloodRun = flood::run(&[0, rate], phase, limits.clone());
            assert!(r.run.report.conservation.holds, "{name}: conservation broken");
            let fl = r.run.container("flooded").charges.net;
            let echo = r.run.container("echo").charges.net;
            let (base, p) = (r.points[0], r.points[1]);
            let share = 100.0 * p.echo_per_s / base.echo_per_s.max(1.0);
            println!(
                "  {:>9} {:>10} {:>14.0} {:>10.0} {:>8.1}% {:>12} {:>12} {:>10}",
                p.rate,
                p.flood_sent,
                base.echo_per_s,
                p.echo_per_s,
                share,
                fl.rx_frames,
                fl.rx_dropped_frames,
                echo.rx_frames
            );
            shares.push((p.rate, share));
        }
        curves.push((name, shares));
    }
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/experiments/flood.svg");
    plot(out, &curves).expect("the figure is written");
    println!("figure: docs/experiments/flood.svg");
}

/// Echo's share of its unflooded rate against the flood's rate, one line
/// per policy.
fn plot(path: &str, curves: &[(&str, Vec<(u64, f64)>)]) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap());
    let ymax = curves
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.1))
        .fold(110.0f64, f64::max)
        .min(300.0);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Flood immunity: container echo's echo rate under a flood to container flooded",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((500f64..50_000f64).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("flood to container flooded (datagrams/s offered, log scale)")
        .y_desc("echo's echoes/s, % of the phase without flood")
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(500.0, 90.0), (50_000.0, 90.0)],
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    let colours = [RED, BLUE, GREEN];
    for ((name, ps), colour) in curves.iter().zip(colours) {
        let pts: Vec<(f64, f64)> = ps.iter().map(|&(r, s)| (r as f64, s.min(ymax))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
