//! `loadgen`: read the flags (or their environment variables), run, print the summary (and
//! append its figures to the `--record` file, if one is given).
//!
//! Exit codes: 0 after a run, whatever its orders became; 1 when the run could not be made (no
//! order-api at the URL); 2 for invalid arguments (clap prints what is wrong and exits).

use std::{io::Write, path::Path, process::ExitCode};

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = loadgen::Cli::parse();
    let record = cli.record.clone();
    let config = cli.into_config();
    let rate = config.rate;
    match loadgen::run(config).await {
        Ok(summary) => {
            println!("{summary}");
            if let Some(path) = record
                && let Err(err) = append_line(&path, &summary.record_line(rate))
            {
                eprintln!("loadgen: writing --record {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}
