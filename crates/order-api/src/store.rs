//! order-api's SQL. Each function is one unit of work.

use shared::{
    messages::{OrderPlaced, OutgoingMessage},
    outbox, telemetry,
};
use sqlx::{PgPool, types::Json};
use tracing::Instrument;
use uuid::Uuid;

use crate::orders::{NewOrder, OrderView};

/// The name this service puts in `ce-source`.
pub const SOURCE: &str = "order-api";

/// What placing an order did.
#[derive(Debug)]
pub enum Placed {
    /// A new order, stored with its `orders.new` message in the outbox.
    Created(OrderView),
    /// The idempotency key was used before, for this same order: nothing new was stored.
    Replayed(OrderView),
    /// The idempotency key was used before, for a different order.
    KeyReused,
}

/// Stores a new order and its `orders.new` message **in one transaction**: both or neither.
///
/// With an idempotency key, two requests racing with the same key cannot both insert: the
/// unique index makes the second `INSERT` wait for the first transaction and then do nothing,
/// after which it reads the winner's order.
///
/// `commit_starts` is called just before `COMMIT` is sent: from then on the order may exist
/// whatever happens to the connection, and the caller must not answer as if it did not.
pub async fn place_order(
    pool: &PgPool,
    order: &NewOrder,
    idempotency_key: Option<&str>,
    commit_starts: impl FnOnce(),
) -> Result<Placed, sqlx::Error> {
    let event = OrderPlaced::new(order.customer_id.clone(), order.items.clone());
    let (id, now) = (event.order_id, event.placed_at);
    // Made here, in the request's span, so the message carries the request's trace context.
    let message = OutgoingMessage::event(&event, SOURCE);
    let trace_id = telemetry::current_trace_id();

    async {
        let mut tx = pool.begin().await?;
        let inserted: Option<OrderView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO orders (id, customer_id, items, idempotency_key, trace_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING {ORDER_COLUMNS}"
        )))
        .bind(id)
        .bind(&order.customer_id)
        .bind(Json(&order.items))
        .bind(idempotency_key)
        .bind(&trace_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;

        let Some(view) = inserted else {
            let existing: OrderView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key = $1"
            )))
            .bind(idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            return Ok(if existing.matches(order) { Placed::Replayed(existing) } else { Placed::KeyReused });
        };
        outbox::enqueue(&mut tx, std::slice::from_ref(&message)).await?;
        commit_starts();
        tx.commit().await?;
        Ok(Placed::Created(view))
    }
    .instrument(telemetry::db_span("place order"))
    .await
}

pub async fn find_order(pool: &PgPool, id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The columns of an [`OrderView`].
const ORDER_COLUMNS: &str = "id, status, customer_id, items, reason, trace_id, created_at, updated_at";
