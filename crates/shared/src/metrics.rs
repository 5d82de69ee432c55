//! Queue health you can see: `GET /metrics` in the Prometheus text format, in every service.
//!
//! Names follow the OpenTelemetry semantic conventions where one exists, in their Prometheus
//! form (dots become underscores, counters end in `_total`, durations in `_seconds`):
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | every HTTP request, by method, route and status |
//! | `messaging_client_sent_messages_total` | counter | messages the outbox relay published (`error_type` when it failed) |
//! | `messaging_client_operation_duration_seconds` | histogram | publish latency, send to PubAck |
//! | `messaging_client_consumed_messages_total` | counter | messages a consumer handled, by `outcome` |
//! | `messaging_process_duration_seconds` | histogram | time to handle a message, by `outcome` |
//! | `messaging_batch_size` | histogram | messages per consumer batch |
//! | `outbox_pending_messages`, `outbox_oldest_pending_age_seconds` | gauges | the outbox backlog |
//! | `outbox_quarantined_messages` | gauge | outbox rows the broker refuses for good, set aside for a person |
//! | `orders_consumer_lag_pending`, `…_ack_pending`, `…_redelivered` | gauges | a consumer's lag, as JetStream reports it |
//!
//! Services add their own (orders accepted and refused, dead letters captured, …). The
//! recorder is process-wide: [`install`] sets it up once, and the `metrics` macros anywhere in
//! the process report to it.

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const HTTP_REQUEST_DURATION: &str = "http.server.request.duration";
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
pub const PROCESS_DURATION: &str = "messaging.process.duration";
pub const BATCH_SIZE: &str = "messaging.batch.size";
pub const OUTBOX_PENDING: &str = "outbox.pending.messages";
pub const OUTBOX_OLDEST_AGE: &str = "outbox.oldest_pending_age";
pub const OUTBOX_QUARANTINED: &str = "outbox.quarantined.messages";
// Not the NATS exporter's `jetstream_consumer_num_pending` (and so on): with the same names, one
// query would return both its series and these, under different label names.
pub const CONSUMER_PENDING: &str = "orders.consumer.lag.pending";
pub const CONSUMER_ACK_PENDING: &str = "orders.consumer.lag.ack_pending";
pub const CONSUMER_REDELIVERED: &str = "orders.consumer.lag.redelivered";

/// Latency buckets, in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .with_recommended_naming(true)
                .set_buckets_for_metric(Matcher::Suffix("duration".into()), &LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS))
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case ours is unused.
            metrics::set_global_recorder(recorder).ok();
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_histogram!(HTTP_REQUEST_DURATION, Unit::Seconds, "Duration of HTTP server requests.");
    describe_counter!(SENT_MESSAGES, "Messages published to NATS by the outbox relay.");
    describe_counter!(
        crate::http::CONNECTIONS_REFUSED,
        "HTTP connections closed on arrival because the connection cap was reached."
    );
    describe_histogram!(OPERATION_DURATION, Unit::Seconds, "Publish latency, from send to PubAck.");
    describe_counter!(CONSUMED_MESSAGES, "Messages a consumer delivered to the service, by outcome.");
    describe_histogram!(PROCESS_DURATION, Unit::Seconds, "Time to process a message, by outcome.");
    describe_histogram!(BATCH_SIZE, "Messages per consumer batch.");
    describe_gauge!(OUTBOX_PENDING, "Outbox rows waiting to be published.");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row waiting to be published."
    );
    describe_gauge!(
        OUTBOX_QUARANTINED,
        "Outbox rows the broker refuses for good (no stream, too large), set aside until released."
    );
    describe_gauge!(CONSUMER_PENDING, "Messages not yet delivered to the consumer.");
    describe_gauge!(CONSUMER_ACK_PENDING, "Messages delivered and not yet acknowledged.");
    describe_gauge!(CONSUMER_REDELIVERED, "Messages delivered more than once and not yet acknowledged.");
}

/// `GET /metrics`.
pub async fn render() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], install().render())
}

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
