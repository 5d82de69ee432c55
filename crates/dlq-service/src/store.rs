//! The `dead_letters` table: recording, listing, replaying and discarding. Shared by the HTTP
//! API and the command line.
//!
//! # What Postgres cannot store
//! Postgres `text` and `jsonb` refuse the NUL character (`\u0000`), which is valid in JSON and
//! in NATS headers. A dead letter must be recorded whatever it holds, so:
//! - the payload is always kept exactly, as `bytea`; `payload_json` (a convenience for review)
//!   is filled only when the JSON holds no NUL ([`jsonb_safe`]);
//! - text taken from messages (subject, headers, reasons, errors) has each NUL replaced by
//!   U+FFFD ([`pg_text`]): these are descriptions, and the exact bytes are in the payload.
//!
//! A review's `reason` with a NUL is refused by the API and the command line before it gets here;
//! the reviewer's name is a token's name (or `cli:` and a checked one), which cannot hold one.
//!
//! # Last-error notes
//! A note waits in `last_errors` only until its dead letter is recorded, which copies it and
//! deletes it in the same transaction. A note whose advisory never comes (its message
//! succeeded after all) is deleted by [`prune_last_errors`] once older than
//! `DLQ_LAST_ERROR_RETENTION`, run with every sweep.

use std::{borrow::Cow, collections::BTreeMap};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, Utc};
use contract::{
    events::{OrderDeadLettered, PAYLOAD_VERSION},
    streams::ORDERS_STREAM,
};
use opentelemetry::trace::TraceContextExt;
use serde::Serialize;
use shared::messaging::{envelope::OutgoingMessage, outbox};
use sqlx::{PgConnection, PgPool, types::Json};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The name this service puts in `ce-source`.
pub const SOURCE: &str = "dlq-service";

/// Review states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Status {
    Pending,
    Replayed,
    Discarded,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        })
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "replayed" => Ok(Self::Replayed),
            "discarded" => Ok(Self::Discarded),
            other => Err(format!("unknown status {other:?}: use pending, replayed or discarded")),
        }
    }
}

/// A message to record, as capture found it.
#[derive(Debug, Clone, Default)]
pub struct NewDeadLetter {
    /// For metrics: `exhausted` (its deliveries ran out), `gone` (and the original had
    /// vanished), `poison` (unreadable) or `unrecognised`.
    pub kind: &'static str,
    pub source_stream: String,
    pub source_sequence: i64,
    pub subject: Option<String>,
    pub message_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
    pub consumer: Option<String>,
    pub deliveries: Option<i32>,
    pub reason: String,
    pub last_error: Option<String>,
    pub first_seen_at: Option<DateTime<Utc>>,
    pub failed_at: DateTime<Utc>,
    /// The trace the message belonged to.
    pub trace_id: Option<String>,
}

/// A recorded dead letter, as the review API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub status: Status,
    /// `exhausted`, `gone`, `poison` or `unrecognised` (see [`NewDeadLetter::kind`]).
    pub kind: String,
    pub source_stream: String,
    pub source_sequence: i64,
    pub subject: Option<String>,
    pub message_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub consumer: Option<String>,
    pub deliveries: Option<i32>,
    pub reason: String,
    pub last_error: Option<String>,
    /// The payload when it is JSON.
    pub payload: Option<serde_json::Value>,
    /// The payload's bytes, base64, when it is not JSON.
    #[sqlx(skip)]
    pub payload_base64: Option<String>,
    #[serde(skip)]
    pub payload_raw: Option<Vec<u8>>,
    #[sqlx(json)]
    pub headers: BTreeMap<String, String>,
    pub first_seen_at: Option<DateTime<Utc>>,
    pub failed_at: DateTime<Utc>,
    /// The trace the message belonged to: open it in Jaeger to see every attempt.
    pub trace_id: Option<String>,
    pub status_changed_by: Option<String>,
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, status, kind, source_stream, source_sequence, subject, message_id, order_id, consumer,
    deliveries, reason, last_error, payload_json AS payload, payload AS payload_raw, headers,
    first_seen_at, failed_at, trace_id, status_changed_by, status_reason, created_at, updated_at";

impl DeadLetter {
    fn finish(mut self) -> Self {
        if self.payload.is_none() {
            self.payload_base64 = self.payload_raw.as_ref().map(|raw| BASE64.encode(raw));
        }
        self
    }
}

/// Text as Postgres can store it: each NUL replaced by U+FFFD (see the module docs).
pub fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') { Cow::Owned(text.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(text) }
}

