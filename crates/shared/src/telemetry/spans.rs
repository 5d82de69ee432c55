//! The spans every service opens the same way, named and attributed after OpenTelemetry's
//! messaging and database conventions, so Jaeger shows one order as one tree.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A PRODUCER span for publishing one message (OpenTelemetry messaging conventions).
pub fn publish_span(subject: &str, message_id: &str) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = format!("publish {subject}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = subject,
        messaging.message.id = message_id,
    )
}

/// A CONSUMER span for one delivery attempt of one message. Each attempt is its own span, so
/// retries and their pauses show in the trace.
pub fn process_span(
    subject: &str,
    message_id: &str,
    consumer: &str,
    attempt: u64,
    stream_sequence: u64,
) -> tracing::Span {
    tracing::info_span!(
        "process",
        otel.name = format!("process {subject}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = subject,
        messaging.message.id = message_id,
        messaging.consumer.group.name = consumer,
        messaging.nats.delivery_attempt = attempt,
        messaging.nats.stream_sequence = stream_sequence,
        outcome = tracing::field::Empty,
    )
}

/// A CLIENT span around database work (one transaction or statement).
pub fn db_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db",
        otel.name = operation,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.operation.batch.size = tracing::field::Empty,
    )
}

/// Marks a span failed: error status, and `error.type`, a short class of the failure.
pub fn record_error(span: &tracing::Span, error_type: &str, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
}

/// The ID of the current trace, for responses and records ("open this trace in Jaeger").
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}
