//! `rawbench`: this machine's limits with no project code, for `scripts/bench` to compare the
//! project with. Three measurements, one after the other, each for `--seconds`:
//!
//! 1. publish → pull consumer → one transaction per batch → ack (messages/s);
//! 2. Postgres, one transaction per message, over `--connections` (commits/s);
//! 3. Postgres, 100 rows per transaction, over `--connections` (rows/s).
//!
//! It refuses a Postgres without `fsync` and `synchronous_commit`, prints the figures, and with
//! `--record FILE` appends them to FILE as one `kind=raw` line (see `rawbench::record`).
//! It needs a NATS user that may create streams (the bench's `admin`) and a database role that
//! may create tables; it drops its stream when done and recreates its tables on each run.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use rawbench::{pipeline, postgres, record::Record};
use sqlx::postgres::PgPoolOptions;

/// Measures this machine's JetStream → Postgres pipeline and Postgres commit rates.
#[derive(Debug, Parser)]
#[command(name = "rawbench")]
struct Cli {
    /// nats-server to measure, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "RAWBENCH_NATS_URL")]
    nats_url: String,
    /// The NATS user to log in as: one that may create streams.
    #[arg(long, env = "RAWBENCH_NATS_USER", default_value = "admin")]
    nats_user: String,
    /// Its password; only from the environment, so that it is not shown in the process list.
    #[arg(long, env = "RAWBENCH_NATS_PASSWORD", hide = true, hide_env_values = true)]
    nats_password: String,
    /// Postgres database to write to, e.g. postgres://postgres@127.0.0.1:5432/rawbench.
    #[arg(long, env = "RAWBENCH_DATABASE_URL")]
    database_url: String,
    /// How long each of the three measurements runs.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Postgres connections committing at once (measurements 2 and 3).
    #[arg(long, default_value = "8", value_parser = clap::value_parser!(u64).range(1..=200))]
    connections: u64,
    /// Pull workers sharing the consumer (measurement 1), as the bench runs two inventory workers.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Append the figures to this file as one `kind=raw` line.
    #[arg(long)]
    record: Option<PathBuf>,
}

/// Rows per transaction in the batched measurement.
const ROWS_PER_TRANSACTION: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let duration = Duration::from_secs(cli.seconds);
    let connections = cli.connections as usize;
    let workers = cli.workers as usize;

    let pool = PgPoolOptions::new()
        .max_connections(cli.connections as u32)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.database_url)
        .await
        .context("connecting to --database-url")?;
    let nats = async_nats::ConnectOptions::new()
        .user_and_password(cli.nats_user.clone(), cli.nats_password.clone())
        .connection_timeout(Duration::from_secs(5))
        .connect(cli.nats_url.as_str())
        .await
        .context("connecting to --nats-url")?;
    postgres::check_durable(&pool).await?;
    postgres::create_tables(&pool).await?;

    println!(
        "rawbench: the machine's limits, no project code ({}s each; fsync and synchronous_commit on)",
        cli.seconds
    );
    let pipeline = pipeline::messages_per_second(&nats, &pool, workers, duration).await?;
    println!(
        "  publish → pull → batched transaction → ack  {pipeline:>8.0} messages/s  ({workers} workers, batches up to 100)"
    );
    let commits = postgres::commits_per_message(&pool, connections, duration).await?;
    println!(
        "  Postgres, one transaction per message        {commits:>8.0} commits/s   ({connections} connections)"
    );
    let batched = postgres::rows_in_batches(&pool, connections, ROWS_PER_TRANSACTION, duration).await?;
    println!(
        "  Postgres, {ROWS_PER_TRANSACTION} rows per transaction           {batched:>8.0} rows/s      ({connections} connections)"
    );

    if let Some(path) = cli.record {
        let line = Record::default()
            .with("kind", "raw")
            .with("pipeline_per_s", pipeline.round())
            .with("commits_per_s", commits.round())
            .with("batched_rows_per_s", batched.round())
            .with("connections", connections)
            .with("workers", workers)
            .with("seconds", cli.seconds);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening --record {}", path.display()))?;
        writeln!(file, "{line}").with_context(|| format!("writing --record {}", path.display()))?;
    }
    Ok(())
}