/// Whether `jsonb` can hold this value: no NUL in any string or key.
pub fn jsonb_safe(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(items) => items.iter().all(jsonb_safe),
        Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && jsonb_safe(v)),
        _ => true,
    }
}

/// Only a dead order (a message of the work queue `orders_stream`) changes the order's status;
/// an event the projection could not apply does not (see `capture`'s module docs).
fn announces_order(letter: &NewDeadLetter) -> bool {
    letter.source_stream == ORDERS_STREAM
}

/// Records a dead letter, once: a second capture of the same stream and sequence changes
/// nothing and returns `None`. An order's dead letter also announces `order_events.dead_lettered`
/// through the outbox, in the same transaction.
pub async fn record(tx: &mut PgConnection, letter: &NewDeadLetter) -> Result<Option<Uuid>, sqlx::Error> {
    let id = Uuid::now_v7();
    let payload_json: Option<serde_json::Value> =
        letter.payload.as_deref().and_then(|bytes| serde_json::from_slice(bytes).ok()).filter(jsonb_safe);
    let text = |t: &Option<String>| t.as_deref().map(|t| pg_text(t).into_owned());
    let headers: BTreeMap<String, String> =
        letter.headers.iter().map(|(k, v)| (pg_text(k).into_owned(), pg_text(v).into_owned())).collect();
    let source_stream = pg_text(&letter.source_stream);
    // The last error may have been reported before this capture.
    let noted: Option<String> =
        sqlx::query_scalar("SELECT error FROM last_errors WHERE source_stream = $1 AND source_sequence = $2")
            .bind(&source_stream)
            .bind(letter.source_sequence)
            .fetch_optional(&mut *tx)
            .await?;
    let last_error = text(&letter.last_error).or(noted);
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO dead_letters (id, source_stream, source_sequence, subject, message_id, order_id, payload,
             payload_json, headers, consumer, deliveries, reason, last_error, first_seen_at, failed_at, trace_id, kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (source_stream, source_sequence) DO NOTHING
         RETURNING id",
    )
    .bind(id)
    .bind(&source_stream)
    .bind(letter.source_sequence)
    .bind(text(&letter.subject))
    .bind(letter.message_id)
    .bind(letter.order_id)
    .bind(&letter.payload)
    .bind(&payload_json)
    .bind(Json(&headers))
    .bind(text(&letter.consumer))
    .bind(letter.deliveries)
    .bind(pg_text(&letter.reason))
    .bind(&last_error)
    .bind(letter.first_seen_at)
    .bind(letter.failed_at)
    .bind(text(&letter.trace_id))
    .bind(letter.kind)
    .fetch_optional(&mut *tx)
    .await?;
    // The note, if any, is in the row now.
    sqlx::query("DELETE FROM last_errors WHERE source_stream = $1 AND source_sequence = $2")
        .bind(&source_stream)
        .bind(letter.source_sequence)
        .execute(&mut *tx)
        .await?;

    if let (Some(id), Some(order_id), true) = (inserted, letter.order_id, announces_order(letter)) {
        let reason = match &last_error {
            Some(error) => format!("{}; last error: {error}", pg_text(&letter.reason)),
            None => pg_text(&letter.reason).into_owned(),
        };
        let event = OrderDeadLettered {
            version: PAYLOAD_VERSION,
            order_id,
            reason,
            dead_letter_id: id,
            dead_lettered_at: letter.failed_at,
        };
        outbox::enqueue(tx, &[OutgoingMessage::event(&event, SOURCE)]).await?;
    }
    Ok(inserted)
}

/// Every `kind` a dead letter can be recorded as (see [`NewDeadLetter::kind`]).
pub const KINDS: [&str; 4] = ["exhausted", "gone", "poison", "unrecognised"];

/// dlq-service's metrics (`dead_letters_captured_total`, … in Prometheus).
pub const CAPTURED: &str = "dead_letters.captured";
const REPLAYED: &str = "dead_letters.replayed";
const DISCARDED: &str = "dead_letters.discarded";
const PENDING: &str = "dead_letters.pending";

