//! The review API: list, show, replay and discard dead letters.
//!
//! | route | answer |
//! |---|---|
//! | `GET /dead-letters?status=pending&limit=50&cursor=…` | `{"items": [...], "next_cursor": "…" \| null}`, newest first |
//! | `GET /dead-letters/{id}` | one dead letter, with its payload and headers |
//! | `POST /dead-letters/{id}/replay` | republishes it (optional `{"reason": "…"}`); 409 unless pending |
//! | `POST /dead-letters/{id}/discard` | `{"reason": "…"}` required; 409 unless pending |
//!
//! Every `/dead-letters` route requires an operator token (`Authorization: Bearer …`, see
//! [`shared::http::auth`]): dead letters hold customers' orders. The reviewer recorded on a
//! replay or discard is the token's name. A body that names one (`"by"`) is refused with 422
//! rather than ignored, so a client written for the old API learns that its name is not used.
//!
//! The review console's pages (`/console/…`, [`crate::console`]) are served by the same router;
//! both take their review actions through [`crate::review`].

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use shared::http::{FieldError, JsonBody, Operator, PathParam, Problem, QueryParams};
use uuid::Uuid;

use crate::{
    AppState,
    review::{self, checked_reason},
    store::{self, DeadLetter, Review, ReviewError, Status},
};

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;
pub use crate::review::MAX_REASON_LEN;

/// Review bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router(state: AppState) -> Router {
    let review = Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/{id}", get(show))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/dead-letters/{id}/discard", post(discard));
    // Every route above is for operators; /readyz (and /healthz, /metrics) stay open to probes.
    // The console does its own authentication: a session cookie or the same bearer tokens.
    let api =
        state.operator_auth.protect(review).route("/readyz", get(readyz)).merge(crate::console::router());
    // A review is a reason and a name: a few hundred bytes.
    shared::http::service_routes(shared::http::body_limit(api, MAX_BODY_BYTES)).with_state(state)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(app): State<AppState>,
    _operator: Operator,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    let status = query
        .status
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|e| Problem::bad_request(FieldError::parameter("status", e)))?;
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(text) => text.parse::<i64>().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
            Problem::bad_request(FieldError::parameter(
                "limit",
                format!("must be a number from 1 to {MAX_PAGE}"),
            ))
        })?,
    };
    let cursor = query.cursor.map(|c| Uuid::parse_str(&c)).transpose().map_err(|_| {
        Problem::bad_request(FieldError::parameter("cursor", "must be a next_cursor from a previous page"))
    })?;
    let items = store::list(&app.pool, status, cursor, limit).await?;
    // A full page may have a next one; its cursor is the last ID shown.
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|l| l.id.to_string())).flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn show(
    State(app): State<AppState>,
    _operator: Operator,
    PathParam(id): PathParam<String>,
) -> Result<Json<DeadLetter>, Problem> {
    let id = parse_id(&id)?;
    store::get(&app.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("There is no dead letter {id}.")))
}

#[derive(Debug, Default, Deserialize)]
struct ReviewBody {
    /// Whether the body has a `by` member, whatever its value: it is refused.
    #[serde(default, deserialize_with = "present")]
    by: bool,
    reason: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// `POST /dead-letters/{id}/replay`; the body is optional.
async fn replay(
    State(app): State<AppState>,
    operator: Operator,
    PathParam(id): PathParam<String>,
    body: Option<JsonBody<ReviewBody>>,
) -> Result<Json<DeadLetter>, Problem> {
    let id = parse_id(&id)?;
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let review = review_of(body, operator, false)?;
    let letter = review::replay(&app, id, &review).await.map_err(review_problem)?;
    Ok(Json(letter))
}

/// `POST /dead-letters/{id}/discard` with `{"reason": "…"}`.
async fn discard(
    State(app): State<AppState>,
    operator: Operator,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<Json<DeadLetter>, Problem> {
    let id = parse_id(&id)?;
    let review = review_of(body, operator, true)?;
    let letter = review::discard(&app, id, &review).await.map_err(review_problem)?;
    Ok(Json(letter))
}

/// The review of `operator`: the reviewer recorded is always the token's name.
fn review_of(body: ReviewBody, operator: Operator, reason_required: bool) -> Result<Review, Problem> {
    let mut errors = Vec::new();
    if body.by {
        errors.push(FieldError::pointer(
            "#/by",
            "is not accepted: the reviewer recorded is the operator whose token authenticated the request",
        ));
    }
    let reason = checked_reason(body.reason.as_deref(), reason_required)
        .map_err(|rule| errors.push(FieldError::pointer("#/reason", rule)))
        .ok()
        .flatten();
    if errors.is_empty() {
        Ok(Review { by: operator.name, reason })
    } else {
        Err(Problem::validation(errors))
    }
}

fn parse_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| Problem::bad_request(FieldError::parameter("id", "must be a UUID")))
}

fn review_problem(err: ReviewError) -> Problem {
    match err {
        ReviewError::NotFound(id) => Problem::not_found(format!("There is no dead letter {id}.")),
        ReviewError::NotPending { .. } | ReviewError::NothingToReplay(_) => {
            Problem::new(StatusCode::CONFLICT, "/problems/not-pending", "Conflict", err.to_string())
        }
        ReviewError::Database(err) => Problem::database(err),
    }
}

async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    shared::http::readiness(&app.pool, &app.nats).await
}
