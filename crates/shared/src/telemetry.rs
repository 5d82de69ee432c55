//! Logs and traces, set up the same way in every service.
//!
//! - **Logs**: `tracing` with an `EnvFilter` (`RUST_LOG`), human-readable or JSON lines
//!   (`LOG_FORMAT=json`). Every line written inside a span ends with its `trace_id` and
//!   `span_id`, so a log line leads to its trace and back.
//! - **Traces**: `tracing` spans become OpenTelemetry spans (tracing-opentelemetry), exported
//!   over OTLP when an endpoint is configured. Configuration is OpenTelemetry's own variables:
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL`
//!   (`http/protobuf` or `http/json`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER`, `OTEL_SDK_DISABLED`. With no endpoint, spans still get IDs (for logs,
//!   responses and propagation) but nothing is sent anywhere, and nothing complains.
//!
//! [`Telemetry::shutdown`] flushes spans not yet exported; services call it on the way out.

use std::fmt;

use opentelemetry::{global, trace::TraceContextExt, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::{ConfigError, Env};

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,async_nats=warn";

/// How spans leave the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// `OTEL_SDK_DISABLED=true`: no OpenTelemetry at all.
    Disabled,
    /// No OTLP endpoint configured: spans are created (IDs in logs and headers) but not sent.
    None,
    /// OTLP over HTTP to the configured endpoint, in protobuf (the default) or JSON.
    Otlp { endpoint: String, json: bool },
}

/// The OpenTelemetry settings, read from OpenTelemetry's standard variables and checked up
/// front, so a typo stops the service with an error that names the variable.
pub fn export_from_env(env: &Env) -> Result<Export, ConfigError> {
    if let Some(value) = env.raw("OTEL_SDK_DISABLED") {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" => return Ok(Export::Disabled),
            "false" => {}
            _ => return Err(ConfigError::new("OTEL_SDK_DISABLED", &value, "expected true or false")),
        }
    }
    // The first one set decides, as the OpenTelemetry specification orders them.
    let mut json = None;
    for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(value) = env.raw(variable) {
            match value.trim() {
                "http/protobuf" => _ = json.get_or_insert(false),
                "http/json" => _ = json.get_or_insert(true),
                "grpc" => {
                    return Err(ConfigError::new(
                        variable,
                        &value,
                        "this build exports OTLP over HTTP: use http/protobuf (port 4318)",
                    ));
                }
                _ => return Err(ConfigError::new(variable, &value, "expected http/protobuf or http/json")),
            }
        }
    }
    if let Some(value) = env.raw("OTEL_TRACES_SAMPLER") {
        const KNOWN: [&str; 6] = [
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ];
        if !KNOWN.contains(&value.trim()) {
            return Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER",
                &value,
                format!("expected one of {}", KNOWN.join(", ")),
            ));
        }
    }
    for variable in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        if let Some(endpoint) = env.raw(variable) {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::new(
                    variable,
                    &endpoint,
                    "expected a URL such as http://jaeger:4318",
                ));
            }
            // http/protobuf unless told otherwise: the specification's default (the exporter
            // crate would pick JSON when both of its HTTP features are built in).
            return Ok(Export::Otlp { endpoint, json: json.unwrap_or(false) });
        }
    }
    Ok(Export::None)
}

/// What [`init`] set up; keep it until the end of `main`.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK's batch processor blocks while it flushes: keep it off the async threads.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                eprintln!("could not flush the last spans: {err}");
            }
        }
    }
}

