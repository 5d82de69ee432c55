//! HTTP plumbing every service shares: one error format and a JSON extractor that uses it.
//!
//! Every error any service returns is an RFC 9457 problem-details document
//! (`application/problem+json`):
//!
//! ```json
//! {"type": "/problems/validation-error", "title": "Request is not valid", "status": 422,
//!  "detail": "1 field is not valid",
//!  "errors": [{"pointer": "#/items/0/quantity", "detail": "must be between 1 and 1000"}]}
//! ```
//!
//! `errors[].pointer` is a JSON Pointer into the request body; a bad header or path parameter is
//! named by `header` or `parameter` instead. Internal errors never reach the client: they are
//! logged (with their cause chain) by [`log_server_errors`], and the client sees a generic 500.
//!
//! # Layout
//! - [`auth`]: the operator routes' bearer tokens, and the [`Operator`] a request proves it is.
//! - `input`: path and query parameters and body limits, refused as problems.
//! - `server`: the accept loop, with a header-read timeout and a connection cap.

pub mod auth;
mod input;
mod server;

pub use auth::{Operator, OperatorAuth};
pub use input::{PathParam, QueryParams, body_limit, too_large};
pub use server::{CONNECTIONS_REFUSED, ServerLimits, serve};

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{FromRequest, OptionalFromRequest, Request, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

/// An RFC 9457 problem-details response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members specific to one kind of problem.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The internal error behind a 5xx, for the log, never for the client.
    #[serde(skip)]
    pub cause: Option<Arc<anyhow::Error>>,
}

/// The `type` of the problem a response carries, for middleware (metrics by refusal reason).
#[derive(Debug, Clone, Copy)]
pub struct ProblemType(pub &'static str);

/// One thing wrong with a request, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A JSON Pointer (as a URI fragment) into the request body, e.g. `#/items/0/sku`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// A request header, e.g. `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A path or query parameter, e.g. `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn pointer(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: Some(pointer.into()), header: None, parameter: None, detail: detail.into() }
    }
    pub fn header(name: &str, detail: impl Into<String>) -> Self {
        Self { pointer: None, header: Some(name.to_owned()), parameter: None, detail: detail.into() }
    }
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        Self { pointer: None, header: None, parameter: Some(name.to_owned()), detail: detail.into() }
    }
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(
        status: StatusCode,
        problem_type: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type,
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            extra: None,
            retry_after: None,
            cause: None,
        }
    }

    /// 422: the request is well-formed but breaks a rule; `errors` says which fields and why.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => "1 field is not valid".to_owned(),
            n => format!("{n} fields are not valid"),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation-error",
                "Request is not valid",
                detail,
            )
        }
    }

    /// 400: a path parameter or header that cannot be parsed.
    pub fn bad_request(error: FieldError) -> Self {
        let detail = error.detail.clone();
        Self {
            errors: vec![error],
            ..Self::new(StatusCode::BAD_REQUEST, "about:blank", "Bad Request", detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "about:blank", "Not Found", detail)
    }

    /// 503 with `Retry-After`: try again later (overload, or a dependency that is down).
    pub fn unavailable(problem_type: &'static str, detail: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, problem_type, "Service Unavailable", detail)
        }
    }

    /// 500. The cause is logged; the client learns nothing of it.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            cause: Some(Arc::new(cause.into())),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "Internal Server Error",
                "The server could not complete the request. It has been logged.",
            )
        }
    }

    /// A database error: 503 with `Retry-After` when retrying can succeed, 500 otherwise.
    /// Retrying can succeed when Postgres is unreachable or refuses work for now
    /// ([`crate::db::is_unavailable`]: down, read-only after a failover, out of disk or
    /// connections, a statement timeout), and when a lock was not granted in time (55P03) or
    /// the transaction lost to another one ([`crate::db::is_retryable_conflict`]).
    pub fn database(err: sqlx::Error) -> Self {
        let busy = crate::db::has_code(&err, &["55P03"]) || crate::db::is_retryable_conflict(&err);
        if crate::db::is_unavailable(&err) || busy {
            Self {
                cause: Some(Arc::new(err.into())),
                ..Self::unavailable(
                    "/problems/database-unavailable",
                    "The database is unavailable; retry shortly.",
                    Duration::from_secs(2),
                )
            }
        } else {
            Self::internal(err)
        }
    }

    pub fn with_extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.get_or_insert_with(Default::default).insert(key.to_owned(), value);
        self
    }
}

