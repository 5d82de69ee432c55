//! The instruments of `scripts/bench`: what this machine can do with no project code, and the
//! report of a whole bench run.
//!
//! Figures from a shared two-core machine drift from one run to the next by more than most
//! changes to the code. So the bench measures the machine itself in the same run, with the same
//! nats-server and the same durable Postgres, and quotes the project as a *ratio* to those
//! limits. Three limits, each the simplest program that does that much of the project's work:
//!
//! - [`pipeline`]: publish to a work-queue stream → pull consumer → one Postgres transaction per
//!   batch (insert the rows, commit) → ack. The shape of one hop of the project, with no outbox,
//!   no HTTP, no idempotency checks beyond a primary key, no tracing.
//! - [`postgres::commits_per_message`]: one transaction per message over N connections. The
//!   ceiling of any design that commits each request on its own (`fsync` per commit).
//! - [`postgres::rows_in_batches`]: 100 rows per transaction: what batching buys on this disk.
//!
//! Both binaries are small on purpose: `rawbench` (`src/main.rs`) runs the three and records
//! them; `bench-report` (`src/bin/bench-report.rs`) reads the records of a run and prints the
//! summary table, the ratios and a PNG chart ([`plot`]).
//!
//! # Layout
//! - [`pipeline`]: the raw JetStream → Postgres pipeline.
//! - [`postgres`]: the commit-rate measurements, and the durability check.
//! - [`record`]: the `key=value` lines a run's figures are written as, and read back from.
//! - [`plot`]: the chart of placed throughput and latency against offered rate.

pub mod pipeline;
pub mod plot;
pub mod postgres;
pub mod record;

use std::time::Duration;

/// Messages per second, from a count over a measured time.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { count as f64 / elapsed.as_secs_f64() }
}

/// A payload of about the size of an `orders.new` event (a customer, two items, ids and times).
pub fn sample_payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; 256])
}
