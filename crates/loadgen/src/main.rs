//! `loadgen`: read the flags (or their environment variables), run, print the summary.
//!
//! Exit codes: 0 after a run, whatever its orders became; 1 when the run could not be made (no
//! order-api at the URL); 2 for invalid arguments (clap prints what is wrong and exits).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = loadgen::Cli::parse().into_config();
    match loadgen::run(config).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}