/// Describes dlq-service's metrics and starts its counters at zero, so that a dashboard shows
/// `0` (not "no data") until the first dead letter.
///
/// The counters count what this process did. A review done with the command line
/// (`dlq-service replay …`) runs in a process of its own, whose counts end with it; the
/// [`PENDING`] gauge is counted from the table, so it shows every review.
pub fn register_metrics() {
    metrics::describe_counter!(
        CAPTURED,
        "Dead letters recorded, by kind (exhausted, gone, poison, unrecognised)."
    );
    metrics::describe_counter!(REPLAYED, "Dead letters replayed through the review API.");
    metrics::describe_counter!(DISCARDED, "Dead letters discarded through the review API.");
    metrics::describe_gauge!(PENDING, "Dead letters waiting for review.");
    for kind in KINDS {
        metrics::counter!(CAPTURED, "kind" => kind).absolute(0);
    }
    metrics::counter!(REPLAYED).absolute(0);
    metrics::counter!(DISCARDED).absolute(0);
}

/// Keeps the [`PENDING`] gauge (rows waiting for review) current until `shutdown`.
pub async fn watch_pending(
    pool: PgPool,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let pending: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE status = 'pending'")
                .fetch_one(&pool)
                .await;
        if let Ok(pending) = pending {
            metrics::gauge!(PENDING).set(pending as f64);
        }
        shared::shutdown::sleep_or_cancel(every, &shutdown).await;
    }
}

/// Keeps a consumer's last error for a message, and adds it to its dead letter if that is
/// already recorded.
pub async fn note_last_error(
    pool: &PgPool,
    source_stream: &str,
    source_sequence: i64,
    consumer: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let (source_stream, consumer, error) = (pg_text(source_stream), pg_text(consumer), pg_text(error));
    let mut tx = pool.begin().await?;
    // Kept only while its dead letter is not recorded yet (see the module docs).
    sqlx::query(
        "INSERT INTO last_errors (source_stream, source_sequence, consumer, error)
         SELECT $1, $2, $3, $4
         WHERE NOT EXISTS (SELECT 1 FROM dead_letters WHERE source_stream = $1 AND source_sequence = $2)
         ON CONFLICT (source_stream, source_sequence) DO UPDATE SET error = EXCLUDED.error, noted_at = now()",
    )
    .bind(&source_stream)
    .bind(source_sequence)
    .bind(&consumer)
    .bind(&error)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE dead_letters SET last_error = $3, updated_at = now()
         WHERE source_stream = $1 AND source_sequence = $2 AND last_error IS NULL",
    )
    .bind(&source_stream)
    .bind(source_sequence)
    .bind(&error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Deletes last-error notes older than `retention` that no dead letter claimed; returns how
/// many.
pub async fn prune_last_errors(pool: &PgPool, retention: std::time::Duration) -> Result<u64, sqlx::Error> {
    let seconds = retention.as_secs_f64();
    let done = sqlx::query("DELETE FROM last_errors WHERE noted_at < now() - make_interval(secs => $1)")
        .bind(seconds)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// One page of dead letters, newest first. `before` is the last ID of the previous page.
pub async fn list(
    pool: &PgPool,
    status: Option<Status>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    list_matching(pool, &Filter { status, text: None }, before, limit).await
}

/// Which dead letters a list (or a bulk review) is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<Status>,
    /// Text that the reason or the last error contains (case-sensitive), e.g. one error message.
    pub text: Option<String>,
}

/// Like [`list`], for the dead letters that match `filter`.
pub async fn list_matching(
    pool: &PgPool,
    filter: &Filter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id < $2)
           AND ($4::text IS NULL OR strpos(reason, $4) > 0 OR strpos(last_error, $4) > 0)
         ORDER BY id DESC LIMIT $3"
    );
    let rows: Vec<DeadLetter> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(filter.status)
        .bind(before)
        .bind(limit)
        .bind(filter.text.as_deref().map(pg_text))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(DeadLetter::finish).collect())
}

/// How many dead letters have each status (a status with none is absent).
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(Status, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM dead_letters GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
}

/// How many pending dead letters match `text` (as in [`Filter::text`]), and the newest of them:
/// what a reviewer confirms before a bulk review.
pub async fn count_pending_matching(
    pool: &PgPool,
    text: Option<&str>,
) -> Result<(i64, Option<Uuid>), sqlx::Error> {
    sqlx::query_as(
        "WITH matching AS (
             SELECT id FROM dead_letters
             WHERE status = 'pending' AND ($1::text IS NULL OR strpos(reason, $1) > 0 OR strpos(last_error, $1) > 0))
         SELECT (SELECT count(*) FROM matching), (SELECT id FROM matching ORDER BY id DESC LIMIT 1)",
    )
    .bind(text.map(pg_text))
    .fetch_one(pool)
    .await
}

