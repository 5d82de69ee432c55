//! Trace context in NATS headers: how one order stays one trace across services.
//!
//! A producer **injects** its current span's context into the message's headers as W3C
//! `traceparent`/`tracestate` (and `baggage`); a consumer **extracts** it and makes it the
//! parent of its own span. One [`HeaderInjector`]/[`HeaderExtractor`] pair over
//! [`async_nats::HeaderMap`] does both, for every service.
//!
//! The outbox stores the headers *when the row is written*, inside the request's span, so the
//! relay's publish, seconds later and in another task, continues the request's trace rather
//! than the relay loop's (see [`crate::messaging::outbox`]).

use std::sync::{
    LazyLock,
    atomic::{AtomicBool, Ordering},
};

use async_nats::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// W3C Trace Context and W3C Baggage, the OpenTelemetry defaults.
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

/// The propagator every service uses, also installed as OpenTelemetry's global one.
pub fn propagator() -> &'static TextMapCompositePropagator {
    &PROPAGATOR
}

/// Writes propagation fields into NATS headers.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` (or baggage) says nothing; W3C lets it be left out.
        if !value.is_empty() {
            self.0.insert(key, value.as_str());
        }
    }
}

/// Reads propagation fields from NATS headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key).map(|value| value.as_str())?;
        // The SDK's parser is lenient (it takes a short trace ID); a malformed traceparent must
        // be ignored, so only a well-formed one is passed on.
        (key != "traceparent" || is_well_formed_traceparent(value)).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// `version-traceid-parentid-flags`: 2, 32, 16 and 2 lowercase hex digits (W3C Trace Context).
fn is_well_formed_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.trim().split('-').collect();
    parts.len() >= 4
        && parts.iter().zip([2, 32, 16, 2]).all(|(part, len)| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Injects `cx` into `headers`.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    PROPAGATOR.inject_context(cx, &mut HeaderInjector(headers));
}

/// Injects the context of the current `tracing` span into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&tracing::Span::current().context(), headers);
}

/// The context carried by a message's headers. No headers, or no valid `traceparent`, gives an
/// empty context: a span parented to it starts a new trace, it is not an orphan.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(headers) => PROPAGATOR.extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// Whether a client's `baggage` is taken ([`accept_client_baggage`]); off unless configured.
static CLIENT_BAGGAGE: AtomicBool = AtomicBool::new(false);

/// Takes clients' `baggage` from now on, in this process (`ACCEPT_CLIENT_BAGGAGE=true`, read by
/// [`crate::telemetry::init`]). For a client that is part of the same system, such as a
/// front end that tags its requests; a public API should leave it off.
pub fn accept_client_baggage(accept: bool) {
    CLIENT_BAGGAGE.store(accept, Ordering::Relaxed);
}

/// Whether clients' `baggage` is taken in this process.
pub fn client_baggage_accepted() -> bool {
    CLIENT_BAGGAGE.load(Ordering::Relaxed)
}

/// The trace context a client sent with an HTTP request, taken as far as it can be trusted: its
/// `traceparent` is continued, its `tracestate` bounded to W3C's limits ([`bounded_tracestate`]),
/// and its `baggage` left out unless `with_baggage` (then bounded to W3C Baggage's limits, which
/// the OpenTelemetry SDK enforces as it parses: the first 64 members, and nothing of a header
/// over 8,192 bytes). Whatever is
/// taken here rides along in every message and dead-letter row of the order, so a client must
/// not be able to put kilobytes of its own there unasked.
pub fn extract_from_client(headers: &axum::http::HeaderMap, with_baggage: bool) -> Context {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let carrier = ClientTraceContext {
        traceparent: header("traceparent").filter(|value| is_well_formed_traceparent(value)),
        tracestate: header("tracestate").map(bounded_tracestate),
        baggage: header("baggage").filter(|_| with_baggage),
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    if with_baggage { BaggagePropagator::new().extract_with_context(&cx, &carrier) } else { cx }
}

struct ClientTraceContext<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<String>,
    baggage: Option<&'a str>,
}

impl Extractor for ClientTraceContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate.as_deref(),
            "baggage" => self.baggage,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate", "baggage"]
    }
}

