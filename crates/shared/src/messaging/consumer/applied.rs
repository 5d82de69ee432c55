//! "Did you apply this message?": a consumer's own answer, for the dead-letter sweep.
//!
//! The sweep (dlq-service) looks for messages still in a work queue that their consumer gave
//! up on and whose advisory was lost. The broker cannot always tell such a message from one
//! that was acknowledged: on a replicated stream, a message acknowledged during a failover can
//! stay for minutes before the stream's new leader removes it (the sweep module's docs say
//! why). The consumer can tell, per message, because it records the ID of every message it
//! applies in the same transaction as the work ([`super`], step 3). So before it takes a
//! message as dead, the sweep asks the consumer over NATS request/reply
//! ([`contract::dead_letter::applied_query`]):
//!
//! - [`Answerer`] runs in every process of the consumer, in one queue group, so one of them
//!   answers each question, from `processed_messages`;
//! - [`ask`] is the question, with a deadline.
//!
//! A message that was acknowledged without being applied (a poison copy, an ignored event type)
//! is answered "not applied": the answer is only ever "yes" for work that is committed.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use contract::dead_letter::{AppliedAnswer, applied_query};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the answerer may take over Postgres before it says it cannot answer.
const DATABASE_DEADLINE: Duration = Duration::from_secs(2);

/// Answers the sweep's questions about the consumer `consumer` of `stream`.
#[derive(Debug, Clone)]
pub struct Answerer {
    pub nats: Client,
    pub pool: PgPool,
    pub stream: String,
    pub consumer: String,
}

impl Answerer {
    /// Answers until `shutdown` is cancelled (or the connection is closed for good). The
    /// subscription survives reconnects: the client subscribes again on its own. Questions are
    /// answered one at a time: the sweep asks about a handful of messages a minute at most.
    pub async fn run(self, shutdown: CancellationToken) {
        let subject = applied_query(&self.stream, &self.consumer);
        // One queue group per consumer: with several processes, each question is answered once.
        let mut questions = match self.nats.queue_subscribe(subject.clone(), self.consumer.clone()).await {
            Ok(questions) => questions,
            Err(err) => {
                // Not a reason to stop the worker: unanswered, the sweep decides without it.
                tracing::warn!(%subject, error = %err, "cannot answer the sweep's questions");
                return shutdown.cancelled().await;
            }
        };
        loop {
            let question = tokio::select! {
                () = shutdown.cancelled() => break,
                question = questions.next() => match question {
                    Some(question) => question,
                    None => break,
                },
            };
            let Some(reply) = question.reply else { continue };
            let answer = self.answer(&question.payload).await;
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(err) = self.nats.publish(reply, body.into()).await {
                tracing::warn!(%subject, error = %err, "could not reply to the sweep");
            }
        }
        questions.unsubscribe().await.ok();
    }

    async fn answer(&self, question: &[u8]) -> AppliedAnswer {
        let Some(id) = std::str::from_utf8(question).ok().and_then(|s| Uuid::parse_str(s.trim()).ok()) else {
            return AppliedAnswer::Error("the question must be a message ID (a UUID)".to_owned());
        };
        let applied = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_messages WHERE consumer = $1 AND message_id = $2)",
        )
        .bind(&self.consumer)
        .bind(id)
        .fetch_one(&self.pool);
        match tokio::time::timeout(DATABASE_DEADLINE, applied).await {
            Ok(Ok(applied)) => AppliedAnswer::Applied(applied),
            Ok(Err(err)) => AppliedAnswer::Error(format!("Postgres: {err}")),
            Err(_) => AppliedAnswer::Error(format!("Postgres did not answer within {DATABASE_DEADLINE:?}")),
        }
    }
}

/// What asking got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The consumer answered: whether it applied the message.
    Applied(bool),
    /// No process answers for this consumer (none runs, or it does not take such questions).
    NoOne,
    /// It could not answer, or did not within the deadline: ask again later.
    NoAnswer(String),
}

/// Asks the consumer `consumer` of `stream` whether it applied the message `id`, waiting at
/// most `deadline`.
pub async fn ask(nats: &Client, stream: &str, consumer: &str, id: Uuid, deadline: Duration) -> Asked {
    let request = async_nats::Request::new().payload(id.to_string().into()).timeout(Some(deadline));
    match nats.send_request(applied_query(stream, consumer), request).await {
        Ok(reply) => match serde_json::from_slice(&reply.payload) {
            Ok(AppliedAnswer::Applied(applied)) => Asked::Applied(applied),
            Ok(AppliedAnswer::Error(why)) => Asked::NoAnswer(why),
            Err(err) => Asked::NoAnswer(format!("an answer that is not an AppliedAnswer: {err}")),
        },
        Err(err) if err.kind() == RequestErrorKind::NoResponders => Asked::NoOne,
        Err(err) => Asked::NoAnswer(err.to_string()),
    }
}
