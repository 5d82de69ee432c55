//! `bench-report`: reads the records of a `scripts/bench` run (see `rawbench::record`) and says
//! what they mean.
//!
//! - `bench-report step FILE`: the last step's CPU time per order, by process; exits 0 when the
//!   step kept up (the rule is [`keeps_up`]), 1 when it did not. The bench's search for the
//!   sustained rate steers by this exit code, so the rule lives in one place.
//! - `bench-report summary FILE --png PATH...`: every step in one table, the sustained rate,
//!   its ratio to the machine's limits (the `kind=raw` line), the memory of the soak (the
//!   `kind=memory` lines, when `--soak` ran), and the chart.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rawbench::{plot, record::Record};

#[derive(Debug, Parser)]
#[command(name = "bench-report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the last step's CPU per order; exit 0 if it kept up, 1 if not.
    Step { records: PathBuf },
    /// Print the table of every step, the sustained rate and the ratios; draw the chart.
    Summary {
        records: PathBuf,
        /// Where to write the PNG chart (repeat for copies).
        #[arg(long)]
        png: Vec<PathBuf>,
        /// A TrueType font for the chart's text.
        #[arg(long, env = "BENCH_FONT", default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
        font: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "scripts/bench")]
        title: String,
    },
}

/// A step keeps up when at least this share of the offered rate was placed...
const MIN_PLACED_SHARE: f64 = 0.97;
/// ...its p99 from accepted to final is at most this...
const MAX_P99_MS: f64 = 1_000.0;

/// ...and every order it placed became final while loadgen waited. Behind that rule: a system
/// that keeps up places what it is offered and finishes it promptly; one that does not either
/// slows `POST /orders` down (placed falls short) or builds a backlog (p99 grows with the run's
/// length, and orders are left pending).
fn keeps_up(step: &Record) -> anyhow::Result<bool> {
    Ok(step.number("placed_per_s")? >= MIN_PLACED_SHARE * step.number("offered")?
        && step.number("p99_ms")? <= MAX_P99_MS
        && step.number("pending")? == 0.0
        && step.number("not_placed")? == 0.0)
}

/// Memory is flat when each service's last sample is within this factor of its sample after
/// warm-up (the first in the soak's second third)...
const FLAT_FACTOR: f64 = 1.2;
/// ...plus this allowance, for an allocator's steps at these small sizes.
const FLAT_ALLOWANCE_MIB: f64 = 4.0;
/// Issue 13's bound on each service's resident memory at the sustained rate.
const MEMORY_GOAL_MIB: f64 = 50.0;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("bench-report: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Step { records } => {
            let records = read(&records)?;
            let step = records.iter().rev().find(|r| r.is("step")).context("no kind=step line yet")?;
            println!("  cpu per order  {}", cpu_per_order(step)?);
            let kept_up = keeps_up(step)?;
            println!("  keeps up       {}", if kept_up { "yes" } else { "no" });
            Ok(kept_up)
        }
        Command::Summary { records, png, font, title } => {
            summary(&read(&records)?, &png, &font, &title)?;
            Ok(true)
        }
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Record::parse_all(&text).with_context(|| format!("in {}", path.display()))
}

/// `order-api 412µs, worker-1 95µs, ...`: each `cpu_<process>_ms` of the step over its orders placed.
fn cpu_per_order(step: &Record) -> anyhow::Result<String> {
    let placed = step.number("placed")?.max(1.0);
    let mut parts = Vec::new();
    for key in step.keys().filter(|k| k.starts_with("cpu_") && k.ends_with("_ms")) {
        let process = &key["cpu_".len()..key.len() - "_ms".len()];
        parts.push(format!("{process} {:.0}µs", step.number(key)? * 1000.0 / placed));
    }
    Ok(parts.join(", "))
}

