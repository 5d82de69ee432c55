//! Faults beyond the planned two (issue 16), the dead-letter service's rows: each test first
//! makes the fault happen against real servers, then checks that nothing is lost.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::PullConsumer},
};
use contract::{
    dead_letter,
    events::{OrderItem, OrderPlaced, OrderReserved},
    streams::{self, EVENTS_STREAM, ORDERS_STREAM, UNPROCESSED_STREAM},
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use shared::{
    config::Env,
    messaging::{consumer::ConsumerSettings, envelope::OutgoingMessage, topology},
};
use test_support::wait_until;
use uuid::Uuid;

use crate::helpers::*;

fn order(version: u32) -> OrderPlaced {
    OrderPlaced { version, ..OrderPlaced::new("c-1", vec![OrderItem::new("FAIL-1", 1)]) }
}

/// Publishes a message as a service would (through its outbox), returning its stream sequence.
async fn publish_message(js: &jetstream::Context, message: &OutgoingMessage) -> u64 {
    js.publish_with_headers(message.subject.clone(), message.nats_headers(), message.payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A durable consumer, declared as the project declares its own, that gives up after two
/// deliveries 200 ms apart.
async fn short_lived_consumer(
    js: &jetstream::Context,
    stream: &'static str,
    filter: &str,
    name: &str,
) -> PullConsumer {
    two_delivery_consumer(js, stream, filter, name, "200ms").await
}

/// A durable consumer that gives up after two deliveries, `ack_wait` apart.
async fn two_delivery_consumer(
    js: &jetstream::Context,
    stream: &'static str,
    filter: &str,
    name: &str,
    ack_wait: &str,
) -> PullConsumer {
    let env = Env::from_pairs([("T_MAX_DELIVER", "2"), ("T_BACKOFF", ack_wait)]);
    let settings = ConsumerSettings::from_env(&env, "T", name).unwrap();
    topology::ensure_consumer(js, stream, filter, &settings).await.unwrap()
}

/// Pulls forever and never acknowledges: every delivery fails, as with a consumer that cannot
/// process anything. Abort the task to stop.
fn fail_every_delivery(consumer: PullConsumer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(mut batch) =
                consumer.batch().max_messages(10).expires(Duration::from_millis(300)).messages().await
            {
                while let Some(message) = batch.next().await {
                    drop(message);
                }
            }
        }
    })
}

/// Publishes the MAX_DELIVERIES advisory JetStream would for `stream_seq` of `orders_stream`
/// and the workers' consumer, after `deliveries` attempts (or a forgery of one).
async fn publish_worker_advisory(js: &jetstream::Context, stream_seq: u64, deliveries: u64) {
    let advisory = json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver", "timestamp": "2026-11-22T10:00:00Z",
        "stream": ORDERS_STREAM, "consumer": "inventory-worker", "stream_seq": stream_seq, "deliveries": deliveries,
    });
    let subject = format!("{}orders_stream.inventory-worker", streams::MAX_DELIVERIES_ADVISORY_PREFIX);
    js.publish(subject, advisory.to_string().into()).await.unwrap().await.unwrap();
}

async fn still_in(js: &jetstream::Context, stream: &str, sequence: u64) -> bool {
    js.get_stream(stream).await.unwrap().get_raw_message(sequence).await.is_ok()
}

/// Publishes `n` orders, lets a consumer that never acknowledges give up on each, then loses
/// their MAX_DELIVERIES advisories (purges `orders_unprocessed`), as a restart or a failover
/// can. Returns each order's message with its stream sequence.
async fn given_up_on_with_advisories_lost(js: &jetstream::Context, n: u64) -> Vec<(OutgoingMessage, u64)> {
    let mut messages = Vec::new();
    for _ in 0..n {
        let message = OutgoingMessage::event(&order(1), "order-api");
        let sequence = publish_message(js, &message).await;
        messages.push((message, sequence));
    }
    let consumer = short_lived_consumer(js, ORDERS_STREAM, "orders.new", "inventory-worker").await;
    let failing = fail_every_delivery(consumer);
    wait_until("the MAX_DELIVERIES advisories are stored", Duration::from_secs(15), || async {
        let unprocessed = js.get_stream(UNPROCESSED_STREAM).await.ok()?;
        (unprocessed.cached_info().state.messages >= n).then_some(())
    })
    .await;
    failing.abort();
    js.get_stream(UNPROCESSED_STREAM).await.unwrap().purge().await.unwrap();
    messages
}