/// W3C Trace Context's limits on `tracestate`: at most 32 list members, and a header longer than
/// 512 characters is cut by first dropping members longer than 128 characters, then members from
/// the end.
pub fn bounded_tracestate(value: &str) -> String {
    let mut members: Vec<&str> =
        value.split(',').map(str::trim).filter(|member| !member.is_empty()).take(32).collect();
    let length = |members: &[&str]| members.iter().map(|m| m.len() + 1).sum::<usize>().saturating_sub(1);
    if length(&members) > 512 {
        members.retain(|member| member.len() <= 128);
    }
    while length(&members) > 512 {
        members.pop();
    }
    members.join(",")
}

/// The trace ID in a `traceparent` header, if it carries a valid one.
pub fn trace_id(headers: Option<&HeaderMap>) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = extract(headers);
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{
        KeyValue,
        baggage::BaggageExt,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };

    #[test]
    fn a_clients_trace_is_continued_its_tracestate_bounded_and_its_baggage_left_out() {
        use opentelemetry::trace::TraceContextExt;
        let mut headers = axum::http::HeaderMap::new();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", traceparent.parse().unwrap());
        let huge = format!("big={},vendor=ok", "x".repeat(6000));
        headers.insert("tracestate", huge.parse().unwrap());
        headers.insert("baggage", "user=alice,plan=gold".parse().unwrap());

        let cx = extract_from_client(&headers, false);

        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span().span_context().trace_state().header(), "vendor=ok");
        assert_eq!(cx.baggage().len(), 0, "client baggage is not taken");
    }

    #[test]
    fn a_clients_baggage_is_taken_when_configured_within_the_w3c_limits() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        headers.insert("baggage", "user=alice,plan=gold".parse().unwrap());
        let cx = extract_from_client(&headers, true);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.baggage().get("plan").map(|v| v.as_str().to_owned()).as_deref(), Some("gold"));

        // More than W3C's 64 members and 8,192 bytes: the rest is left out.
        let many: Vec<String> = (0..100).map(|n| format!("k{n}=v")).collect();
        headers.insert("baggage", many.join(",").parse().unwrap());
        assert_eq!(extract_from_client(&headers, true).baggage().len(), 64);
        let long: Vec<String> = (0..10).map(|n| format!("k{n}={}", "v".repeat(2000))).collect();
        headers.insert("baggage", long.join(",").parse().unwrap());
        assert_eq!(
            extract_from_client(&headers, true).baggage().len(),
            0,
            "a header over 8,192 bytes is dropped"
        );
    }

    #[test]
    fn tracestate_keeps_to_the_w3c_limits() {
        let many: Vec<String> = (0..40).map(|n| format!("k{n}=v")).collect();
        assert_eq!(bounded_tracestate(&many.join(",")).split(',').count(), 32);
        let long: Vec<String> = (0..10).map(|n| format!("k{n}={}", "v".repeat(100))).collect();
        let bounded = bounded_tracestate(&long.join(","));
        assert!(bounded.len() <= 512 && bounded.starts_with("k0="), "{bounded}");
        assert_eq!(bounded_tracestate("a=1, b=2"), "a=1,b=2");
    }

    fn remote_context() -> Context {
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        Context::new().with_remote_span_context(span_context)
    }

    #[test]
    fn a_context_survives_a_round_trip_through_nats_headers() {
        let mut headers = HeaderMap::new();
        inject(&remote_context(), &mut headers);

        assert_eq!(
            headers.get("traceparent").unwrap().as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let extracted = extract(Some(&headers));
        let span = extracted.span();
        let span_context = span.span_context();
        assert!(span_context.is_remote());
        assert_eq!(span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(span_context.trace_state().get("vendor"), Some("value"));
        assert_eq!(trace_id(Some(&headers)).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn a_message_without_headers_gives_a_new_root_not_an_orphan() {
        let cx = extract(None);
        assert!(!cx.span().span_context().is_valid());
        let cx = extract(Some(&HeaderMap::new()));
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(trace_id(None), None);
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace ID
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero span ID
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",   // short trace ID
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", bad);
            let cx = extract(Some(&headers));
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn non_ascii_baggage_survives_the_round_trip() {
        let cx = remote_context().with_baggage([KeyValue::new("customer", "Zoë Ångström 東京")]);
        let mut headers = HeaderMap::new();
        inject(&cx, &mut headers);

        assert!(headers.get("baggage").unwrap().as_str().is_ascii(), "percent-encoded on the wire");
        let extracted = extract(Some(&headers));
        assert_eq!(
            extracted.baggage().get("customer").map(|v| v.to_string()),
            Some("Zoë Ångström 東京".to_owned())
        );
    }
}
