//! Pulling from a durable consumer: only when ready, healing when the consumer is gone, and
//! stopping without wasting a delivery.
//!
//! Every consumer loop of the project (the idempotent consumer, the dead-letter capture) takes
//! its batches from a [`Puller`]:
//!
//! - **Pull when ready.** A long poll for one message, then whatever else is already waiting, up
//!   to the batch size ([`pull_batch`]). Nothing is prefetched, so no message waits in this
//!   process's buffers while its ack timer runs.
//! - **A failed pull is an error, never a spin.** An error status from the server (the consumer
//!   was deleted, the stream re-created, no responders) is retried after a pause that grows to
//!   5 s, logged at warn, and the durable consumer is declared again, as the topology defines
//!   it, if it is gone.
//! - **A pull in flight at shutdown is finished.** Dropped, the messages it brings would sit
//!   delivered and unacknowledged until their ack wait ran out, each one delivery attempt
//!   poorer. So the pull is given until [`LONG_POLL`] ends, and its messages are returned to be
//!   processed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::messaging::{consumer::ConsumerSettings, topology};

/// How long a pull waits for a first message before it is sent again; also how long stopping
/// waits for a pull in flight.
pub const LONG_POLL: Duration = Duration::from_secs(2);

/// How long a request to NATS (a confirmed ack, consumer info, a declaration) may take.
pub(crate) const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes batches from a durable pull consumer. See the module docs.
#[derive(Debug)]
pub struct Puller {
    /// To declare the durable consumer again if it disappears.
    jetstream: jetstream::Context,
    consumer: PullConsumer,
    settings: ConsumerSettings,
    failed_pulls: u32,
}

impl Puller {
    pub fn new(jetstream: jetstream::Context, consumer: PullConsumer, settings: &ConsumerSettings) -> Self {
        Self { jetstream, consumer, settings: settings.clone(), failed_pulls: 0 }
    }

    /// The next batch of messages, once there is one; `None` once `shutdown` is cancelled. A
    /// batch that arrives as `shutdown` comes is still returned: process it, then ask again.
    pub async fn next_batch(&mut self, shutdown: &CancellationToken) -> Option<Vec<jetstream::Message>> {
        while !shutdown.is_cancelled() {
            match self.pull_unless_stopped(shutdown).await? {
                Ok(messages) => {
                    self.failed_pulls = 0;
                    if !messages.is_empty() {
                        return Some(messages);
                    }
                }
                Err(err) => {
                    self.failed_pulls += 1;
                    let pause = pull_retry_pause(self.failed_pulls);
                    tracing::warn!(consumer = %self.settings.name, error = %err, retry_in = ?pause, "pull failed");
                    self.declare_again_if_gone().await;
                    crate::shutdown::sleep_or_cancel(pause, shutdown).await;
                }
            }
        }
        None
    }

    /// One pull. When `shutdown` comes while it waits, the pull is given a little longer to
    /// answer, as a server that is there answers within [`LONG_POLL`]; `None` if it does not
    /// (NATS is away, and nothing can have been delivered).
    async fn pull_unless_stopped(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<Result<Vec<jetstream::Message>, async_nats::Error>> {
        let pull = pull_batch(&self.consumer, self.settings.batch_size);
        let mut pull = std::pin::pin!(pull);
        tokio::select! {
            pulled = &mut pull => Some(pulled),
            _ = shutdown.cancelled() => {
                tokio::time::timeout(LONG_POLL + Duration::from_millis(500), pull).await.ok()
            }
        }
    }

    /// After a failed pull: if the durable consumer no longer exists (an operator deleted it,
    /// or its stream was deleted and created again), declares it again as the topology defines
    /// it, so the service heals by itself instead of pulling from nothing.
    async fn declare_again_if_gone(&mut self) {
        if let Ok(Ok(_)) = tokio::time::timeout(NATS_REQUEST_TIMEOUT, self.consumer.get_info()).await {
            return; // It exists: the pull failed for another reason (NATS away, …).
        }
        let info = self.consumer.cached_info();
        let (stream, filter) = (info.stream_name.clone(), info.config.filter_subject.clone());
        let config = topology::durable_consumer_config(&self.settings, &filter);
        let declare = async {
            let stream = self.jetstream.get_stream(&stream).await.map_err(async_nats::Error::from)?;
            stream.create_consumer(config).await.map_err(async_nats::Error::from)
        };
        let consumer = &self.settings.name;
        match tokio::time::timeout(NATS_REQUEST_TIMEOUT, declare).await {
            Ok(Ok(declared)) => {
                tracing::warn!(%consumer, %stream, "durable consumer was missing: declared it again");
                self.consumer = declared;
            }
            Ok(Err(err)) => {
                tracing::warn!(%consumer, %stream, error = %err, "could not declare the consumer again")
            }
            Err(_) => tracing::warn!(%consumer, %stream, "NATS did not answer in time"),
        }
    }
}

/// The pause after `failures` pulls in a row failed: 100 ms, doubling, at most 5 s. Never
/// zero: a consumer whose pulls fail at once must not spin.
fn pull_retry_pause(failures: u32) -> Duration {
    let doublings = failures.clamp(1, 7) - 1;
    Duration::from_millis(100).saturating_mul(1 << doublings).min(Duration::from_secs(5))
}

/// Waits for a first message, then takes whatever else is ready, up to `size`.
///
/// An error status from the server (the consumer is gone, no responders, …) is an error, unless
/// messages came before it: those are returned, to be processed.
pub async fn pull_batch(
    consumer: &PullConsumer,
    size: usize,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut messages = collect(consumer.fetch().max_messages(size).messages().await?).await?;
    if messages.is_empty() {
        // Long poll: answers as soon as one message arrives, or empty after `LONG_POLL`.
        let first = consumer.batch().max_messages(1).expires(LONG_POLL).messages().await?;
        messages = collect(first).await?;
        if !messages.is_empty() && size > 1 {
            // Whatever this adds is a bonus: the message in hand is processed either way.
            if let Ok(more) = consumer.fetch().max_messages(size - 1).messages().await {
                messages.extend(collect(more).await.unwrap_or_default());
            }
        }
    }
    Ok(messages)
}

/// The messages of one pull. A pull whose answer is lost (the connection dropped meanwhile) is
/// given up after a while; what it did deliver is kept.
async fn collect(
    batch: jetstream::consumer::pull::Batch,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut items = std::pin::pin!(batch.take_until(tokio::time::sleep(Duration::from_secs(10))));
    let mut messages = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            Ok(message) => messages.push(message),
            Err(err) if messages.is_empty() => return Err(err),
            Err(err) => {
                tracing::warn!(error = %err, delivered = messages.len(), "pull ended with an error; processing what it delivered");
                break;
            }
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pulls_are_retried_after_a_pause_that_grows_and_is_never_zero() {
        let pauses: Vec<u128> = (1..=9).map(|n| pull_retry_pause(n).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