/// Answers the sweep's question for `inventory-worker` as its workers do, from `pool`'s
/// `processed_messages`, until the guard is dropped.
fn answer_as_the_workers(js: &jetstream::Context, pool: sqlx::PgPool) -> tokio_util::sync::DropGuard {
    let answering = tokio_util::sync::CancellationToken::new();
    let answerer = shared::messaging::consumer::applied::Answerer {
        nats: js.client(),
        pool,
        stream: ORDERS_STREAM.to_owned(),
        consumer: "inventory-worker".to_owned(),
    };
    tokio::spawn(answerer.run(answering.clone()));
    answering.drop_guard()
}

/// Row 1: the projection's consumer gives up on an event; it must become a dead letter, stay
/// in `order_events` for its other readers, and not mark the order dead.
#[tokio::test]
async fn an_event_the_projection_gives_up_on_is_a_dead_letter_and_stays_in_order_events() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    let reserved = OrderReserved {
        version: 1,
        order_id: Uuid::now_v7(),
        items: vec![OrderItem::new("WIDGET-1", 1)],
        reserved_at: chrono::Utc::now(),
    };
    let event = OutgoingMessage::event(&reserved, "inventory-worker");
    let sequence = publish_message(&js, &event).await;

    let consumer = short_lived_consumer(&js, EVENTS_STREAM, "order_events.>", "order-api-projection").await;
    let failing = fail_every_delivery(consumer);
    dlq.wait_for_rows(1).await;
    failing.abort();

    let (_, page) = dlq.get("/dead-letters").await;
    let row = &page["items"][0];
    assert_eq!(row["source_stream"], EVENTS_STREAM);
    assert_eq!(row["source_sequence"], sequence);
    assert_eq!(row["consumer"], "order-api-projection");
    assert_eq!(row["subject"], event.subject);
    assert_eq!(row["order_id"], reserved.order_id.to_string());
    assert_eq!(row["message_id"], event.message_id.to_string());
    dlq.wait_until_captured().await;
    assert!(still_in(&js, EVENTS_STREAM, sequence).await, "order_events keeps it for its other readers");
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 0, "the order was reserved: not dead");

    // A replay gives the event back to its readers, with the same logical ID.
    let id = row["id"].as_str().unwrap();
    let (status, _) = dlq.post(&format!("/dead-letters/{id}/replay"), None).await;
    assert_eq!(status, StatusCode::OK);
    let replayed: Uuid = sqlx::query_scalar("SELECT message_id FROM outbox WHERE subject = $1")
        .bind(&event.subject)
        .fetch_one(&dlq.pool)
        .await
        .unwrap();
    assert_eq!(replayed, event.message_id);
}

/// Row 10: an advisory whose body names another stream than its subject is not believed.
#[tokio::test]
async fn a_forged_advisory_naming_an_order_events_message_deletes_nothing() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    let reserved = OrderReserved {
        version: 1,
        order_id: Uuid::now_v7(),
        items: vec![],
        reserved_at: chrono::Utc::now(),
    };
    let sequence = publish_message(&js, &OutgoingMessage::event(&reserved, "inventory-worker")).await;
    let forged = |stream: &str, consumer: &str| {
        json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "timestamp": "2026-11-22T10:00:00Z",
            "stream": stream, "consumer": consumer, "stream_seq": sequence, "deliveries": 5,
        })
        .to_string()
    };
    let prefix = streams::MAX_DELIVERIES_ADVISORY_PREFIX;
    for (subject, body) in [
        (format!("{prefix}orders_stream.inventory-worker"), forged(EVENTS_STREAM, "inventory-worker")),
        (format!("{prefix}orders_stream.inventory-worker"), forged(ORDERS_STREAM, "someone-else")),
    ] {
        js.publish(subject, body.into()).await.unwrap().await.unwrap();
    }
    dlq.wait_until_captured().await;

    assert!(still_in(&js, EVENTS_STREAM, sequence).await, "nothing deleted");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT source_stream, reason FROM dead_letters ORDER BY source_sequence")
            .fetch_all(&dlq.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (stream, reason) in &rows {
        assert_eq!(stream, UNPROCESSED_STREAM, "recorded as unrecognised, where it arrived");
        assert!(reason.contains("advisory body names"), "{reason}");
    }
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 0);
}

