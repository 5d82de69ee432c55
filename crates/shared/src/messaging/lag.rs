//! A durable consumer's lag: read from JetStream every few seconds, exported as gauges
//! (`orders_consumer_lag_*`, see [`crate::metrics`]), and kept as the last known figure that
//! order-api's load shedding reads (`MAX_CONSUMER_LAG`).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ::metrics::gauge;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CONSUMER_ACK_PENDING, CONSUMER_PENDING, CONSUMER_REDELIVERED};

/// A durable consumer's lag (`num_pending` + `num_ack_pending`), as last read by a [`LagMonitor`],
/// and when.
///
/// **Why it expires:** order-api turns orders away while the lag is above `MAX_CONSUMER_LAG`. If
/// NATS goes away at such a moment, the lag cannot be read again, and a figure kept for ever would
/// refuse every order for the whole outage, although the outbox could take them (it has its own
/// bound, `OUTBOX_MAX_BACKLOG`). So a figure older than a few poll intervals counts as unknown, and
/// an unknown lag refuses nothing.
#[derive(Debug, Clone)]
pub struct ConsumerLag {
    last: Arc<Mutex<Option<(u64, Instant)>>>,
    max_age: Duration,
}

impl ConsumerLag {
    /// How many poll intervals a figure stays valid without being refreshed.
    pub const VALID_FOR_POLLS: u32 = 3;

    fn new(poll_interval: Duration) -> Self {
        Self { last: Arc::default(), max_age: poll_interval * Self::VALID_FOR_POLLS }
    }

    /// The lag, if it was read within the last few poll intervals; `None` if it is unknown
    /// (never read, or NATS has not answered since).
    pub fn get(&self) -> Option<u64> {
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.filter(|(_, at)| at.elapsed() <= self.max_age).map(|(lag, _)| lag)
    }

    fn set(&self, lag: u64) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((lag, Instant::now()));
    }
}

/// Polls a consumer's state from JetStream and keeps its gauges (and a [`ConsumerLag`]) current.
#[derive(Debug, Clone)]
pub struct LagMonitor {
    jetstream: jetstream::Context,
    stream: &'static str,
    consumer: String,
    interval: Duration,
    lag: ConsumerLag,
}

impl LagMonitor {
    pub fn new(
        jetstream: jetstream::Context,
        stream: &'static str,
        consumer: &str,
        interval: Duration,
    ) -> Self {
        Self { jetstream, stream, consumer: consumer.to_owned(), interval, lag: ConsumerLag::new(interval) }
    }

    pub fn lag(&self) -> ConsumerLag {
        self.lag.clone()
    }

    /// Polls until `shutdown` is cancelled. A poll in flight is abandoned at shutdown: with
    /// NATS away it would wait out its request timeouts, and nothing depends on its answer.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.poll() => {}
            }
            crate::shutdown::sleep_or_cancel(self.interval, &shutdown).await;
        }
    }

    /// Reads the consumer's state once, waiting at most the poll interval (1 s at least): a
    /// broker that does not answer must not stall the loop (the figure then expires, see
    /// [`ConsumerLag`]).
    pub async fn poll(&self) {
        let timeout = self.interval.max(Duration::from_secs(1));
        if tokio::time::timeout(timeout, self.read()).await.is_err() {
            tracing::debug!(consumer = %self.consumer, "JetStream did not report consumer lag in time");
        }
    }

    /// While the consumer does not exist yet (no worker has started), everything in the stream
    /// is lag.
    async fn read(&self) {
        let Ok(mut stream) = self.jetstream.get_stream(self.stream).await else { return };
        let (pending, ack_pending, redelivered) = match stream.consumer_info(&self.consumer).await {
            Ok(info) => (info.num_pending, info.num_ack_pending as u64, info.num_redelivered as u64),
            Err(_) => match stream.info().await {
                Ok(info) => (info.state.messages, 0, 0),
                Err(_) => return,
            },
        };
        let labels = [("stream", self.stream.to_owned()), ("consumer", self.consumer.clone())];
        gauge!(CONSUMER_PENDING, &labels).set(pending as f64);
        gauge!(CONSUMER_ACK_PENDING, &labels).set(ack_pending as f64);
        gauge!(CONSUMER_REDELIVERED, &labels).set(redelivered as f64);
        self.lag.set(pending + ack_pending);
    }
}
