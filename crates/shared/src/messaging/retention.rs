//! Pruning the messaging tables every service has: sent `outbox` rows and `processed_messages`.
//!
//! **Why:** both tables grow with every message. At full load about 800 outbox rows a second
//! arrive per service, so pruning must keep up with that, whatever the backlog: each pass deletes
//! expired rows in bounded batches (short transactions, short locks) until none is left, every
//! [`RelaySettings::prune_interval`]. Several replicas may prune at once: `SKIP LOCKED` keeps
//! them out of each other's way.
//!
//! **How long each is kept:**
//! - Sent outbox rows: `OUTBOX_RETENTION` (default 24 h), for inspection only. Nothing reads
//!   them; unsent and quarantined rows are never pruned.
//! - Processed message IDs: `PROCESSED_MESSAGES_RETENTION` (default 30 days), validated to be at
//!   least `UNPROCESSED_STREAM_MAX_AGE` (default 14 days). An ID is what stops a message from
//!   being applied twice, so it must outlive every way the same message can come back:
//!   - a redelivery: at most `max_deliver` attempts, seconds apart (about 23 s by default);
//!   - an outbox re-send after a crash between publish and marking sent: the broker drops it
//!     inside the stream's duplicate window (2 min), the ID does after that, for as long as the
//!     relay was down;
//!   - a dead letter: captured from `orders_unprocessed` within its max age (14 days), then
//!     replayed (once: a replay needs a pending dead letter) when a person decides.
//!
//!   **After the retention** a message with a pruned ID would be applied again. The remaining
//!   risk is a replay decided more than `PROCESSED_MESSAGES_RETENTION` after the original was
//!   processed (an ack lost on the last attempt turns a processed message into a dead letter):
//!   review dead letters within that time, or raise the setting.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::messaging::outbox::RelaySettings;

/// Most rows one `DELETE` removes: a short transaction, however large the backlog.
const BATCH: i64 = 5_000;

/// The tables pruned, each with the statement that deletes one batch of expired rows (`$1`: the
/// retention in seconds, `$2`: the batch size).
const TABLES: [(&str, &str); 2] = [
    (
        "outbox",
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
    ),
    (
        "processed_messages",
        "DELETE FROM processed_messages WHERE (consumer, message_id) IN (
             SELECT consumer, message_id FROM processed_messages
             WHERE processed_at < now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
    ),
];

/// Deletes rows of the messaging tables past their retention. See the module docs.
#[derive(Debug, Clone)]
pub struct Pruner {
    pool: PgPool,
    settings: RelaySettings,
}

impl Pruner {
    pub fn new(pool: PgPool, settings: RelaySettings) -> Self {
        Self { pool, settings }
    }

    /// Prunes every `prune_interval` until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.prune(&shutdown).await {
                tracing::warn!(error = %err, "could not prune the messaging tables; will try again");
            }
            crate::shutdown::sleep_or_cancel(self.settings.prune_interval, &shutdown).await;
        }
    }

    /// One pass: deletes every expired row, a batch at a time. Returns how many per table.
    pub async fn prune(&self, shutdown: &CancellationToken) -> Result<[u64; 2], sqlx::Error> {
        let retentions = [self.settings.retention, self.settings.processed_retention];
        let mut pruned = [0; 2];
        for (((table, sql), retention), count) in TABLES.iter().zip(retentions).zip(&mut pruned) {
            while !shutdown.is_cancelled() {
                let deleted = self.delete_batch(sql, retention).await?;
                *count += deleted;
                if deleted < BATCH as u64 {
                    break;
                }
            }
            if *count > 0 {
                tracing::debug!(table, rows = *count, "pruned rows past their retention");
            }
        }
        Ok(pruned)
    }

    async fn delete_batch(&self, sql: &'static str, retention: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(sql).bind(retention.as_secs_f64()).bind(BATCH).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
