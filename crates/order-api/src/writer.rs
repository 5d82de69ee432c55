//! Group commit: concurrent `POST /orders` requests share one transaction.
//!
//! **Why:** a `202` means the order and its `orders.new` message are committed, and a commit
//! waits for the disk (`fsync`, `synchronous_commit = on`). One transaction per request pays
//! that wait, and four round trips (`BEGIN`, two `INSERT`s, `COMMIT`), for every order. Here the
//! requests that arrive while a transaction is being written wait for the next one, and each
//! transaction stores all of them: the commit's cost is shared, and nothing is weakened (each
//! request is still answered only after *its* commit).
//!
//! **One statement for both tables:** the orders and their outbox rows go in with a single
//! `INSERT … RETURNING` whose `WITH` clause also inserts the messages of the orders it inserted,
//! so a transaction is three round trips (`BEGIN`, the statement, `COMMIT`) whatever its size.
//! Every round trip costs a `send` and a wake-up on both sides, a large part of order-api's and
//! Postgres's CPU per order (docs/reference.md, "Performance"), and at moderate load a batch
//! holds one or two orders. (`BEGIN` and `COMMIT` stay separate so that the request timeout can
//! still withdraw an order before its `COMMIT`: see below.)
//!
//! **No added wait:** a writer takes whatever is queued when it is free, up to
//! `ORDER_BATCH_SIZE`. An idle service writes each order alone, at once; a busy one writes
//! larger batches, because requests pile up while the previous commit waits for the disk.
//! `ORDER_WRITERS` writers run at once (each with its own connection), so one batch is being
//! filled while another is committed.
//!
//! **One refused order does not fail its neighbours:** if a batch fails for a reason that is not
//! "the database is unavailable", each of its orders is written again alone, so only the one the
//! database refuses gets the error.
//!
//! **Timeouts:** just before `COMMIT`, the writer [claims](CommitStarted::claim) each request
//! of the batch; from then on the request timeout waits for the outcome rather than answering
//! "retry later" (see [`crate::routes`]). A request the timeout has already answered cannot be
//! claimed: its rows are deleted inside the transaction before it commits, so a 503 still means
//! "nothing was stored", as it did with one transaction per request.

use std::sync::Arc;

use contract::events::OrderPlaced;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use shared::{
    db,
    http::Problem,
    messaging::{
        envelope::OutgoingMessage,
        outbox::{self, OutboxWaker},
    },
    telemetry,
};
use sqlx::{PgConnection, PgPool, types::Json};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    orders::{NewOrder, OrderView},
    routes::CommitStarted,
    store::{ORDER_COLUMNS, Placed, SOURCE},
};

/// Orders handed to the writers and not yet taken into a transaction (a gauge,
/// `orders_queued_for_writer` in Prometheus).
const QUEUED: &str = "orders.queued_for_writer";
/// Orders per transaction (a histogram, `orders_write_batch_size`): how much group commit shares.
const BATCH_SIZE: &str = "orders.write.batch.size";

/// Describes the writers' metrics and starts the gauge at zero.
pub fn register_metrics() {
    metrics::describe_gauge!(QUEUED, "Orders handed to the writers and not yet in a transaction.");
    metrics::describe_histogram!(BATCH_SIZE, "Orders stored by one transaction of POST /orders.");
    metrics::gauge!(QUEUED).set(0.0);
}

/// How many writers there are and how many orders one transaction takes.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// `ORDER_WRITERS`: transactions being written at once.
    pub writers: usize,
    /// `ORDER_BATCH_SIZE`: the most orders one transaction takes.
    pub batch_size: usize,
}

/// The handle request handlers place orders through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderWriter {
    queue: mpsc::Sender<Pending>,
}

/// One order waiting for a writer, with everything made in the request's span.
#[derive(Debug)]
struct Pending {
    event: OrderPlaced,
    order: NewOrder,
    idempotency_key: Option<String>,
    /// Made in the request's span, so the message carries the request's trace context.
    message: OutgoingMessage,
    trace_id: Option<String>,
    /// The request's "place order" span, which the batch's span links to.
    waiting: SpanContext,
    commit: CommitStarted,
    answer: oneshot::Sender<Result<Placed, Problem>>,
}

/// The writers, to be run as one task of the service.
#[derive(Debug)]
pub struct OrderWriters(Vec<Writer>);

impl OrderWriters {
    /// Runs every writer until the queue is closed (every [`OrderWriter`] handle dropped: the
    /// HTTP server has finished its requests) and empty, so that no order handed over at
    /// shutdown is dropped unwritten.
    pub async fn run(self) {
        futures::future::join_all(self.0.into_iter().map(Writer::run)).await;
    }
}

