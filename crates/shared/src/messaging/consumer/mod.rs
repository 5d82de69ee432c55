//! The idempotent consumer: at-least-once delivery made safe.
//!
//! JetStream delivers every message *at least* once: a worker that crashes before acknowledging
//! gets its messages redelivered to another, and a publisher that retries may store a message
//! twice. Exactly-once delivery is not on offer, so exactly-once *effects* are built here:
//!
//! 1. Pull a batch of messages (several processes share one durable consumer: a work queue).
//!    Pull only when ready: wait for one message, then take whatever else is already there, up
//!    to the batch size. Nothing is prefetched, so nothing waits in this process's buffers
//!    while its ack timer runs.
//! 2. [`Handler::prepare`] each one without I/O: decode it, or decide it must be retried or is
//!    poison.
//! 3. In **one transaction**: insert the logical IDs (`ce-id`) into `processed_messages` with
//!    `ON CONFLICT DO NOTHING RETURNING`. IDs that come back are new; the others were applied
//!    before: duplicates. [`Handler::apply`] applies only the new ones, writing any outcome events
//!    to the outbox in the same transaction.
//! 4. Commit, **then** acknowledge. A crash before the commit means redelivery, never loss; a
//!    crash after it means a redelivery that step 3 recognises as a duplicate.
//!
//! A batch shares one commit (the expensive part of a Postgres write), so throughput scales with
//! batch size while each message keeps its own all-or-nothing effect.
//!
//! While a batch is being applied, the messages in hand are kept alive with "in progress" acks,
//! so a slow transaction does not get them redelivered to another worker.
//!
//! Failures: a message whose attempt fails is simply **not acknowledged**. JetStream redelivers
//! it when its ack wait runs out, and the consumer's `BackOff` list makes each wait longer
//! (1 s, 2 s, 4 s, 8 s by default): one retry schedule, the same for a failed attempt and for a
//! worker that crashed or hung. (A nak would need a delay of its own, and JetStream adds a
//! nak's delay to the BackOff step rather than replacing it.) After `max_deliver` attempts the
//! message is given up on, by whoever the settings say ([`GivesUp`]): JetStream, which emits a
//! MAX_DELIVERIES advisory that the dead-letter service captures (the last attempt's error is
//! published beside it), or the consumer itself, which copies the message to the dead-letter
//! stream and terminates it. A poison message, which no retry can fix, is copied and
//! terminated at once.
//!
//! If Postgres is down, in any way ([`db::is_unavailable`]: unreachable, read-only, out of disk,
//! too slow), the batch is left unacknowledged and the consumer **stops pulling** until Postgres
//! commits a probe write again, so an outage costs each message at most one delivery attempt.
//!
//! Every wait is bounded: a batch's work may keep its messages "in progress" for at most
//! `max_in_progress` (what is not done by then is left for redelivery), a row lock held by
//! someone else fails only the message that needs it (Postgres's `lock_timeout`, then that
//! message is retried alone), and a pull that fails (the durable consumer was deleted, the
//! stream re-created, NATS is away) is retried with a growing pause and the consumer is declared
//! again if it is gone.
//!
//! Acknowledgements go out as soon as the commit is done, before any slower work (dead-letter
//! copies, last-error notes). On a message's last allowed delivery the ack is confirmed by the
//! server (a "double ack"): there, a lost ack would not bring the message back but get it
//! dead-lettered although its work is committed.
//!
//! Every process of a consumer that JetStream gives up for can also answer the dead-letter
//! sweep's question "did you apply this message?" ([`applied`]), from `processed_messages`.

pub mod applied;
mod idempotent;
mod settings;
mod settle;

pub use idempotent::IdempotentConsumer;
pub use settings::{ConsumerSettings, GivesUp};

use std::{fmt::Debug, time::Duration};

use async_nats::jetstream;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::messaging::envelope::Envelope;

/// One delivery of a message, with what the consumer needs to know about it.
#[derive(Debug)]
pub struct Delivery {
    pub message: jetstream::Message,
    /// The CloudEvents attributes; `envelope.id` is the idempotency key.
    pub envelope: Envelope,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub attempt: u64,
    pub stream_sequence: u64,
    /// When the stream stored the message (the server's clock; now, if the reply subject does
    /// not say).
    pub published: chrono::DateTime<chrono::Utc>,
    /// The span of this delivery attempt, child of the context the message carries.
    pub span: tracing::Span,
}

/// A new message being applied, with the span of its delivery: work done for this message
/// (outcome events, statements) belongs under that span, in the message's own trace.
#[derive(Debug)]
pub struct Incoming<'a, M> {
    pub message: &'a M,
    pub span: &'a tracing::Span,
}

/// What [`Handler::prepare`] decides about one delivery, before any database work: apply it,
/// retry it, give it up as poison, or ignore it. The handler's word; the consumer carries it out
/// and reports what it did as a [`Disposition`].
#[derive(Debug)]
pub enum Verdict<M> {
    /// Decoded; apply it (unless it is a duplicate).
    Process(M),
    /// This attempt fails; try again after a pause.
    Retry(String),
    /// Cannot be processed, however often it is retried.
    Poison(String),
    /// Not meant for this consumer (for example an event type it does not know, which a newer
    /// publisher may add): acknowledged and counted, nothing changed.
    Ignore(String),
}

/// The service-specific part of a consumer.
pub trait Handler: Send + Sync + 'static {
    /// A decoded message.
    type Message: Send + Sync;
    /// What applying one message did, for logs, metrics and tests.
    type Outcome: Send + Debug;

    /// Decodes a delivery and decides whether to process it. Must not do I/O.
    fn prepare(&self, delivery: &Delivery) -> Verdict<Self::Message>;

    /// The `outcome` label of an applied message in metrics (e.g. `reserved`, `rejected`).
    fn outcome_label(_outcome: &Self::Outcome) -> &'static str {
        "applied"
    }

    /// Applies messages that have not been applied before, inside the batch's transaction.
    /// Returns one outcome per message, in order. May be called again with the same messages
    /// if the transaction hit a deadlock and was rolled back.
    fn apply(
        &self,
        tx: &mut PgConnection,
        messages: &[Incoming<'_, Self::Message>],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, sqlx::Error>> + Send;
}

/// What the consumer did with one delivery, which decides how it is settled with JetStream
/// (ack, nak after a delay, or a poison copy then term). It is a [`Verdict`] carried out, plus
/// what only the transaction can tell: `Applied` (with the handler's outcome) or `Duplicate`.
#[derive(Debug)]
pub enum Disposition<O> {
    /// Applied in this batch's transaction, then acknowledged.
    Applied(O),
    /// Its logical ID was already recorded: acknowledged, nothing changed.
    Duplicate,
    /// This attempt failed: not acknowledged, redelivered after `delay` (the BackOff step).
    Retry { reason: String, delay: Duration },
    /// Unreadable: copied to the dead-letter stream with its reason, then terminated.
    Poison { reason: String },
    /// Not for this consumer: acknowledged, nothing changed.
    Ignored { reason: String },
}

impl<O> Disposition<O> {
    /// Whether this delivery is done with (its work committed, or nothing to do): it is
    /// acknowledged at once.
    fn is_settled_by_ack(&self) -> bool {
        matches!(self, Self::Applied(_) | Self::Duplicate | Self::Ignored { .. })
    }
}

#[derive(Debug)]
pub struct Processed<O> {
    pub stream_sequence: u64,
    pub message_id: Option<Uuid>,
    pub disposition: Disposition<O>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("Postgres is unavailable; the batch was left unacknowledged for redelivery")]
    DatabaseUnavailable(#[source] sqlx::Error),
}