/// Row 10: an advisory on the right subject, naming a waiting order its consumer has not
/// delivered, does not delete it.
#[tokio::test]
async fn a_forged_advisory_naming_an_undelivered_order_deletes_nothing() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    short_lived_consumer(&js, ORDERS_STREAM, "orders.new", "inventory-worker").await;
    let sequence = publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;
    publish_worker_advisory(&js, sequence, 2).await;
    dlq.wait_for_rows(1).await;
    dlq.wait_until_captured().await;

    assert!(still_in(&js, ORDERS_STREAM, sequence).await, "the order still waits for its worker");
    let (stream, reason): (String, String) =
        sqlx::query_as("SELECT source_stream, reason FROM dead_letters").fetch_one(&dlq.pool).await.unwrap();
    assert_eq!(stream, UNPROCESSED_STREAM);
    assert!(reason.contains("has not delivered yet"), "{reason}");
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 0);
}

/// Row 11: an order exhausts its deliveries while dlq-service is down, and its advisory is
/// lost; the sweep still records it (and only it: an order not yet delivered stays).
#[tokio::test]
async fn the_sweep_records_an_exhausted_order_whose_advisory_was_lost() {
    let servers = Servers::start().await;
    let js = servers.nats.jetstream().await;
    let dead = order(1);
    let sequence = publish_message(&js, &OutgoingMessage::event(&dead, "order-api")).await;
    let consumer = short_lived_consumer(&js, ORDERS_STREAM, "orders.new", "inventory-worker").await;
    let failing = fail_every_delivery(consumer.clone());
    wait_until("the MAX_DELIVERIES advisory is stored", Duration::from_secs(15), || async {
        let unprocessed = js.get_stream(UNPROCESSED_STREAM).await.ok()?;
        (unprocessed.cached_info().state.messages >= 1).then_some(())
    })
    .await;
    let unprocessed = js.get_stream(UNPROCESSED_STREAM).await.unwrap();
    failing.abort();
    // Lose the advisory; and add an order that is waiting, not dead.
    unprocessed.purge().await.unwrap();
    let waiting = publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;

    let dlq = spawn_dlq_on(servers, &[("DLQ_SWEEP_INTERVAL", "200ms")]).await;
    dlq.wait_for_rows(1).await;

    let (_, page) = dlq.get("/dead-letters").await;
    let row = &page["items"][0];
    assert_eq!(row["source_sequence"], sequence);
    assert_eq!(row["order_id"], dead.order_id.to_string());
    assert_eq!(row["consumer"], "inventory-worker");
    assert!(row["reason"].as_str().unwrap().contains("sweep"), "{row}");
    wait_until("the order's status is told", Duration::from_secs(5), || async {
        (dlq.outbox_count("order_events.dead_lettered").await == 1).then_some(())
    })
    .await;
    assert!(!still_in(&js, ORDERS_STREAM, sequence).await, "removed from the work queue");
    assert!(still_in(&js, ORDERS_STREAM, waiting).await, "a waiting order is not swept");
    assert_eq!(dlq.rows().await, 1);
}