impl OrderWriter {
    /// `settings.writers` writers on `pool`, and the handle to hand them orders.
    pub fn new(pool: PgPool, outbox: OutboxWaker, settings: WriterSettings) -> (Self, OrderWriters) {
        // Room for a few batches: a full queue makes handlers wait here, within their timeout.
        let (queue, receiver) = mpsc::channel(settings.batch_size * settings.writers * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        let writers = (0..settings.writers)
            .map(|_| Writer {
                pool: pool.clone(),
                outbox: outbox.clone(),
                receiver: receiver.clone(),
                batch_size: settings.batch_size,
            })
            .collect();
        (Self { queue }, OrderWriters(writers))
    }

    /// Stores a new order and its `orders.new` message, in a transaction shared with whatever
    /// other orders are waiting, and answers once that transaction is committed.
    ///
    /// With an idempotency key, a key used before (even in the same batch) is answered with the
    /// order it was used for ([`Placed::Replayed`]) or [`Placed::KeyReused`].
    pub async fn place(
        &self,
        order: NewOrder,
        idempotency_key: Option<String>,
        commit: CommitStarted,
    ) -> Result<Placed, Problem> {
        let event = OrderPlaced::of(order.customer_id.clone(), order.items.clone());
        let message = OutgoingMessage::event(&event, SOURCE);
        let trace_id = telemetry::current_trace_id();
        // In the order's trace, this span is its transaction as the request sees it: from
        // handing the order over to its commit. The writer's batch span links to it.
        let span = telemetry::db_span("place order");
        let waiting = span.context().span().span_context().clone();
        let (answer, answered) = oneshot::channel();
        let pending = Pending { event, order, idempotency_key, message, trace_id, waiting, commit, answer };
        async {
            self.queue.send(pending).await.map_err(|_| stopping())?;
            metrics::gauge!(QUEUED).increment(1.0);
            answered.await.map_err(|_| stopping())?
        }
        .instrument(span)
        .await
    }
}

/// The answer when the writers are gone (the service is stopping).
fn stopping() -> Problem {
    Problem::unavailable(
        "/problems/stopping",
        "The service is stopping; retry on another instance or shortly.",
        std::time::Duration::from_secs(1),
    )
}

#[derive(Debug)]
struct Writer {
    pool: PgPool,
    outbox: OutboxWaker,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    batch_size: usize,
}

impl Writer {
    async fn run(self) {
        while let Some(batch) = self.next_batch().await {
            self.write(batch).await;
        }
    }

    /// Waits for one order, then takes whatever else is queued, up to the batch size. `None`
    /// once the queue is closed and empty.
    async fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = vec![first];
        while batch.len() < self.batch_size {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        metrics::gauge!(QUEUED).decrement(batch.len() as f64);
        Some(batch)
    }

    /// Writes a batch and answers each of its requests.
    async fn write(&self, batch: Vec<Pending>) {
        // Requests already answered (by the timeout) are not written.
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.answer.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        // A span of the batch's own (a span has one parent; a batch serves many traces),
        // linked to each request's "place order" span.
        metrics::histogram!(BATCH_SIZE).record(batch.len() as f64);
        let span = telemetry::db_span("place orders");
        span.record("db.operation.batch.size", batch.len());
        for pending in &batch {
            span.add_link(pending.waiting.clone());
        }
        match insert_in_one_transaction(&self.pool, &batch).instrument(span).await {
            Ok(placed) => self.answer_all(batch, placed.into_iter().map(Ok).collect()),
            Err(err) if batch.len() == 1 || db::is_unavailable(&err) => {
                let problem = Problem::database(err);
                let answers = batch.iter().map(|_| Err(problem.clone())).collect();
                self.answer_all(batch, answers);
            }
            Err(err) => {
                tracing::warn!(error = %err, orders = batch.len(), "a batch of orders failed: writing each alone");
                let mut answers = Vec::with_capacity(batch.len());
                for pending in &batch {
                    let alone = insert_in_one_transaction(&self.pool, std::slice::from_ref(pending)).await;
                    answers.push(alone.map(|mut placed| placed.remove(0)).map_err(Problem::database));
                }
                self.answer_all(batch, answers);
            }
        }
    }

