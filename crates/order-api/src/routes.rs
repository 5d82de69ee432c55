//! HTTP routes: `POST /orders`, `GET /orders/{id}`, `GET /readyz` (and, from
//! [`shared::http::service_routes`], `GET /healthz`).

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use shared::http::{FieldError, JsonBody, Problem, ProblemType};
use uuid::Uuid;

use crate::{
    AppState,
    orders::{PlaceOrderRequest, check_idempotency_key},
    store::{self, Placed},
};

/// Requests larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request that takes longer is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/orders", post(place_order).layer(middleware::from_fn(count_orders)))
        .route("/orders/{id}", get(get_order))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_timeout));
    shared::http::service_routes(api).with_state(state)
}

/// `POST /orders`: validate, refuse if overloaded, then store the order and its message in
/// one transaction. `202 Accepted`: the order is safe, its processing is still to come.
async fn place_order(
    State(app): State<AppState>,
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
    let backlog = app.outbox_backlog.pending();
    if backlog >= app.max_outbox_backlog {
        return Err(Problem::unavailable(
            "/problems/overloaded",
            format!("{backlog} orders are waiting to be published; retry later."),
            Duration::from_secs(5),
        ));
    }
    let lag = app.consumer_lag.get();
    if lag >= app.max_consumer_lag {
        return Err(Problem::unavailable(
            "/problems/overloaded",
            format!("{lag} orders are waiting for the workers; retry later."),
            Duration::from_secs(5),
        ));
    }

    let (view, replayed) = match store::place_order(&app.pool, &order, key.as_deref())
        .await
        .map_err(Problem::database)?
    {
        Placed::Created(view) => {
            app.outbox.wake();
            (view, false)
        }
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
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /orders/{id}`: the order and its current status.
async fn get_order(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Problem::bad_request(FieldError::parameter("id", "must be a UUID")))?;
    match store::find_order(&app.pool, id).await.map_err(Problem::database)? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(Problem::not_found(format!("There is no order {id}."))),
    }
}

/// `GET /readyz`: Postgres and NATS are both reachable.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    shared::http::readiness(&app.pool, &app.nats).await
}

/// `orders.accepted` and `orders.refused` (by the problem's type), for every `POST /orders`,
/// including those refused before the handler ran (malformed JSON, wrong content type, …).
async fn count_orders(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::ACCEPTED {
        metrics::counter!("orders.accepted").increment(1);
    } else {
        let reason = match response.extensions().get::<ProblemType>() {
            Some(ProblemType(kind)) if kind.starts_with("/problems/") => {
                kind.trim_start_matches("/problems/").to_owned()
            }
            _ => response.status().as_u16().to_string(),
        };
        metrics::counter!("orders.refused", "reason" => reason).increment(1);
    }
    response
}

async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(
            "/problems/timeout",
            "The request took too long; retry later.",
            Duration::from_secs(1),
        )
        .into_response(),
    }
}
