//! HTTP routes: `POST /orders`, `GET /orders/{id}`, `GET /readyz` (and, from
//! [`shared::http::service_routes`], `GET /healthz`).
//!
//! **Timeouts and `COMMIT`:** every request runs under `REQUEST_TIMEOUT`; one that takes longer
//! is answered 503 with `Retry-After` and nothing it did is kept. That is true only until the
//! `COMMIT` of the transaction holding its order is sent ([`crate::writer`]): after that the
//! order may already exist, and a 503 would make a client without an `Idempotency-Key` place it
//! twice. So the writer *claims* each request just before `COMMIT` ([`CommitStarted`]), and from
//! then on the timeout waits for the outcome (the order, or the database's error) instead of
//! answering "retry later". The two race for one flag: whichever sets it first decides. A request
//! the timeout answered first has its rows deleted before the `COMMIT`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Extension, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use shared::http::{FieldError, JsonBody, PathParam, Problem, ProblemType};
use uuid::Uuid;

use crate::{
    AppState,
    orders::{PlaceOrderRequest, check_idempotency_key},
    store::{self, Placed},
};

/// Requests larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request that takes longer is answered 503 (`REQUEST_TIMEOUT`'s default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// On a `202` that returns an order placed before with the same `Idempotency-Key`.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// `POST /orders` outcomes, as counters (`orders_accepted_total`, … in Prometheus).
const ORDERS_ACCEPTED: &str = "orders.accepted";
const ORDERS_REPLAYED: &str = "orders.replayed";
const ORDERS_REFUSED: &str = "orders.refused";

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/readyz", get(readyz));
    let timeout = state.request_timeout;
    shared::http::service_routes(guarded(api, timeout)).with_state(state)
}

/// The limits every API route runs under, and the counting of `POST /orders` outcomes. The
/// count is the outermost layer, so that it sees every answer: those of the handler, and
/// those given before it ran (413, 415) or instead of it (a timeout).
fn guarded<S: Clone + Send + Sync + 'static>(api: Router<S>, timeout: Duration) -> Router<S> {
    shared::http::body_limit(api, MAX_BODY_BYTES)
        .layer(middleware::from_fn(move |request, next| request_timeout(timeout, request, next)))
        .layer(middleware::from_fn(count_orders))
}

