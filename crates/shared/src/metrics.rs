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
//! | `outbox_delay_duration_seconds` | histogram | how long a message waited in the outbox: its row written → the broker's PubAck, by subject |
//! | `messaging_consumer_delay_duration_seconds` | histogram | how long a message waited for its consumer: stored in the stream → its work committed, by consumer |
//! | `outbox_pending_messages`, `outbox_oldest_pending_age_seconds` | gauges | the outbox backlog |
//! | `outbox_quarantined_messages` | gauge | outbox rows the broker refuses for good, set aside for a person |
//! | `orders_consumer_lag_pending`, `…_ack_pending`, `…_redelivered` | gauges | a consumer's lag, as JetStream reports it |
//!
//! The two delays are the stages of an order's journey, each measured by the part that ends it
//! (Grafana's "Where orders wait" panel): accepted → published is `outbox_delay` of `orders.new`
//! in order-api; published → worker committed, `messaging_consumer_delay` of `inventory-worker`;
//! worker committed → outcome published, `outbox_delay` of `order_events.*` in the worker; and
//! outcome published → status visible, `messaging_consumer_delay` of `order-api-projection`.
//!
//! Services add their own (orders accepted and refused, dead letters captured, …). The
//! recorder is process-wide: [`install`] sets it up once, and the `metrics` macros anywhere in
//! the process report to it. Every service also runs [`upkeep`], so that one nobody scrapes keeps
//! its memory flat.

use std::{sync::OnceLock, time::Duration};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const HTTP_REQUEST_DURATION: &str = "http.server.request.duration";
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
pub const PROCESS_DURATION: &str = "messaging.process.duration";
pub const BATCH_SIZE: &str = "messaging.batch.size";
pub const OUTBOX_DELAY: &str = "outbox.delay.duration";
pub const CONSUMER_DELAY: &str = "messaging.consumer.delay.duration";
pub const OUTBOX_PENDING: &str = "outbox.pending.messages";
pub const OUTBOX_OLDEST_AGE: &str = "outbox.oldest_pending_age";
pub const OUTBOX_QUARANTINED: &str = "outbox.quarantined.messages";
// Not the NATS exporter's `jetstream_consumer_num_pending` (and so on): with the same names, one
// query would return both its series and these, under different label names.
pub const CONSUMER_PENDING: &str = "orders.consumer.lag.pending";
pub const CONSUMER_ACK_PENDING: &str = "orders.consumer.lag.ack_pending";
pub const CONSUMER_REDELIVERED: &str = "orders.consumer.lag.redelivered";

/// Latency buckets, in seconds: 1 ms to a minute (a redelivered message waits out its BackOff).
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .with_recommended_naming(true)
                .set_buckets_for_metric(Matcher::Suffix("duration".into()), &LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("batch.size".into()), &BATCH_BUCKETS))
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

/// How often [`upkeep`] folds the histograms' recorded samples into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the samples every histogram recorded since the last time into its buckets, every
/// [`UPKEEP_INTERVAL`], until `shutdown`.
///
/// **Why:** the recorder keeps each sample it is given (8 bytes) until a scrape renders the
/// histograms or this upkeep runs. A service nobody scrapes (no Prometheus, as under
/// `scripts/bench`) would keep every sample it ever recorded: about a hundred bytes per order,
/// for order-api's dozen histogram samples an order. `scripts/bench --soak` saw order-api grow
/// steadily from 26 to 49 MiB in five minutes at 680 orders/s before this ran; the recorder from
/// [`PrometheusBuilder::build_recorder`] leaves upkeep to its owner. A scrape does the same work,
/// so with Prometheus this costs nothing more.
pub async fn upkeep(shutdown: CancellationToken) {
    let handle = install();
    while !shutdown.is_cancelled() {
        crate::shutdown::sleep_or_cancel(UPKEEP_INTERVAL, &shutdown).await;
        handle.run_upkeep();
    }
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
    describe_histogram!(
        OUTBOX_DELAY,
        Unit::Seconds,
        "Time from an outbox row being written to the broker confirming its message, by subject."
    );
    describe_histogram!(
        CONSUMER_DELAY,
        Unit::Seconds,
        "Time from a message being stored in its stream to its consumer committing its work."
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The upkeep folds samples into the histogram rather than dropping them, and it ends as soon
    /// as the service stops (it runs in every service: one that lingered would hold up shutdown).
    #[tokio::test(start_paused = true)]
    async fn the_upkeep_keeps_every_sample_it_folds_and_stops_at_shutdown() {
        let handle = install();
        let shutdown = CancellationToken::new();
        let upkeep = tokio::spawn(upkeep(shutdown.clone()));
        for _ in 0..3 {
            metrics::histogram!("upkeep.test.duration").record(0.002);
            tokio::time::sleep(UPKEEP_INTERVAL * 2).await; // Paused time: the upkeep runs between.
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), upkeep).await.expect("stops at once").unwrap();
        let text = handle.render();
        assert!(text.lines().any(|line| line == "upkeep_test_duration_count 3"), "{text}");
    }
}