/// Installs logging and tracing for `service` (its default `service.name`). Call once, first
/// thing in `main`.
pub fn init(service: &'static str) -> Result<Telemetry, ConfigError> {
    let env = Env::from_process();
    let export = export_from_env(&env)?;
    crate::propagation::accept_client_baggage(env.parse("ACCEPT_CLIENT_BAGGAGE", false)?);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds { inner: format::format().json().flatten_event(true), json: true })
            .fmt_fields(format::JsonFields::new())
            .with_filter(filter)
            .boxed()
    } else {
        // Plain text: the same in a terminal, a log file and `docker compose logs`.
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(WithTraceIds { inner: format::format(), json: false })
            .with_filter(filter)
            .boxed()
    };

    let provider = match &export {
        Export::Disabled => None,
        Export::None => Some(SdkTracerProvider::builder().with_resource(resource(service)).build()),
        Export::Otlp { endpoint, json } => {
            use opentelemetry_otlp::{Protocol, WithExportConfig};
            // The transport and format are chosen here; the exporter reads the endpoint,
            // headers and timeout from the OTEL_EXPORTER_OTLP_* variables itself.
            let protocol = if *json { Protocol::HttpJson } else { Protocol::HttpBinary };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
                .map_err(|err| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint, err))?;
            Some(
                SdkTracerProvider::builder()
                    .with_resource(resource(service))
                    .with_batch_exporter(exporter)
                    .build(),
            )
        }
    };

    let otel_layer = provider.as_ref().map(|provider| {
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ]));
        // Traces get the service's own spans at info and above, whatever RUST_LOG says.
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(LevelFilter::INFO)
    });

    tracing_subscriber::registry().with(fmt_layer).with(otel_layer).init();
    if let Export::Otlp { endpoint, json } = &export {
        let protocol = if *json { "http/json" } else { "http/protobuf" };
        tracing::info!(%endpoint, %protocol, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// `service.name` from `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` if set, else the
/// service's own name; other attributes from `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &'static str) -> Resource {
    let from_env = Resource::builder().build();
    let named = from_env
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named { from_env } else { Resource::builder().with_service_name(service).build() }
}

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

/// Formats a log line as usual, then adds the `trace_id` and `span_id` of the span it was
/// written in.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|_| {
            let cx = tracing::Span::current().context();
            let span = cx.span();
            let span_context = span.span_context();
            span_context
                .is_valid()
                .then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
        });
        let line = line.trim_end_matches('\n');
        // JSON escapes by itself; in text, one event must stay one line, so that a value a
        // client sent (a reason, a header) cannot start a forged log line.
        let line = if self.json { std::borrow::Cow::Borrowed(line) } else { one_line(line) };
        match ids {
            None => writeln!(writer, "{line}"),
            Some((trace_id, span_id)) if self.json => match line.strip_suffix('}') {
                Some(object) => {
                    writeln!(writer, r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#)
                }
                None => writeln!(writer, "{line}"),
            },
            Some((trace_id, span_id)) => writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}"),
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, leaving out a cause whose
/// message the one before it already includes (many errors print their source in their own
/// message, and `{:#}` would repeat it: `Connection refused (os error 111): Connection refused
/// (os error 111)`).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !parts.last().is_some_and(|previous| previous.contains(&message)) {
            parts.push(message);
        }
    }
    parts.join(": ")
}

/// `text` with line breaks and other control characters (tab aside) escaped as `\n`, `\r`,
/// `\u{1b}`, …
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push('\t'),
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        #[derive(Debug, thiserror::Error)]
        #[error("error communicating with database: {0}")]
        struct Talk(#[source] std::io::Error);
        let err = anyhow::Error::new(Talk(io)).context("could not connect to Postgres");
        assert_eq!(
            error_chain(&err),
            "could not connect to Postgres: error communicating with database: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_value_with_line_breaks_cannot_forge_a_log_line() {
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(WithTraceIds { inner: format::format(), json: false })
            .with_writer(move || WriteTo(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "out of stock\n2026-11-30T00:00:00Z  INFO forged: all good\r\u{1b}[2J";
            tracing::info!(%reason, "discarded");
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r"out of stock\n2026-11-30T00:00:00Z  INFO forged: all good\r\u{1b}[2J"),
            "{text}"
        );
    }

    struct WriteTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        assert_eq!(export_from_env(&Env::from_pairs([])).unwrap(), Export::None);
    }

    #[test]
    fn an_endpoint_turns_export_on_and_disabled_wins() {
        let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")]);
        assert_eq!(
            export_from_env(&env).unwrap(),
            Export::Otlp { endpoint: "http://jaeger:4318".into(), json: false }
        );
        let env = Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        assert_eq!(
            export_from_env(&env).unwrap(),
            Export::Otlp { endpoint: "http://j:4318".into(), json: true }
        );
        let env = Env::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert_eq!(export_from_env(&env).unwrap(), Export::Disabled);
    }

    #[test]
    fn bad_settings_name_their_variable() {
        for (variable, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_SDK_DISABLED", "maybe"),
        ] {
            let err = export_from_env(&Env::from_pairs([(variable, value)])).unwrap_err();
            assert_eq!(err.variable, variable);
        }
    }
}
