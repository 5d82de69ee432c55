//! The bench's chart: placed throughput, and p50/p99 from accepted to final, against the rate
//! offered. One PNG, two panels sharing the offered-rate axis, so "where does it stop keeping
//! up" and "what happens to latency there" read off the same vertical line.
//!
//! Text needs a font: plotters is built with `ab_glyph` (no system font lookup), and is given the
//! bytes of a TrueType file.

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

/// One step of the bench, as plotted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub offered: f64,
    pub placed_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Makes `font` (the contents of a .ttf file) the font of every text in the chart.
pub fn use_font(font: Vec<u8>) -> anyhow::Result<()> {
    // plotters keeps fonts for the life of the process: leaking the one we load is the point.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("not a TrueType or OpenType font"))
}

/// Draws `points` (in any order) into a PNG at `path`, with `title` above.
pub fn draw(points: &[Point], title: &str, path: &Path) -> anyhow::Result<()> {
    let mut points = points.to_vec();
    points.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    let max_rate = points.iter().map(|p| p.offered.max(p.placed_per_s)).fold(100.0, f64::max) * 1.05;
    let max_ms = points.iter().map(|p| p.p99_ms).fold(10.0, f64::max) * 2.0;
    let min_ms = points.iter().map(|p| p.p50_ms).fold(max_ms, f64::min).max(0.1) / 2.0;

    let root = BitMapBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (upper, lower) = root.split_vertically(400);

    let mut throughput = ChartBuilder::on(&upper)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_rate)?;
    throughput
        .configure_mesh()
        .x_desc("offered (orders/s)")
        .y_desc("placed (orders/s)")
        .x_label_formatter(&|rate| format!("{rate:.0}"))
        .y_label_formatter(&|rate| format!("{rate:.0}"))
        .draw()?;
    throughput
        .draw_series(LineSeries::new([(0.0, 0.0), (max_rate, max_rate)], BLACK.mix(0.3)))?
        .label("placed = offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let placed: Vec<(f64, f64)> = points.iter().map(|p| (p.offered, p.placed_per_s)).collect();
    throughput
        .draw_series(LineSeries::new(placed.clone(), BLUE.stroke_width(2)))?
        .label("placed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    throughput.draw_series(placed.iter().map(|&xy| Circle::new(xy, 4, BLUE.filled())))?;
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    let mut latency = ChartBuilder::on(&lower)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_rate, (min_ms..max_ms).log_scale())?;
    latency
        .configure_mesh()
        .x_desc("offered (orders/s)")
        .y_desc("accepted → final (ms, log)")
        .x_label_formatter(&|rate| format!("{rate:.0}"))
        .y_label_formatter(&|ms| format!("{ms:.0}"))
        .draw()?;
    for (name, colour, value) in [
        ("p50", GREEN.to_rgba(), (|p: &Point| p.p50_ms) as fn(&Point) -> f64),
        ("p99", RED.to_rgba(), |p: &Point| p.p99_ms),
    ] {
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.offered, value(p))).collect();
        latency
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        latency.draw_series(line.iter().map(|&xy| Circle::new(xy, 4, colour.filled())))?;
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
