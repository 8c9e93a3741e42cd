//! Experiment 2 of issue 10, capping (docs/experiments.md, "2. Capping"):
//! the share of run time a container limited to P % CPU obtains while
//! another container spins, for P in 10, 20, 40, 60 %.
//!
//! `cargo bench -p vmm --bench exp_capping` (a plain `main`, no harness).
//! Each point is one real VM (the `cpucap` guest, cooperative mode, one
//! vCPU) run for `EXP_CAPPING_MS` (5000) ms of wall time with
//! `--limit cap-a:cpu=P%/100ms`; it prints `cap-a`'s and `cap-b`'s share of
//! the measured run time and `cap-a`'s holds, and writes requested against
//! obtained share to docs/experiments/capping.svg. Nothing is asserted
//! (tests/tests/exp_capping.rs asserts the shape).

use plotters::prelude::*;
use vmm::config::{Builtin, ConsoleTarget, KernelSource, VmConfig};

const PERCENTS: [u32; 4] = [10, 20, 40, 60];

/// One point: `(a's share, b's share, a's throttle events)` of run time.
fn run(percent: u32, ms: u64) -> (f64, f64, u64) {
    let mut cfg = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
    cfg.cmdline = Some("scenario=cpucap mode=coop".into());
    cfg.console = ConsoleTarget::File("/dev/null".into());
    cfg.container_limits = vec![format!("cap-a:cpu={percent}%/100ms")
        .parse()
        .expect("a valid limit")];
    cfg.time_limit_ms = Some(ms);
    let report = vmm::run(&cfg).expect("the VM runs").report();
    assert!(report.conservation.holds, "conservation broken");
    let total = report.totals.guest_run_ns as f64;
    let of = |path: &str| report.container(path).expect("declared").charges.clone();
    let (a, b) = (of("cap-a"), of("cap-b"));
    (
        a.guest_run_ns as f64 / total,
        b.guest_run_ns as f64 / total,
        a.cpu.throttle_events,
    )
}

fn main() {
    let ms = std::env::var("EXP_CAPPING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000u64);
    println!("limit  cap-a share  cap-b share  cap-a holds  ({ms} ms each, cpu=P%/100ms, 1 vCPU)");
    let mut points = Vec::new();
    for p in PERCENTS {
        let (a, b, holds) = run(p, ms);
        println!(
            "{p:>4} %  {:>10.2} %  {:>10.2} %  {holds:>11}",
            a * 100.0,
            b * 100.0
        );
        points.push((f64::from(p), a * 100.0));
    }
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/experiments/capping.svg");
    std::fs::create_dir_all(std::path::Path::new(out).parent().expect("a parent")).expect("docs/experiments");
    plot(out, &points).expect("the figure");
    println!("wrote {out}");
}

fn plot(out: &str, points: &[(f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(out, (640, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Capping: requested vs obtained CPU share", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..70f64, 0f64..70f64)?;
    chart
        .configure_mesh()
        .x_desc("limit of cap-a (% of one vCPU per 100 ms)")
        .y_desc("cap-a's share of run time (%)")
        .draw()?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (70.0, 70.0)], BLACK.mix(0.3)))?
        .label("requested = obtained")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    chart
        .draw_series(LineSeries::new(points.iter().copied(), BLUE))?
        .label("obtained (cpucap, cooperative, 5 s)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
