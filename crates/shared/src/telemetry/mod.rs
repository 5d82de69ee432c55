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
//!
//! # Layout
//! - [`propagation`]: trace context (and baggage) in NATS and HTTP headers.
//! - [`spans`]: the spans every service opens the same way (publish, process, database).
//! - `logs`: the log line format, with trace IDs, and error chains on one line.

mod logs;

use logs::WithTraceIds;
pub mod propagation;
pub mod spans;

pub use logs::error_chain;
pub use spans::{current_trace_id, db_span, process_span, publish_span, record_error};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::format::{self},
    layer::SubscriberExt,
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
    crate::telemetry::propagation::accept_client_baggage(env.parse("ACCEPT_CLIENT_BAGGAGE", false)?);
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
            .event_format(text_format())
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

/// Logs for in-process tests (through `test_support::init_logging_with`): the services' own
/// line format, `trace_id` and `span_id` included, into the test's captured output. Spans get
/// their IDs from a tracer that exports nothing; the global tracer provider and propagator are
/// left alone, so a test behaves the same with its logs shown or not.
pub fn init_for_tests(filter: &str) {
    let provider = SdkTracerProvider::builder().build();
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(text_format())
        .with_test_writer()
        .with_filter(EnvFilter::new(filter));
    // The tracer keeps its provider alive, so the provider need not be kept here.
    let otel_layer =
        tracing_opentelemetry::layer().with_tracer(provider.tracer("test")).with_filter(LevelFilter::INFO);
    // Another test of the same binary may have installed it already.
    let _ = tracing_subscriber::registry().with(fmt_layer).with(otel_layer).try_init();
}

/// The text log line: the usual format, then the trace it belongs to.
fn text_format() -> WithTraceIds<format::Format> {
    WithTraceIds { inner: format::format(), json: false }
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

#[cfg(test)]
mod tests {
    use super::*;

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
