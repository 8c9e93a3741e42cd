//! Experiment 4, isolation of virtual servers (docs/experiments.md): `a`
//! and `b` each keep 2 reads of 4096 bytes in flight under a tenant cap of
//! 1 MiB/s, with shares 1:1, 2:1 and 4:1 (and none set). Prints each one's
//! bandwidth and the ratio, and writes docs/experiments/shares.svg.
//!
//! `cargo bench -p vmm --bench exp_shares`

#[path = "../../tests/src/blk_mix.rs"]
#[allow(dead_code)]
mod blk_mix;

use plotters::prelude::*;

fn main() {
    let tsc = blk_mix::tsc_per_us();
    println!("shares   a-MiB/s  b-MiB/s  a:b");
    let mut points = Vec::new();
    for shares in [None, Some((1u32, 1u32)), Some((2, 1)), Some((4, 1))] {
        let (a, b, _, took) = blk_mix::shares_point(shares, tsc);
        let mib = |bytes: u64| bytes as f64 / took.as_secs_f64() / f64::from(1u32 << 20);
        let ratio = a.bytes as f64 / b.bytes.max(1) as f64;
        let name = shares.map_or("none".to_owned(), |(x, y)| format!("{x}:{y}"));
        println!(
            "{name:>6}  {:>8.2}  {:>7.2}  {ratio:.3}",
            mib(a.bytes),
            mib(b.bytes)
        );
        if let Some((x, y)) = shares {
            points.push((f64::from(x) / f64::from(y), ratio, mib(a.bytes), mib(b.bytes)));
        }
    }
    plot(&points).expect("the figure");
}

fn plot(points: &[(f64, f64, f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/experiments/shares.svg");
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = points.iter().map(|p| p.2.max(p.3)).fold(4.5, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Two containers' block bandwidth by share (tenant cap 1 MiB/s)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..4.5f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("share of a : share of b (b = 1)")
        .y_desc("MiB/s, and the measured a:b ratio")
        .draw()?;
    let series = [
        (
            "a's bandwidth (MiB/s)",
            BLUE,
            points.iter().map(|p| (p.0, p.2)).collect::<Vec<_>>(),
        ),
        (
            "b's bandwidth (MiB/s)",
            RED,
            points.iter().map(|p| (p.0, p.3)).collect(),
        ),
        ("measured a:b", GREEN, points.iter().map(|p| (p.0, p.1)).collect()),
        ("a:b = shares", BLACK, points.iter().map(|p| (p.0, p.0)).collect()),
    ];
    for (label, color, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    println!("exp_shares: wrote {path}");
    Ok(())
}