fn summary(records: &[Record], pngs: &[PathBuf], font: &PathBuf, title: &str) -> anyhow::Result<()> {
    let steps: Vec<&Record> = records.iter().filter(|r| r.is("step")).collect();
    println!("offered/s  placed/s  p50       p99       keeps up  phase");
    let mut sustained: Option<f64> = None;
    for step in &steps {
        let kept_up = keeps_up(step)?;
        if kept_up {
            sustained = Some(sustained.unwrap_or(0.0).max(step.number("placed_per_s")?));
        }
        println!(
            "{:>9.0}  {:>8.0}  {:>8}  {:>8}  {:<8}  {}",
            step.number("offered")?,
            step.number("placed_per_s")?,
            millis(step.number("p50_ms")?),
            millis(step.number("p99_ms")?),
            if kept_up { "yes" } else { "no" },
            step.get("phase").unwrap_or("-"),
        );
    }
    println!(
        "rule: kept up = placed >= {:.0} % of offered, p99 accepted → final <= {}, nothing left pending or unplaced",
        MIN_PLACED_SHARE * 100.0,
        millis(MAX_P99_MS)
    );
    match sustained {
        Some(rate) => println!("sustained: {rate:.0} orders/s placed (the fastest step that kept up)"),
        None => println!("sustained: none of the steps kept up"),
    }
    if let (Some(rate), Some(raw)) = (sustained, records.iter().rev().find(|r| r.is("raw"))) {
        for (key, what) in [
            ("pipeline_per_s", "raw publish → pull → batched transaction → ack"),
            ("commits_per_s", "raw Postgres, one transaction per message"),
            ("batched_rows_per_s", "raw Postgres, 100 rows per transaction"),
        ] {
            let limit = raw.number(key)?;
            println!("ratio: {:.3} of {what} ({rate:.0} / {limit:.0})", rate / limit);
        }
    }

    for line in memory_report(records)? {
        println!("{line}");
    }

    let points: Vec<plot::Point> = steps
        .iter()
        .map(|s| {
            Ok(plot::Point {
                offered: s.number("offered")?,
                placed_per_s: s.number("placed_per_s")?,
                p50_ms: s.number("p50_ms")?,
                p99_ms: s.number("p99_ms")?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if !pngs.is_empty() && !points.is_empty() {
        let font_bytes = std::fs::read(font)
            .with_context(|| format!("reading the font {} (BENCH_FONT)", font.display()))?;
        plot::use_font(font_bytes).with_context(|| format!("{} (BENCH_FONT)", font.display()))?;
        for png in pngs {
            plot::draw(&points, title, png)?;
            println!("chart: {}", png.display());
        }
    }
    Ok(())
}

/// The soak's memory, a line per service: resident MiB after warm-up, at the end and at most,
/// and whether that is flat and within [`MEMORY_GOAL_MIB`]. Nothing when no soak ran.
fn memory_report(records: &[Record]) -> anyhow::Result<Vec<String>> {
    let samples: Vec<&Record> = records.iter().filter(|r| r.is("memory")).collect();
    let Some(last) = samples.last() else { return Ok(Vec::new()) };
    let end_s = last.number("t_s")?;
    let mut warm = last;
    for sample in &samples {
        if sample.number("t_s")? * 3.0 >= end_s {
            warm = sample;
            break;
        }
    }
    let warm_s = warm.number("t_s")?;
    let mut lines = vec![format!(
        "memory over the soak: {} samples in {end_s:.0} s; resident MiB after warm-up ({warm_s:.0} s), at the end, at most",
        samples.len()
    )];
    for service in last.keys().filter(|k| *k != "kind" && *k != "t_s") {
        let (at_warm, at_end) = (warm.number(service)?, last.number(service)?);
        let mut most = 0.0_f64;
        for sample in &samples {
            most = most.max(sample.number(service)?);
        }
        let flat = at_end <= at_warm * FLAT_FACTOR + FLAT_ALLOWANCE_MIB;
        lines.push(format!(
            "  {service:<12} {at_warm:>6.1} {at_end:>6.1} {most:>6.1}  {}, {}",
            if flat { "flat" } else { "growing" },
            if most <= MEMORY_GOAL_MIB { "within" } else { "over" },
        ));
    }
    lines.push(format!(
        "rule: flat = at the end <= {FLAT_FACTOR} × after warm-up + {FLAT_ALLOWANCE_MIB} MiB; the goal is at most {MEMORY_GOAL_MIB} MiB"
    ));
    Ok(lines)
}

/// `12.3ms`, or `2.31s` from one second up.
fn millis(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2}s", ms / 1000.0) } else { format!("{ms:.1}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(line: &str) -> Record {
        Record::parse(&format!("kind=step pending=0 not_placed=0 {line}")).unwrap()
    }

    #[test]
    fn a_step_that_places_what_it_is_offered_and_finishes_it_promptly_keeps_up() {
        assert!(keeps_up(&step("offered=1000 placed=20000 placed_per_s=975 p99_ms=999")).unwrap());
    }

    #[test]
    fn a_step_short_of_its_rate_slow_to_finish_or_leaving_orders_behind_does_not_keep_up() {
        assert!(!keeps_up(&step("offered=1000 placed=20000 placed_per_s=960 p99_ms=50")).unwrap());
        assert!(!keeps_up(&step("offered=1000 placed=20000 placed_per_s=1000 p99_ms=1001")).unwrap());
        let pending = Record::parse("kind=step offered=10 placed_per_s=10 p99_ms=5 pending=1 not_placed=0");
        assert!(!keeps_up(&pending.unwrap()).unwrap());
    }

    #[test]
    fn the_soak_memory_is_judged_from_warm_up_to_the_end() {
        let records = Record::parse_all(
            "kind=step offered=1\n\
             kind=memory t_s=10 api=30 worker=10\n\
             kind=memory t_s=20 api=12 worker=10\n\
             kind=memory t_s=30 api=14 worker=40\n\
             kind=memory t_s=40 api=13 worker=60\n",
        )
        .unwrap();
        let lines = memory_report(&records).unwrap();
        assert!(lines[0].contains("4 samples in 40 s") && lines[0].contains("(20 s)"), "{}", lines[0]);
        assert!(lines[1].contains("api") && lines[1].ends_with("flat, within"), "{}", lines[1]);
        assert!(lines[2].contains("worker") && lines[2].ends_with("growing, over"), "{}", lines[2]);
        assert!(memory_report(&records[..1]).unwrap().is_empty());
    }

    #[test]
    fn cpu_per_order_is_each_process_milliseconds_over_orders_placed() {
        let text = cpu_per_order(&step("placed=2000 cpu_order-api_ms=1500 cpu_postgres_ms=3000")).unwrap();
        assert_eq!(text, "order-api 750µs, postgres 1500µs");
    }
}
