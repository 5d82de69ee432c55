//! One hop of the project's pipeline with nothing else in it: publish to a work-queue stream,
//! pull in batches, commit each batch in one Postgres transaction, then ack.
//!
//! Ack after the commit, as the project does: a crash between the two redelivers the batch and
//! the primary key on the stream sequence makes the second insert change nothing. What is left
//! out is everything the project adds on top: HTTP, the outbox and its relay, CloudEvents
//! headers, tracing, metrics, the idempotency table. The gap between this rate and the project's
//! is what those cost, plus the extra hops.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, PullConsumer, pull},
    stream::{self, RetentionPolicy, StorageType},
};
use futures::{StreamExt, stream::FuturesUnordered};
use sqlx::PgPool;
use tokio::{sync::Semaphore, time::Instant};

use crate::sample_payload;

pub const CREATE_TABLE: &str =
    "CREATE TABLE rawbench_pipeline (stream_seq bigint PRIMARY KEY, payload bytea NOT NULL)";

const STREAM: &str = "rawbench";
const SUBJECT: &str = "rawbench.work";
const CONSUMER: &str = "rawbench-worker";
/// Messages committed together: as many as are ready, up to this many.
const BATCH: usize = 100;
/// Publishes awaiting their PubAck at once (pipelined, as the project's relay does).
const PUBLISH_WINDOW: usize = 1_000;
/// Most messages published and not yet acked. Unbounded, the publisher would spend the shared
/// cores filling the stream and the rate measured would be the broker's ingest, not the
/// pipeline's: bounded, the publisher runs only as fast as the workers finish.
const MAX_BACKLOG: usize = 10_000;

/// Messages per second through publish → pull → batched transaction → ack, with one publisher
/// and `workers` pull workers sharing one durable consumer, for `duration`.
pub async fn messages_per_second(
    nats: &async_nats::Client,
    pool: &PgPool,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let js = jetstream::new(nats.clone());
    let consumer = create_stream_and_consumer(&js).await?;
    let started = Instant::now();
    let deadline = started + duration;

    // One permit per message that may be published: the publisher takes them, the workers
    // give them back once their messages are acked.
    let backlog_room = Arc::new(Semaphore::new(MAX_BACKLOG));
    let publisher = tokio::spawn(publish_until(js.clone(), backlog_room.clone(), deadline));
    let mut worker_tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        worker_tasks.spawn(consume_until(consumer.clone(), pool.clone(), backlog_room.clone(), deadline));
    }
    let mut processed = 0;
    while let Some(done) = worker_tasks.join_next().await {
        processed += done.context("a pipeline worker panicked")??;
    }
    let elapsed = started.elapsed();
    publisher.await.context("the publisher panicked")??;
    nats.flush().await.context("flushing the last acks")?;
    js.delete_stream(STREAM).await.context("deleting the rawbench stream")?;
    Ok(crate::per_second(processed, elapsed))
}

/// A fresh work-queue stream on file storage (as `orders_stream` is) and its durable consumer.
async fn create_stream_and_consumer(js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
    // A stream left by an interrupted run would hold its messages: start empty.
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the rawbench stream")?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 20 * BATCH as i64,
            ..Default::default()
        })
        .await
        .context("creating the rawbench consumer")
}

/// Publishes as fast as the broker confirms and the backlog allows, keeping [`PUBLISH_WINDOW`]
/// PubAcks outstanding.
async fn publish_until(
    js: jetstream::Context,
    backlog_room: Arc<Semaphore>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut awaiting_ack = FuturesUnordered::new();
    let mut published = 0;
    while let Ok(permit) = tokio::time::timeout_at(deadline, backlog_room.acquire()).await {
        permit.context("the backlog's semaphore was closed")?.forget();
        let ack = js.publish(SUBJECT, sample_payload()).await.context("publishing")?;
        awaiting_ack.push(ack.into_future());
        if awaiting_ack.len() >= PUBLISH_WINDOW
            && let Some(ack) = awaiting_ack.next().await
        {
            ack.context("a publish was not confirmed")?;
            published += 1;
        }
    }
    while let Some(ack) = awaiting_ack.next().await {
        ack.context("a publish was not confirmed")?;
        published += 1;
    }
    Ok(published)
}

/// Pulls whatever is ready (up to [`BATCH`]), commits it in one transaction, acks it; until
/// `deadline`. Returns the messages committed and acked.
async fn consume_until(
    consumer: PullConsumer,
    pool: PgPool,
    backlog_room: Arc<Semaphore>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut batches = consumer
        .stream()
        .max_messages_per_batch(2 * BATCH)
        .messages()
        .await
        .context("pulling from the rawbench consumer")?
        .ready_chunks(BATCH);
    let mut processed = 0;
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, batches.next()).await {
        let batch: Vec<jetstream::Message> =
            batch.into_iter().collect::<Result<_, _>>().context("pulling a message")?;
        commit_batch(&pool, &batch).await?;
        // Only after the commit: a crash before this line means redelivery, never loss.
        for message in &batch {
            message.ack().await.map_err(|err| anyhow!(err)).context("acking")?;
        }
        processed += batch.len() as u64;
        backlog_room.add_permits(batch.len());
    }
    Ok(processed)
}

/// One transaction for the whole batch, with one set-based `INSERT`.
async fn commit_batch(pool: &PgPool, batch: &[jetstream::Message]) -> anyhow::Result<()> {
    let mut sequences = Vec::with_capacity(batch.len());
    let mut payloads = Vec::with_capacity(batch.len());
    for message in batch {
        let info = message.info().map_err(|err| anyhow!(err)).context("reading a message's metadata")?;
        sequences.push(i64::try_from(info.stream_sequence)?);
        payloads.push(message.payload.to_vec());
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO rawbench_pipeline (stream_seq, payload)
         SELECT * FROM UNNEST($1::int8[], $2::bytea[])
         ON CONFLICT (stream_seq) DO NOTHING",
    )
    .bind(&sequences)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    tx.commit().await.context("committing a batch")?;
    Ok(())
}
