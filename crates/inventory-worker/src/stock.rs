//! The stock API: `GET /inventory/{sku}`, `PUT /inventory/{sku}`, plus `GET /healthz` and
//! `GET /readyz`. For demos and tests; reservations happen only through messages.
//!
//! Setting stock is an operator's action: `PUT` requires an operator token
//! ([`shared::http::auth`]), and the log line it writes names the operator. Reading stock is
//! open, as the order API is: it tells nothing that placing orders would not.

use axum::{
    Json, Router,
    extract::State,
    routing::{get, put},
};
use chrono::{DateTime, Utc};
use contract::identifier::Sku;
use serde::{Deserialize, Serialize};
use shared::http::{FieldError, JsonBody, Operator, PathParam, Problem};

use crate::AppState;

/// `{"available": 1000000000}` needs a few dozen bytes; anything over this is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024;

/// Stock can be set up to this many units.
pub const MAX_AVAILABLE: i64 = 1_000_000_000;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub struct SetStock {
    pub available: Option<i64>,
}

pub fn router(state: AppState) -> Router {
    let set_stock = state.operator_auth.protect_route(put(set_stock));
    let api = Router::new()
        .route("/inventory/{sku}", get(get_stock).merge(set_stock))
        .route("/readyz", get(readyz));
    shared::http::service_routes(shared::http::body_limit(api, MAX_BODY_BYTES)).with_state(state)
}

/// The path's SKU, or a 400 naming the parameter and the rule it breaks.
fn checked_sku(sku: String) -> Result<Sku, Problem> {
    Sku::parse(sku).map_err(|p| Problem::bad_request(FieldError::parameter("sku", p)))
}

async fn get_stock(
    State(app): State<AppState>,
    PathParam(sku): PathParam<String>,
) -> Result<Json<StockView>, Problem> {
    let sku = checked_sku(sku)?;
    sqlx::query_as("SELECT sku, available, reserved, updated_at FROM inventory WHERE sku = $1")
        .bind(sku.as_str())
        .fetch_optional(&app.pool)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("There is no SKU {sku}.")))
}

/// Sets the available units of a SKU, creating it if it is new. Reserved units are untouched.
async fn set_stock(
    State(app): State<AppState>,
    operator: Operator,
    PathParam(sku): PathParam<String>,
    JsonBody(body): JsonBody<SetStock>,
) -> Result<Json<StockView>, Problem> {
    let sku = checked_sku(sku)?;
    let available = match body.available {
        Some(n) if (0..=MAX_AVAILABLE).contains(&n) => n,
        Some(_) => {
            return Err(Problem::validation(vec![FieldError::pointer(
                "#/available",
                format!("must be between 0 and {MAX_AVAILABLE}"),
            )]));
        }
        None => {
            return Err(Problem::validation(vec![FieldError::pointer("#/available", "is required")]));
        }
    };
    let stock: StockView = sqlx::query_as(
        "INSERT INTO inventory (sku, available) VALUES ($1, $2)
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, updated_at = now()
         RETURNING sku, available, reserved, updated_at",
    )
    .bind(sku.as_str())
    .bind(available)
    .fetch_one(&app.pool)
    .await?;
    tracing::info!(%sku, available, by = %operator.name, "stock set");
    Ok(Json(stock))
}

async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    shared::http::readiness(&app.pool, &app.nats).await
}
