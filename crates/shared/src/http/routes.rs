//! What every service's router has, whatever its own routes are.

use std::{sync::Arc, time::Duration};

use axum::{extract::Request, http::StatusCode, middleware::Next, response::Response};

use super::Problem;

/// Middleware: logs the internal cause of every 5xx answer, with its chain of sources.
pub async fn log_server_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(cause) = response.extensions().get::<Arc<anyhow::Error>>() {
        tracing::error!(%method, %path, status = response.status().as_u16(), error = format!("{cause:#}"), "request failed");
    }
    response
}

/// What every service's router has: `GET /healthz`, problem documents for unknown routes and
/// methods, 5xx causes logged, and a server span per request that continues the caller's trace.
pub fn service_routes<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router
        .route("/healthz", axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(axum::middleware::from_fn(log_server_errors))
        .layer(axum::middleware::from_fn(remember_route))
        // Server errors are logged by `log_server_errors`, with their cause; tower-http's own
        // failure log would also report every deliberate 503 (load shedding) as an error.
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(server_span).on_failure(()).on_response(
            |response: &Response, latency: Duration, span: &tracing::Span| {
                span.record("http.response.status_code", response.status().as_u16());
                if response.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                let route = response.extensions().get::<Route>().map_or("unmatched", |r| r.0.as_str());
                metrics::histogram!(
                    crate::metrics::HTTP_REQUEST_DURATION,
                    "http_request_method" => response.extensions().get::<Method>().map_or("", |m| m.0.as_str()).to_owned(),
                    "http_route" => route.to_owned(),
                    "http_response_status_code" => response.status().as_u16().to_string(),
                )
                .record(latency.as_secs_f64());
            },
        ))
}

/// The matched route and method of a request, carried to the response for metrics (whose
/// labels must be the route pattern, never the raw path with its IDs).
#[derive(Debug, Clone)]
struct Route(String);
#[derive(Debug, Clone)]
struct Method(axum::http::Method);

async fn remember_route(request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<axum::extract::MatchedPath>().map(|path| Route(path.as_str().to_owned()));
    let method = Method(request.method().clone());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response.extensions_mut().insert(method);
    response
}

/// Routes that probes and scrapers call every few seconds. They get no span: each would be a
/// trace of its own, burying the orders' traces in Jaeger. (Their latency is still measured.)
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// An OpenTelemetry SERVER span for a request (HTTP semantic conventions), whose parent is the
/// caller's `traceparent` if it sent one: a caller's trace continues into the service.
fn server_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path().to_owned(), |path| path.as_str().to_owned());
    if UNTRACED_ROUTES.contains(&route.as_str()) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = %route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = crate::telemetry::propagation::extract_from_client(
        request.headers(),
        crate::telemetry::propagation::client_baggage_accepted(),
    );
    // Before the span is first entered, or the parent would not take.
    span.set_parent(parent).ok();
    span
}

/// The answer to a route that does not exist.
pub async fn not_found_fallback() -> Problem {
    Problem::not_found("No such resource.")
}

/// The answer to a method a route does not support.
pub async fn method_not_allowed_fallback() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "about:blank",
        "Method Not Allowed",
        "This resource does not support that method.",
    )
}