/// `POST /orders`: validate, refuse if overloaded, then store the order and its message in
/// one transaction (shared with other requests: [`crate::writer`]). `202 Accepted`: the order
/// is committed, its processing is still to come.
async fn place_order(
    State(app): State<AppState>,
    commit: Option<Extension<CommitStarted>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PlaceOrderRequest>,
) -> Result<Response, Problem> {
    let key = headers
        .get("idempotency-key")
        .map(|value| check_idempotency_key(value.as_bytes()))
        .transpose()
        .map_err(Problem::bad_request)?;
    let order = request.validate().map_err(Problem::validation)?;

    // Backpressure: a bounded queue refuses work it cannot keep up with, instead of growing.
    // Two queues are watched: the outbox (NATS unreachable or slow) and the workers' consumer
    // (workers down or slower than the orders coming in).
    // Each has its own problem type, so that a client (and the refusals metric) can tell which
    // queue is full; the remedy is the same: wait for `Retry-After`, then send the same request.
    let backlog = app.outbox_backlog.pending();
    if backlog >= app.max_outbox_backlog {
        return Err(Problem::unavailable(
            "/problems/outbox-backlog",
            format!("{backlog} orders are waiting to be published (OUTBOX_MAX_BACKLOG); retry later."),
            Duration::from_secs(5),
        ));
    }
    // An unknown lag (NATS not answering) refuses nothing: the outbox bound above still holds.
    if let Some(lag) = app.consumer_lag.get().filter(|lag| *lag >= app.max_consumer_lag) {
        return Err(Problem::unavailable(
            "/problems/consumer-lag",
            format!("{lag} orders are waiting for the workers (MAX_CONSUMER_LAG); retry later."),
            Duration::from_secs(5),
        ));
    }

    let commit = commit.map(|Extension(commit)| commit).unwrap_or_default();
    let (view, replayed) = match app.writer.place(order, key, commit).await? {
        Placed::Created(view) => (view, false),
        Placed::Replayed(view) => (view, true),
        Placed::KeyReused => {
            return Err(Problem {
                errors: vec![FieldError::header("Idempotency-Key", "already used for a different order")],
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "/problems/idempotency-key-reused",
                    "Idempotency key reused",
                    "This Idempotency-Key was already used for a different order. Use a new key for a new order.",
                )
            });
        }
    };

    let mut response = (StatusCode::ACCEPTED, Json(&view)).into_response();
    let location = format!("/orders/{}", view.order_id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /orders/{id}`: the order and its current status.
async fn get_order(
    State(app): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Problem::bad_request(FieldError::parameter("id", "must be a UUID")))?;
    match store::find_order(&app.pool, id).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(Problem::not_found(format!("There is no order {id}."))),
    }
}

/// `GET /readyz`: Postgres and NATS are both reachable.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    shared::http::readiness(&app.pool, &app.nats).await
}

/// Describes the order counters and starts them at zero, so that a dashboard shows `0` (not
/// "no data") before the first order, and `rate()` sees the first one.
pub fn register_metrics() {
    metrics::describe_counter!(ORDERS_ACCEPTED, "POST /orders answered 202 with a new order.");
    metrics::describe_counter!(
        ORDERS_REPLAYED,
        "POST /orders answered 202 with an order placed before under the same Idempotency-Key."
    );
    metrics::describe_counter!(
        ORDERS_REFUSED,
        "POST /orders refused, by reason (the problem type, or the status)."
    );
    metrics::counter!(ORDERS_ACCEPTED).absolute(0);
    metrics::counter!(ORDERS_REPLAYED).absolute(0);
}

/// Counts every `POST /orders` answer: `orders.accepted` (a new order), `orders.replayed` (an
/// `Idempotency-Key` seen before: the same order again, nothing new) or `orders.refused` by
/// reason, the problem's type (`validation-error`, `outbox-backlog`, `timeout`, …) or else
/// the status code.
async fn count_orders(request: Request, next: Next) -> Response {
    let counted = request.method() == Method::POST && request.uri().path() == "/orders";
    let response = next.run(request).await;
    if !counted {
        return response;
    }
    if response.status() == StatusCode::ACCEPTED {
        if response.headers().contains_key(REPLAYED_HEADER) {
            metrics::counter!(ORDERS_REPLAYED).increment(1);
        } else {
            metrics::counter!(ORDERS_ACCEPTED).increment(1);
        }
    } else {
        let reason = match response.extensions().get::<ProblemType>() {
            Some(ProblemType(kind)) if kind.starts_with("/problems/") => {
                kind.trim_start_matches("/problems/").to_owned()
            }
            _ => response.status().as_u16().to_string(),
        };
        metrics::counter!(ORDERS_REFUSED, "reason" => reason).increment(1);
    }
    response
}

/// Who decides a slow request's fate: the writer about to commit its order ([`Self::claim`]),
/// or the request timeout that gives up on it ([`Self::abandon`]). One flag, set once:
/// whichever comes first wins. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct CommitStarted(Arc<AtomicU8>);

impl CommitStarted {
    const OPEN: u8 = 0;
    const CLAIMED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The writer is about to commit the order. `false` if the timeout has already answered the
    /// request: its order must not be committed.
    pub fn claim(&self) -> bool {
        self.settle(Self::CLAIMED) == Self::CLAIMED
    }

    /// The timeout gives up on the request. `false` if its `COMMIT` has started: its outcome
    /// must be awaited.
    fn abandon(&self) -> bool {
        self.settle(Self::ABANDONED) == Self::ABANDONED
    }

    /// Sets the flag if it is still open; returns what it holds now.
    fn settle(&self, to: u8) -> u8 {
        match self.0.compare_exchange(Self::OPEN, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => to,
            Err(already) => already,
        }
    }
}

/// How long a request whose `COMMIT` has started may still take, past the request timeout. Only
/// a backstop, so that no request waits for ever: the database bounds each statement itself
/// (`DATABASE_STATEMENT_TIMEOUT`, 10 s by default), and a failed `COMMIT` is answered as such.
const COMMIT_GRACE: Duration = Duration::from_secs(30);

/// Answers 503 to a request that is not done within `timeout`, unless its `COMMIT` has started:
/// then its outcome is awaited, for at most [`COMMIT_GRACE`] more. (Should even that pass, the
/// answer is 503 and the order may exist: a client that sent an `Idempotency-Key` finds out by
/// retrying.)
async fn request_timeout(timeout: Duration, mut request: Request, next: Next) -> Response {
    let commit = CommitStarted::default();
    request.extensions_mut().insert(commit.clone());
    let response = next.run(request);
    tokio::pin!(response);
    match tokio::time::timeout(timeout, &mut response).await {
        Ok(response) => response,
        Err(_) if !commit.abandon() => match tokio::time::timeout(COMMIT_GRACE, response).await {
            Ok(response) => response,
            Err(_) => Problem::unavailable(
                "/problems/timeout",
                "The order's commit did not finish in time: it may or may not have been placed. \
                 Retry with the same Idempotency-Key to find out.",
                Duration::from_secs(1),
            )
            .into_response(),
        },
        Err(_) => Problem::unavailable(
            "/problems/timeout",
            "The request took too long; retry later.",
            Duration::from_secs(1),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    fn post_orders() -> Request<Body> {
        Request::post("/orders").body(Body::empty()).expect("a valid request")
    }

    /// The count sees answers the handler never gave: here, the timeout's 503.
    #[tokio::test]
    async fn a_request_that_times_out_is_counted_as_refused_for_timeout() {
        let handle = shared::metrics::install();
        let slow = Router::new().route(
            "/orders",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::ACCEPTED
            }),
        );
        let response =
            guarded(slow, Duration::from_millis(50)).oneshot(post_orders()).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let text = handle.render();
        assert!(text.contains(r#"orders_refused_total{reason="timeout"} 1"#), "{text}");
    }

    #[tokio::test]
    async fn an_idempotent_replay_is_counted_as_replayed_not_as_a_new_order() {
        let handle = shared::metrics::install();
        let replaying = Router::new()
            .route("/orders", post(|| async { (StatusCode::ACCEPTED, [(REPLAYED_HEADER, "true")]) }));
        let response = guarded(replaying, REQUEST_TIMEOUT).oneshot(post_orders()).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let text = handle.render();
        assert!(text.contains("orders_replayed_total 1"), "{text}");
        assert!(!text.contains("orders_accepted_total 1"), "{text}");
    }
}