/// A handler's database error is [`Problem::database`]'s answer, so handlers can use `?`.
impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        Self::database(err)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response.extensions_mut().insert(ProblemType(self.problem_type));
        response
    }
}

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
    let parent = crate::propagation::extract_from_client(
        request.headers(),
        crate::propagation::client_baggage_accepted(),
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

/// A JSON request body, with every failure answered as a [`Problem`]:
/// wrong content type → 415, body too large → 413, malformed JSON → 400, a value of the wrong
/// type → 422 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "about:blank",
                "Unsupported Media Type",
                "Send the body as JSON with Content-Type: application/json.",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: a request without `Content-Type` has none.
impl<T, S> OptionalFromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().get(header::CONTENT_TYPE).is_none() {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

/// How long each readiness check may take. A probe must answer quickly, and a dependency that
/// cannot answer within this is not ready, whatever its connection state says.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz` for every service: 200 when Postgres and NATS both answer a round trip within
/// [`READINESS_TIMEOUT`], else 503 with the state of each.
///
/// **Why a round trip:** a frozen broker (`kill -STOP`, a stalled VM, a half-open TCP
/// connection) keeps the client "connected" while nothing gets through; only an answer proves
/// the path works. For NATS the probe is a JetStream API request (`$JS.API.INFO`), so a server
/// that is up without JetStream is not ready either. Both checks run at once, so a probe takes
/// at most one timeout.
pub async fn readiness(
    pool: &sqlx::PgPool,
    nats: &async_nats::Client,
) -> Result<axum::Json<serde_json::Value>, Problem> {
    let (postgres, nats) = tokio::join!(crate::db::ping(pool), nats_answers(nats));
    let checks = serde_json::json!({
        "postgres": if postgres { "ok" } else { "unreachable" },
        "nats": if nats { "ok" } else { "unreachable" },
    });
    if postgres && nats {
        Ok(axum::Json(serde_json::json!({"status": "ready", "checks": checks})))
    } else {
        Err(Problem::unavailable(
            "/problems/not-ready",
            "A dependency is unreachable.",
            Duration::from_secs(1),
        )
        .with_extra("checks", checks))
    }
}

/// Whether JetStream answers a request within [`READINESS_TIMEOUT`].
async fn nats_answers(client: &async_nats::Client) -> bool {
    let request = client.request("$JS.API.INFO", Bytes::new());
    matches!(tokio::time::timeout(READINESS_TIMEOUT, request).await, Ok(Ok(_)))
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_rejection(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "about:blank",
            "Content Too Large",
            "The request body is larger than this endpoint accepts.",
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            "The request body could not be read.",
        )
    }
}

/// Parses a JSON object, naming the field when a value has the wrong type. Only an object is
/// a request body here: serde would also read a struct from an array (`["c-1", [...]]`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Problem::validation(vec![FieldError::pointer("#", "expected an object, not an array")]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        if err.inner().is_data() {
            let field = FieldError::pointer(json_pointer(err.path()), data_error_message(err.inner()));
            Problem::validation(vec![field])
        } else {
            malformed_json(err.inner())
        }
    })?;
    deserializer.end().map_err(|err| malformed_json(&err))?; // Trailing characters.
    Ok(value)
}

fn malformed_json(err: &serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "/problems/malformed-json",
        "Malformed JSON",
        format!("The body is not valid JSON: {err}"),
    )
}

/// `items[0].quantity` → `#/items/0/quantity` (RFC 6901, in URI fragment form).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::from("#");
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// serde's message in JSON terms ("expected an integer", not "expected i64"), without its
/// " at line 1 column 42" suffix, which means nothing to a client that is told the field.
fn data_error_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = text.rfind(" at line ").map_or(text.as_str(), |at| &text[..at]);
    let mut message = text.to_owned();
    for (rust, json) in [
        ("expected i64", "expected an integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected struct ", "expected an object: "),
        ("expected a borrowed string", "expected a string"),
    ] {
        message = message.replace(rust, json);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Body {
        name: Option<String>,
        items: Option<Vec<Item>>,
    }
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    struct Item {
        quantity: Option<i64>,
    }

    #[test]
    fn a_wrong_type_is_named_by_a_json_pointer() {
        let problem =
            parse_json::<Body>(br#"{"items": [{"quantity": 1}, {"quantity": "two"}]}"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#/items/1/quantity"));
        assert_eq!(problem.errors[0].detail, r#"invalid type: string "two", expected an integer"#);
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let problem = parse_json::<Body>(br#"{"name": "#).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert_eq!(problem.problem_type, "/problems/malformed-json");
        let problem = parse_json::<Body>(br#"{"name": "a"} trailing"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_body_that_is_not_an_object_points_at_the_root() {
        let problem = parse_json::<Body>(br#""an order, please""#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#"));
    }

    #[test]
    fn an_array_is_not_an_object_even_where_serde_would_read_one() {
        let problem = parse_json::<Body>(br#" [[{"quantity": 1}]]"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors[0].pointer.as_deref(), Some("#"));
    }

    #[test]
    fn content_types_with_parameters_and_suffixes_are_json() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            "Application/JSON",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/jsonp", "multipart/form-data"] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn a_problem_serialises_as_rfc_9457() {
        let json =
            serde_json::to_value(Problem::validation(vec![FieldError::pointer("#/a", "required")])).unwrap();
        assert_eq!(json["status"], 422);
        assert_eq!(json["type"], "/problems/validation-error");
        assert_eq!(json["errors"][0]["pointer"], "#/a");
        assert!(json["errors"][0].get("header").is_none());
    }
}