/// Row 11, with messages in flight: while every worker is stopped nothing is swept (a message
/// waiting for its redelivery is not dead); under load, where something is always ack
/// pending, a dead message whose advisory was lost is found once it stayed unfinished for
/// twice its consumer's schedule, and the messages in flight are not.
#[tokio::test]
async fn the_sweep_tells_a_lost_dead_letter_from_messages_in_flight() {
    let servers = Servers::start().await;
    let js = servers.nats.jetstream().await;
    let dead = publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;
    // Schedule: two deliveries 1 s apart, so 2 s; swept after 4 s of live time.
    let consumer = two_delivery_consumer(&js, ORDERS_STREAM, "orders.new", "inventory-worker", "1s").await;
    let failing = fail_every_delivery(consumer.clone());
    wait_until("the MAX_DELIVERIES advisory is stored", Duration::from_secs(15), || async {
        let unprocessed = js.get_stream(UNPROCESSED_STREAM).await.ok()?;
        (unprocessed.cached_info().state.messages >= 1).then_some(())
    })
    .await;
    failing.abort();
    js.get_stream(UNPROCESSED_STREAM).await.unwrap().purge().await.unwrap();
    // A second order is delivered once, then every worker stops: it waits for its redelivery.
    let waiting = publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;
    let mut first = consumer.fetch().max_messages(1).messages().await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap().info().unwrap().stream_sequence, waiting);

    let dlq = spawn_dlq_on(servers, &[("DLQ_SWEEP_INTERVAL", "200ms")]).await;
    // Observe for longer than the 4 s a live consumer would need (a negative check: a window).
    let early = tokio::time::timeout(Duration::from_secs(6), async {
        while dlq.rows().await == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(early.is_err(), "nothing is swept while no worker pulls");

    // Load: a worker takes each order, holds it 300 ms, and acknowledges it after taking the
    // next, so that something is always ack pending.
    let load = tokio::spawn({
        let (js, consumer) = (js.clone(), consumer.clone());
        async move {
            let mut held: Option<jetstream::Message> = None;
            loop {
                publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;
                let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
                if let Some(Ok(next)) = batch.next().await
                    && let Some(previous) = held.replace(next)
                {
                    previous.double_ack().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    dlq.wait_for_rows(1).await;
    load.abort();

    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT source_sequence, reason FROM dead_letters")
        .fetch_all(&dlq.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, dead as i64);
    assert!(rows[0].1.contains("sweep"), "{rows:?}");
    assert!(!still_in(&js, ORDERS_STREAM, dead).await);
}

/// Row 11, both kinds of leftover at once (as after a failover on a cluster, where an
/// acknowledged message can stay in the work queue for minutes): two orders are still in the
/// queue after every delivery, their advisories lost; the consumer applied one (its acks were
/// lost) and gave up on the other. The consumer's figures cannot tell them apart (both are
/// counted redelivered), its answer can: the applied one is removed, only the other becomes a
/// dead letter.
#[tokio::test]
async fn the_sweep_asks_the_consumer_and_dead_letters_only_what_it_did_not_apply() {
    use shared::messaging::consumer::applied::{Asked, ask};
    let servers = Servers::start().await;
    let js = servers.nats.jetstream().await;
    let [(dead, dead_sequence), (applied, applied_sequence)]: [_; 2] =
        given_up_on_with_advisories_lost(&js, 2).await.try_into().unwrap();

    // The consumer's record says it applied one of them; its answerer tells the sweep so.
    let pool = servers.migrate().await;
    sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, processed_by) VALUES ($1, $2, 'test')",
    )
    .bind("inventory-worker")
    .bind(applied.message_id)
    .execute(&pool)
    .await
    .unwrap();
    let _answering = answer_as_the_workers(&js, pool);
    let client = js.client();
    wait_until("the consumer answers", Duration::from_secs(5), || async {
        let asked =
            ask(&client, ORDERS_STREAM, "inventory-worker", applied.message_id, Duration::from_secs(1));
        (asked.await == Asked::Applied(true)).then_some(())
    })
    .await;
    let consumer =
        js.get_stream(ORDERS_STREAM).await.unwrap().consumer_info("inventory-worker").await.unwrap();
    assert_eq!(
        (consumer.num_ack_pending, consumer.num_redelivered),
        (0, 2),
        "both given up on, to the broker"
    );

    let dlq = spawn_dlq_on(servers, &[("DLQ_SWEEP_INTERVAL", "200ms")]).await;
    wait_until("the applied order leaves the work queue", Duration::from_secs(15), || async {
        (!still_in(&js, ORDERS_STREAM, applied_sequence).await).then_some(())
    })
    .await;
    dlq.wait_for_rows(1).await;
    let rows: Vec<(i64, Option<Uuid>)> =
        sqlx::query_as("SELECT source_sequence, message_id FROM dead_letters")
            .fetch_all(&dlq.pool)
            .await
            .unwrap();
    assert_eq!(rows, [(dead_sequence as i64, Some(dead.message_id))], "only the order it did not apply");
    assert!(!still_in(&js, ORDERS_STREAM, dead_sequence).await);
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 1);
}

/// Row 11, a consumer that takes the sweep's question and never answers (a hung worker): its
/// dead messages are not captured meanwhile, and a round asks about one of them only (the next
/// round asks about the same one again), so a silent consumer costs one deadline per round, not
/// one per message. Once a process answers, they are all captured.
#[tokio::test]
async fn the_sweep_captures_nothing_while_the_consumer_does_not_answer_and_asks_again() {
    use contract::dead_letter::applied_query;
    let servers = Servers::start().await;
    let js = servers.nats.jetstream().await;
    let mut dead: Vec<Uuid> = given_up_on_with_advisories_lost(&js, 3)
        .await
        .iter()
        .map(|(message, _)| message.message_id)
        .collect();
    let question = applied_query(ORDERS_STREAM, "inventory-worker");
    let mut hung = js.client().queue_subscribe(question, "inventory-worker".to_owned()).await.unwrap();
    js.client().flush().await.unwrap();
    let pool = servers.migrate().await;

    let dlq = spawn_dlq_on(servers, &[("DLQ_SWEEP_INTERVAL", "200ms")]).await;
    let mut asked_about = Vec::new();
    for _ in 0..2 {
        let question = tokio::time::timeout(Duration::from_secs(15), hung.next()).await.unwrap().unwrap();
        asked_about.push(String::from_utf8(question.payload.to_vec()).unwrap());
    }
    assert_eq!(asked_about, [dead[0].to_string(), dead[0].to_string()], "one question per round");
    assert_eq!(dlq.rows().await, 0, "nothing is captured while its consumer does not answer");

    drop(hung);
    let _answering = answer_as_the_workers(&js, pool);
    dlq.wait_for_rows(3).await;
    let mut recorded: Vec<Uuid> =
        sqlx::query_scalar("SELECT message_id FROM dead_letters").fetch_all(&dlq.pool).await.unwrap();
    recorded.sort();
    dead.sort();
    assert_eq!(recorded, dead);
}

/// Row 13: a payload Postgres `jsonb` cannot hold (a NUL) is recorded exactly, not retried.
#[tokio::test]
async fn a_payload_with_a_nul_character_is_recorded_losslessly() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    let mut headers = HeaderMap::new();
    headers.insert(dead_letter::SOURCE_STREAM, ORDERS_STREAM);
    headers.insert(dead_letter::SOURCE_SEQUENCE, "5");
    headers.insert(dead_letter::REASON, "not JSON: \0 here");
    headers.insert("ce-source", "a\0b");
    let payload = br#"{"version": 1, "customer_id": "a\u0000b"}"#.to_vec();
    js.publish_with_headers(dead_letter::POISON_SUBJECT, headers, payload.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    dlq.wait_for_rows(1).await;

    let (status, page) = dlq.get("/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    let row = &page["items"][0];
    assert!(row["payload"].is_null(), "not as jsonb");
    // Text fields are descriptions: a NUL shows as U+FFFD (the exact bytes are the payload's).
    assert_eq!(row["reason"], "unprocessable message: not JSON: \u{FFFD} here");
    assert_eq!(row["headers"]["ce-source"], "a\u{FFFD}b");
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM dead_letters").fetch_one(&dlq.pool).await.unwrap();
    assert_eq!(stored, payload, "the exact bytes");
}

/// Row 13: review input with a NUL is a problem naming the field, not a 500.
#[tokio::test]
async fn review_input_with_a_nul_character_is_a_problem_naming_the_field() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;
    for (path, body, pointer) in [
        ("discard", json!({"reason": "a\u{0}b"}), "#/reason"),
        ("discard", json!({"reason": "ok", "by": "a\u{0}"}), "#/by"),
        ("replay", json!({"by": "\u{0}"}), "#/by"),
    ] {
        let (status, problem) = dlq.post(&format!("/dead-letters/{id}/{path}"), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {problem}");
        assert_eq!(problem["errors"][0]["pointer"], pointer);
    }
    let (_, row) = dlq.get(&format!("/dead-letters/{id}")).await;
    assert_eq!(row["status"], "pending");
}

/// Row 14: a last-error note lives only until its dead letter holds it.
#[tokio::test]
async fn a_last_error_note_is_deleted_once_its_dead_letter_holds_it_and_stale_notes_are_pruned() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    let sequence = publish_message(&js, &OutgoingMessage::event(&order(1), "order-api")).await;
    let note = |sequence: u64| {
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::SOURCE_STREAM, ORDERS_STREAM);
        headers.insert(dead_letter::SOURCE_SEQUENCE, sequence.to_string().as_str());
        headers.insert(dead_letter::CONSUMER, "inventory-worker");
        headers.insert(dead_letter::REASON, "boom");
        headers
    };
    for headers in [note(sequence), note(999_999)] {
        js.publish_with_headers(dead_letter::LAST_ERROR_SUBJECT, headers, Vec::new().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish_worker_advisory(&js, sequence, 5).await;
    dlq.wait_for_rows(1).await;
    dlq.wait_until_captured().await;

    let notes: Vec<i64> =
        sqlx::query_scalar("SELECT source_sequence FROM last_errors").fetch_all(&dlq.pool).await.unwrap();
    assert_eq!(notes, [999_999], "the claimed note is gone; the unclaimed one waits");
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM dead_letters").fetch_one(&dlq.pool).await.unwrap();
    assert_eq!(last_error.as_deref(), Some("boom"));

    sqlx::query("UPDATE last_errors SET noted_at = now() - interval '15 days'")
        .execute(&dlq.pool)
        .await
        .unwrap();
    let pruned =
        dlq_service::store::prune_last_errors(&dlq.pool, Duration::from_secs(14 * 24 * 3600)).await.unwrap();
    assert_eq!(pruned, 1);
}

/// Row 15: an order whose payload version this build cannot decode still names its order.
#[tokio::test]
async fn an_order_of_an_unknown_version_is_recorded_with_its_order_id() {
    let dlq = spawn_dlq().await;
    let js = dlq.nats.jetstream().await;
    let future = order(99);
    let sequence = publish_message(&js, &OutgoingMessage::event(&future, "order-api")).await;
    publish_worker_advisory(&js, sequence, 5).await;
    dlq.wait_for_rows(1).await;

    let order_id: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM dead_letters").fetch_one(&dlq.pool).await.unwrap();
    assert_eq!(order_id, Some(future.order_id));
    assert_eq!(dlq.outbox_count("order_events.dead_lettered").await, 1, "its status is told");
}

/// Row 15: every kind of dead letter shows on /metrics from start-up, `gone` included.
#[tokio::test]
async fn every_kind_of_dead_letter_is_registered_at_start_up() {
    use test_support::metrics::{scrape, value};
    let dlq = spawn_dlq().await;
    let metrics = scrape(&dlq.base_url).await;
    for kind in ["exhausted", "gone", "poison", "unrecognised"] {
        assert_eq!(value(&metrics, "dead_letters_captured_total", &[("kind", kind)]), Some(0.0), "{kind}");
    }
}

/// Row 15: while capture is held up on one message of a batch, the others are kept in progress
/// instead of being redelivered.
#[tokio::test]
async fn a_batch_held_up_in_capture_is_kept_in_progress() {
    let servers = Servers::start().await;
    let js = servers.nats.jetstream().await;
    for sequence in 1..=5 {
        let mut headers = HeaderMap::new();
        headers.insert(dead_letter::SOURCE_STREAM, ORDERS_STREAM);
        headers.insert(dead_letter::SOURCE_SEQUENCE, sequence.to_string().as_str());
        headers.insert(dead_letter::REASON, "unreadable");
        js.publish_with_headers(dead_letter::POISON_SUBJECT, headers, b"x".to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Hold every insert into dead_letters for a while.
    let pool = servers.migrate().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE dead_letters IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();

    // Capture waits on the lock longer than the replica below pulls (by default a lock wait
    // ends after 2 s, failing only that message).
    let dlq = spawn_dlq_on(servers, &[("DLQ_BACKOFF", "1s"), ("DATABASE_LOCK_TIMEOUT", "20s")]).await;
    let stream = js.get_stream(UNPROCESSED_STREAM).await.unwrap();
    wait_until("capture has pulled the batch", Duration::from_secs(10), || async {
        (stream.consumer_info("dlq-service").await.ok()?.num_ack_pending == 5).then_some(())
    })
    .await;
    // A second replica pulls for three ack waits: without keep-alive the batch's messages
    // would be redelivered to it after the first.
    let replica: PullConsumer = stream.get_consumer("dlq-service").await.unwrap();
    let mut pulled =
        replica.batch().max_messages(10).expires(Duration::from_secs(3)).messages().await.unwrap();
    let mut redelivered = 0;
    while let Some(message) = pulled.next().await {
        if message.is_ok() {
            redelivered += 1;
        }
    }
    assert_eq!(redelivered, 0, "the batch is kept in progress while capture is held up");
    lock.commit().await.unwrap();
    dlq.wait_for_rows(5).await;
}
