//! loadgen: places orders on order-api at a steady rate, with a realistic mix, and reports what
//! became of them.
//!
//! The mix exercises every path of the system: ordinary orders (reserved), orders for scarce
//! stock (rejected once it runs out), `FLAKY-1` orders (retried once, then reserved), `FAIL-1`
//! orders (dead-lettered) and repeated `Idempotency-Key`s (one order for two requests). Every
//! accepted order is followed until it is final, and the [`Summary`] gives the outcomes, the
//! latency from accepted to final status, and what went wrong on the way.
//!
//! loadgen is a well-behaved client of an API with backpressure: every request carries an
//! `Idempotency-Key`, and a `503` is answered by waiting its `Retry-After` and sending the same
//! request, with the same key, again.
//!
//! ```sh
//! cargo run --bin loadgen -- --rate 50 --duration 30s
//! cargo run --bin loadgen -- --count 200 --mix ordinary=1,repeat=1 --quiet
//! ```
//!
//! # Layout
//! - [`config`]: [`Config`] (what a run does) and [`Cli`], the flags and variables that build one.
//! - [`mix`]: the kinds of order, their weights, and the sequence a mix produces.
//! - [`orders`]: the request body for each kind, and the order as order-api shows it.
//! - [`client`]: `POST /orders` with `Retry-After` honoured, `GET /orders/{id}`.
//! - [`place`]: sending orders at the rate, within the concurrency limit.
//! - [`follow`]: polling accepted orders until they are final.
//! - [`report`]: the running [`Tally`](report::Tally) and the final [`Summary`].
//! - [`progress`]: the bars shown while it runs.
//! - [`run`]: the wiring of one run.

pub mod client;
pub mod config;
pub mod follow;
pub mod mix;
pub mod orders;
pub mod place;
pub mod progress;
pub mod report;

use std::sync::Arc;

use anyhow::Context;
use tokio::{sync::mpsc, time::Instant};

pub use config::{Cli, Config, Load};
pub use mix::{Kind, Mix};
pub use report::{ErrorKind, Latency, Summary};

use crate::{client::OrderApiClient, progress::Progress, report::Tally};

/// Runs the load described by `config` and returns its summary.
///
/// Two halves run side by side: placing orders, and following the accepted ones to their final
/// status. Following starts at once, so early orders become final while later ones are still
/// being placed; once the last order is placed, it goes on for at most `config.wait`.
///
/// Fails only when the run cannot be made: an invalid `config`, or no order-api answering at
/// `config.url`. Everything that goes wrong during a run (errors, orders never final) is in the
/// summary instead.
pub async fn run(config: Config) -> anyhow::Result<Summary> {
    config.validate().context("invalid configuration")?;
    let client = OrderApiClient::new(&config.url)?;
    client.check_reachable().await?;

    let tally = Arc::new(Tally::new()?);
    let progress = Progress::new(config.quiet, config.expected_orders());
    let display = (!config.quiet).then(|| tokio::spawn(progress.clone().refresh(tally.clone())));
    let started = Instant::now();

    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
    let follower =
        tokio::spawn(follow::follow_statuses(client.clone(), accepted_rx, tally.clone(), config.wait));
    let placed = place::place_orders(&config, &client, &tally, accepted_tx).await;
    let placing_time = started.elapsed();
    let pending = match placed {
        Ok(()) => follower.await.context("the task following order statuses failed"),
        Err(err) => {
            follower.abort();
            Err(err)
        }
    };
    if let Some(display) = display {
        display.abort();
    }
    let pending = pending?;
    progress.finish(&tally.snapshot());
    Ok(tally.summary(placing_time, started.elapsed(), config.wait, pending))
}