    fn answer_all(&self, batch: Vec<Pending>, answers: Vec<Result<Placed, Problem>>) {
        if answers.iter().any(|a| matches!(a, Ok(Placed::Created(_)))) {
            self.outbox.wake();
        }
        for (pending, answer) in batch.into_iter().zip(answers) {
            // A request that went away meanwhile has nobody to answer; its order stands.
            pending.answer.send(answer).ok();
        }
    }
}

/// Stores a batch of orders, and the `orders.new` message of each new one, in one transaction.
/// Returns what happened to each order, in the batch's order.
async fn insert_in_one_transaction(pool: &PgPool, batch: &[Pending]) -> Result<Vec<Placed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = insert_orders_and_messages(&mut tx, batch).await?;
    let mut placed = Vec::with_capacity(batch.len());
    let mut earlier = Vec::new();
    for pending in batch {
        match inserted.iter().find(|view| view.order_id == pending.event.order_id) {
            Some(view) => placed.push(Some(Placed::Created(view.clone()))),
            None => {
                earlier.push(pending.idempotency_key.clone());
                placed.push(None);
            }
        }
    }
    let existing = orders_by_key(&mut tx, &earlier).await?;
    withdraw_abandoned(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(batch
        .iter()
        .zip(placed)
        .map(|(pending, placed)| placed.unwrap_or_else(|| replay_or_reused(pending, &existing)))
        .collect())
}

/// Claims every request of the batch for the commit about to start, and deletes the orders
/// (and messages) of those the request timeout has already answered 503: they must not be
/// committed. Nothing to delete, no round trip.
async fn withdraw_abandoned(tx: &mut PgConnection, batch: &[Pending]) -> Result<(), sqlx::Error> {
    let abandoned: Vec<&Pending> = batch.iter().filter(|p| !p.commit.claim()).collect();
    if abandoned.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = abandoned.iter().map(|p| p.event.order_id).collect();
    let messages: Vec<Uuid> = abandoned.iter().map(|p| p.message.message_id).collect();
    sqlx::query("DELETE FROM outbox WHERE message_id = ANY($1)").bind(messages).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM orders WHERE id = ANY($1)").bind(orders).execute(&mut *tx).await?;
    Ok(())
}

/// Inserts every order of the batch, and the `orders.new` message of each one inserted, with one
/// statement. An order whose idempotency key is taken (by an earlier order, or an earlier one in
/// this same batch) is not inserted, nor is its message.
async fn insert_orders_and_messages(
    tx: &mut PgConnection,
    batch: &[Pending],
) -> Result<Vec<OrderView>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|p| p.event.order_id).collect();
    let customers: Vec<&str> = batch.iter().map(|p| p.order.customer_id.as_str()).collect();
    let items: Vec<Json<&Vec<contract::events::OrderItem>>> =
        batch.iter().map(|p| Json(&p.order.items)).collect();
    let keys: Vec<Option<&str>> = batch.iter().map(|p| p.idempotency_key.as_deref()).collect();
    let trace_ids: Vec<Option<&str>> = batch.iter().map(|p| p.trace_id.as_deref()).collect();
    let placed_at: Vec<_> = batch.iter().map(|p| p.event.placed_at).collect();
    let messages = outbox::Columns::of(batch.iter().map(|p| &p.message));
    // The outbox rows are joined to what the first INSERT returned: only an inserted order's
    // message is stored. ($1 pairs each message with its order: batch order, as the arrays.)
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH new_orders AS (
             INSERT INTO orders (id, customer_id, items, idempotency_key, trace_id, created_at, updated_at)
             SELECT id, customer_id, items, idempotency_key, trace_id, placed_at, placed_at
             FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::timestamptz[])
                  AS new (id, customer_id, items, idempotency_key, trace_id, placed_at)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING {ORDER_COLUMNS}
         ), new_messages AS (
             INSERT INTO outbox (subject, message_id, dedupe_id, headers, payload)
             SELECT m.subject, m.message_id, m.dedupe_id, m.headers, m.payload
             FROM UNNEST($1::uuid[], $7::text[], $8::uuid[], $9::text[], $10::jsonb[], $11::bytea[])
                  AS m (order_id, subject, message_id, dedupe_id, headers, payload)
             JOIN new_orders ON new_orders.id = m.order_id
         )
         SELECT {ORDER_COLUMNS} FROM new_orders"
    )))
    .bind(ids)
    .bind(customers)
    .bind(items)
    .bind(keys)
    .bind(trace_ids)
    .bind(placed_at)
    .bind(&messages.subjects)
    .bind(&messages.ids)
    .bind(&messages.dedupe_ids)
    .bind(&messages.headers)
    .bind(&messages.payloads)
    .fetch_all(&mut *tx)
    .await
}

/// An order that holds an idempotency key.
#[derive(Debug, sqlx::FromRow)]
struct KeyedOrder {
    idempotency_key: String,
    #[sqlx(flatten)]
    view: OrderView,
}

/// The orders that hold these idempotency keys.
async fn orders_by_key(
    tx: &mut PgConnection,
    keys: &[Option<String>],
) -> Result<Vec<KeyedOrder>, sqlx::Error> {
    let keys: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT idempotency_key, {ORDER_COLUMNS} FROM orders WHERE idempotency_key = ANY($1)"
    )))
    .bind(keys)
    .fetch_all(&mut *tx)
    .await
}

/// What an order that was not inserted gets: the order its key was used for, if it is the same
/// order, else "key reused".
fn replay_or_reused(pending: &Pending, existing: &[KeyedOrder]) -> Placed {
    let earlier =
        existing.iter().find(|row| Some(row.idempotency_key.as_str()) == pending.idempotency_key.as_deref());
    match earlier {
        Some(row) if row.view.matches(&pending.order) => Placed::Replayed(row.view.clone()),
        _ => Placed::KeyReused,
    }
}
