//! Experiment 1, prioritized clients (docs/experiments.md): the mean
//! latency of `high`'s 512-byte reads while `low` offers 1x..10x of a fifth
//! of a tenant cap of 8 MiB/s (4096-byte reads, up to 4 in flight), with
//! `high` at priority 7 and `low` at 0, and without priorities. Each point
//! is the median of 3 runs of real VMs. Prints the table and writes
//! docs/experiments/priority.svg.
//!
//! `cargo bench -p vmm --bench exp_priority`

#[path = "../../tests/src/blk_mix.rs"]
#[allow(dead_code)]
mod blk_mix;

use plotters::prelude::*;

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over [`RUNS`] of high's mean latency (µs) and low's reads/s.
fn point(load: u32, prioritized: bool, tsc: f64) -> (f64, f64) {
    let runs: Vec<_> = (0..RUNS)
        .map(|_| blk_mix::prio_point(load, prioritized, tsc))
        .collect();
    (
        median(runs.iter().map(|r| r.0.mean_latency_us).collect()),
        median(runs.iter().map(|r| r.3).collect()),
    )
}

fn main() {
    let tsc = blk_mix::tsc_per_us();
    let (alone, _) = point(0, true, tsc);
    println!("exp_priority: high alone (no low load): {alone:.0} us mean latency");
    println!("load  low/s-offered  high-us(prio)  high-us(no prio)  low-reads/s(prio)  low-reads/s(no prio)");
    let mut with = Vec::new();
    let mut without = Vec::new();
    for load in 1..=10u32 {
        let (p, lp) = point(load, true, tsc);
        let (n, ln) = point(load, false, tsc);
        println!(
            "{load:>4}  {:>13.0}  {p:>13.0}  {n:>16.0}  {lp:>17.0}  {ln:>20.0}",
            blk_mix::LOW_BASE_PER_S * f64::from(load)
        );
        with.push((f64::from(load), p));
        without.push((f64::from(load), n));
    }
    let worst = with.iter().map(|p| p.1).fold(0.0, f64::max);
    println!(
        "exp_priority: with priorities, high's worst point is {:.2}x its unloaded latency (target 2x); without, {:.2}x",
        worst / alone,
        without.iter().map(|p| p.1).fold(0.0, f64::max) / alone
    );
    plot(alone, &with, &without).expect("the figure");
}

fn plot(alone: f64, with: &[(f64, f64)], without: &[(f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/experiments/priority.svg");
    let top = without
        .iter()
        .chain(with)
        .map(|p| p.1)
        .fold(2.0 * alone, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "High-priority read latency vs low-priority load",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..10.5f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("low-priority offered load (x 410 reads/s of 4 KiB; tenant cap 8 MiB/s)")
        .y_desc("high's mean latency (us)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(with.iter().copied(), BLUE.stroke_width(2)))?
        .label("priorities (high 7, low 0)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(without.iter().copied(), RED.stroke_width(2)))?
        .label("no priorities (one FIFO)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new([(0.5, 2.0 * alone), (10.5, 2.0 * alone)], BLACK))?
        .label("2x unloaded latency")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    println!("exp_priority: wrote {path}");
    Ok(())
}
