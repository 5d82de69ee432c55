//! order-api's SQL. Each function is one unit of work; placing orders, which shares its
//! transactions between requests, is in [`crate::writer`].

use sqlx::PgPool;
use uuid::Uuid;

use crate::orders::OrderView;

/// The name this service puts in `ce-source`.
pub const SOURCE: &str = "order-api";

/// What placing an order did with its `Idempotency-Key`: stored a new order, found the same
/// order stored before, or found the key taken by another order. It decides the answer: 202
/// for the first two (the same body), 422 for the third.
#[derive(Debug)]
pub enum Placed {
    /// A new order, stored with its `orders.new` message in the outbox.
    Created(OrderView),
    /// The idempotency key was used before, for this same order: nothing new was stored.
    Replayed(OrderView),
    /// The idempotency key was used before, for a different order.
    KeyReused,
}

pub async fn find_order(pool: &PgPool, id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The columns of an [`OrderView`].
pub(crate) const ORDER_COLUMNS: &str =
    "id, status, customer_id, items, reason, trace_id, created_at, updated_at";