/// The pending dead letters that match `text` (as in [`Filter::text`]) and are no newer than
/// `upto`, oldest first, at most `limit`: the selection of a bulk review. `upto` is the newest
/// one the reviewer was shown, so a dead letter recorded while they decided is not swept in.
pub async fn pending_matching(
    pool: &PgPool,
    text: Option<&str>,
    upto: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM dead_letters
         WHERE status = 'pending' AND id <= $1
           AND ($2::text IS NULL OR strpos(reason, $2) > 0 OR strpos(last_error, $2) > 0)
         ORDER BY id LIMIT $3",
    )
    .bind(upto)
    .bind(text.map(pg_text))
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DeadLetter>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    let row: Option<DeadLetter> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    Ok(row.map(DeadLetter::finish))
}

/// Why a review action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("there is no dead letter {0}")]
    NotFound(Uuid),
    #[error("dead letter {id} is {status}, not pending")]
    NotPending { id: Uuid, status: Status },
    #[error("dead letter {0} has no original message to replay")]
    NothingToReplay(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Who changed a status, and why.
#[derive(Debug, Clone)]
pub struct Review {
    pub by: String,
    pub reason: Option<String>,
}

/// Republishes the original message to its subject **through the outbox**, with the same
/// logical ID (so the worker's idempotency still holds: replaying twice reserves at most once)
/// and a fresh `Nats-Msg-Id` (or JetStream's duplicate window would silently drop it), and
/// marks the row replayed, in one transaction.
///
/// Tracing: the replay is a span of the reviewer's request, *linked* to the original trace; the
/// republished message keeps the original headers, so its processing continues the order's own
/// trace, after the failed attempts and the capture.
pub async fn replay(pool: &PgPool, id: Uuid, review: &Review) -> Result<DeadLetter, ReviewError> {
    let span = tracing::info_span!("replay dead letter", dead_letter.id = %id, otel.status_code = tracing::field::Empty);
    replay_in(pool, id, review, &span).instrument(span.clone()).await
}

async fn replay_in(
    pool: &PgPool,
    id: Uuid,
    review: &Review,
    span: &tracing::Span,
) -> Result<DeadLetter, ReviewError> {
    let mut tx = pool.begin().await?;
    let letter = lock_pending(&mut tx, id).await?;
    let original = shared::messaging::envelope::nats_header_map(&letter.headers);
    span.add_link(shared::telemetry::propagation::extract(Some(&original)).span().span_context().clone());
    let (Some(subject), Some(payload)) = (letter.subject.clone(), letter.payload_raw.clone()) else {
        return Err(ReviewError::NothingToReplay(id));
    };
    let message_id = letter.message_id.unwrap_or_else(Uuid::now_v7);
    let mut headers = letter.headers.clone();
    headers.insert(contract::headers::ID.to_owned(), message_id.to_string());
    let message =
        OutgoingMessage { subject, message_id, dedupe_id: Uuid::now_v7().to_string(), headers, payload };
    outbox::enqueue(&mut tx, &[message]).await?;
    let letter = set_status(&mut tx, id, Status::Replayed, review).await?;
    tx.commit().await?;
    metrics::counter!(REPLAYED).increment(1);
    Ok(letter)
}

/// Marks a dead letter discarded: reviewed, and deliberately not processed.
pub async fn discard(pool: &PgPool, id: Uuid, review: &Review) -> Result<DeadLetter, ReviewError> {
    let mut tx = pool.begin().await?;
    lock_pending(&mut tx, id).await?;
    let letter = set_status(&mut tx, id, Status::Discarded, review).await?;
    tx.commit().await?;
    metrics::counter!(DISCARDED).increment(1);
    Ok(letter)
}

/// Locks the row; two concurrent reviews of one row are serialised here, and the second finds
/// it no longer pending.
async fn lock_pending(tx: &mut PgConnection, id: Uuid) -> Result<DeadLetter, ReviewError> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE");
    let letter: DeadLetter = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ReviewError::NotFound(id))?;
    match letter.status {
        Status::Pending => Ok(letter),
        status => Err(ReviewError::NotPending { id, status }),
    }
}

async fn set_status(
    tx: &mut PgConnection,
    id: Uuid,
    status: Status,
    review: &Review,
) -> Result<DeadLetter, ReviewError> {
    let sql = format!(
        "UPDATE dead_letters SET status = $2, status_changed_by = $3, status_reason = $4, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let letter: DeadLetter = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(status)
        .bind(&review.by)
        .bind(&review.reason)
        .fetch_one(&mut *tx)
        .await?;
    Ok(letter.finish())
}
