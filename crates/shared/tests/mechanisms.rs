//! The shared mechanisms against a real nats-server and Postgres: the outbox relay, the
//! topology declaration and concurrent migrations.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::AckPolicy,
    stream::{DiscardPolicy, RetentionPolicy, StorageType},
};
use contract::{
    events::{OrderItem, OrderPlaced},
    streams,
};
use futures::StreamExt;
use shared::{
    config::Env,
    db::{self, DatabaseConfig},
    messaging::{
        consumer::ConsumerSettings,
        envelope::OutgoingMessage,
        outbox::{self, OutboxRelay, RelaySettings},
        topology,
    },
    nats::NatsConfig,
};
use sqlx::{PgPool, migrate::Migrator};
use test_support::{NatsCluster, NatsServer, TestDatabase};

fn database_config(db: &TestDatabase) -> DatabaseConfig {
    DatabaseConfig::from_env(&Env::from_pairs([("DATABASE_URL", db.url().as_str())])).unwrap()
}

/// A schema with only the shared tables, as any service has.
async fn messaging_schema(db: &TestDatabase) -> PgPool {
    db::connect_and_migrate(
        &database_config(db),
        "mechanisms-test",
        "relay_test",
        &Migrator::with_migrations(Vec::new()),
    )
    .await
    .unwrap()
}

fn order_message() -> OutgoingMessage {
    OutgoingMessage::event(&OrderPlaced::new("c", vec![OrderItem::new("A", 1)]), "test")
}

async fn stream_len(nats: &NatsServer) -> u64 {
    let js = nats.jetstream().await;
    js.get_stream(streams::ORDERS_STREAM).await.unwrap().get_info().await.unwrap().state.messages
}

#[tokio::test]
async fn only_committed_outbox_rows_are_published_with_their_headers() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let pool = messaging_schema(&db).await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();

    let committed = order_message();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, std::slice::from_ref(&committed)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &[order_message()]).await.unwrap();
    tx.rollback().await.unwrap();

    let relay =
        OutboxRelay::new(pool.clone(), js.clone(), RelaySettings::from_env(&Env::from_pairs([])).unwrap());
    assert_eq!(relay.relay_batch().await.unwrap(), 1);
    assert_eq!(relay.relay_batch().await.unwrap(), 0, "nothing left to send");

    let stream = js.get_stream(streams::ORDERS_STREAM).await.unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.payload.as_ref(), committed.payload.as_slice());
    assert_eq!(stored.headers.get("ce-id").unwrap().as_str(), committed.message_id.to_string());
    assert_eq!(stored.headers.get("Nats-Msg-Id").unwrap().as_str(), committed.dedupe_id);
    assert_eq!(stream_len(&nats).await, 1);
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
}

#[tokio::test]
async fn two_relays_sharing_one_outbox_claim_every_row_exactly_once() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let pool = messaging_schema(&db).await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();
    for _ in 0..10 {
        let batch: Vec<_> = (0..100).map(|_| order_message()).collect();
        let mut tx = pool.begin().await.unwrap();
        outbox::enqueue(&mut tx, &batch).await.unwrap();
        tx.commit().await.unwrap();
    }

    let settings = RelaySettings::from_env(&Env::from_pairs([("OUTBOX_BATCH_SIZE", "50")])).unwrap();
    let drain = |relay: OutboxRelay| async move {
        let mut claimed = 0;
        loop {
            match relay.relay_batch().await.unwrap() {
                0 => return claimed,
                n => claimed += n,
            }
        }
    };
    let (a, b) = tokio::join!(
        drain(OutboxRelay::new(pool.clone(), js.clone(), settings.clone())),
        drain(OutboxRelay::new(pool.clone(), js.clone(), settings.clone())),
    );

    // SKIP LOCKED: each row was claimed by one relay, never by both.
    assert_eq!(a + b, 1000, "claimed {a} + {b}");
    assert!(a > 0 && b > 0, "both relays worked: {a} and {b}");
    assert_eq!(stream_len(&nats).await, 1000);
}

/// The topology as docs/concepts.md ("From the article to this repository") and the README
/// describe it.
#[tokio::test]
async fn the_declared_topology_is_the_documented_one_and_declaring_it_again_is_harmless() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let nats_config = NatsConfig::from_env(&Env::from_pairs([])).unwrap();
    let consumer = ConsumerSettings::from_env(&Env::from_pairs([]), "WORKER", "inventory-worker").unwrap();

    for _ in 0..2 {
        topology::ensure_streams(&js, &nats_config).await.unwrap();
        topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &consumer).await.unwrap();
    }

    let orders = js.get_stream(streams::ORDERS_STREAM).await.unwrap().get_info().await.unwrap().config;
    assert_eq!(orders.subjects, ["orders.*"]);
    assert_eq!(orders.retention, RetentionPolicy::WorkQueue);
    assert_eq!(orders.storage, StorageType::File);
    assert_eq!(orders.discard, DiscardPolicy::New);
    assert_eq!(orders.max_bytes, 256 << 20);
    assert_eq!(orders.max_message_size, 1 << 20);
    assert_eq!(orders.duplicate_window, Duration::from_secs(120));

    let events = js.get_stream(streams::EVENTS_STREAM).await.unwrap().get_info().await.unwrap().config;
    assert_eq!(events.subjects, ["order_events.>"]);
    assert_eq!(events.retention, RetentionPolicy::Limits);
    assert_eq!(events.max_age, Duration::from_secs(7 * 24 * 3600));

    let stream = js.get_stream(streams::ORDERS_STREAM).await.unwrap();
    let info = stream.consumer_info("inventory-worker").await.unwrap();
    assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
    assert_eq!(info.config.max_deliver, 5);
    assert_eq!(info.config.backoff, [1, 2, 4, 8].map(Duration::from_secs));
    assert_eq!(info.config.filter_subject, "orders.new");
}

/// Queue against pub/sub, as JetStream enforces it: on the work queue `orders_stream` a second
/// consumer of `orders.new` is refused (each order is processed by one consumer, which workers
/// share); on `order_events` any number of consumers each read every event.
#[tokio::test]
async fn a_work_queue_takes_one_consumer_per_subject_and_a_pub_sub_stream_any_number() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();
    let settings = |name: &str| ConsumerSettings::from_env(&Env::from_pairs([]), "WORKER", name).unwrap();

    topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &settings("inventory-worker"))
        .await
        .unwrap();
    let second =
        topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &settings("my-worker")).await;
    let refused = second.expect_err("a second consumer of orders.new on the work queue was accepted");
    let cause = std::error::Error::source(&refused).map(ToString::to_string).unwrap_or_default();
    assert!(cause.contains("not unique on workqueue stream"), "{cause}");

    let mut readers = Vec::new();
    for name in ["order-api-projection", "my-reader"] {
        readers.push(
            topology::ensure_consumer(&js, streams::EVENTS_STREAM, "order_events.>", &settings(name))
                .await
                .unwrap(),
        );
    }
    js.publish("order_events.reserved", "event".into()).await.unwrap().await.unwrap();
    for reader in &readers {
        let mut messages =
            reader.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
        let message = messages.next().await.expect("the event").unwrap();
        assert_eq!(message.payload, "event");
    }
}

#[tokio::test]
async fn a_changed_limit_is_applied_to_the_existing_stream() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();

    let bigger = NatsConfig::from_env(&Env::from_pairs([("ORDERS_STREAM_MAX_BYTES", "512MiB")])).unwrap();
    topology::ensure_streams(&js, &bigger).await.unwrap();

    let config = js.get_stream(streams::ORDERS_STREAM).await.unwrap().get_info().await.unwrap().config;
    assert_eq!(config.max_bytes, 512 << 20);
}

#[tokio::test]
async fn more_replicas_than_servers_are_refused_with_the_reason() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let three = NatsConfig::from_env(&Env::from_pairs([("STREAM_REPLICAS", "3")])).unwrap();
    let err = topology::ensure_streams(&js, &three).await.unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("orders_stream with 3 replica(s)"), "{text}");
    assert!(text.contains("STREAM_REPLICAS=3: it needs a NATS cluster with at least 3"), "{text}");
    assert!(text.contains("replicas"), "the server's own reason: {text}");
}

#[tokio::test]
async fn on_a_cluster_streams_declared_with_one_replica_are_raised_to_three_with_their_consumers() {
    let cluster = NatsCluster::start().await;
    let js = cluster.jetstream().await;
    let replicas = |n: &str| NatsConfig::from_env(&Env::from_pairs([("STREAM_REPLICAS", n)])).unwrap();
    topology::ensure_streams(&js, &replicas("1")).await.unwrap();
    let settings = ConsumerSettings::from_env(&Env::from_pairs([]), "WORKER", "inventory-worker").unwrap();
    topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &settings).await.unwrap();

    topology::ensure_streams(&js, &replicas("3")).await.unwrap();
    for name in [streams::ORDERS_STREAM, streams::EVENTS_STREAM, streams::UNPROCESSED_STREAM] {
        let info = js.get_stream(name).await.unwrap().get_info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    // The consumer, its replica count left at 0 ("as the stream"), follows its stream.
    test_support::wait_until("the consumer has three replicas", Duration::from_secs(20), || async {
        let stream = js.get_stream(streams::ORDERS_STREAM).await.ok()?;
        let info = stream.consumer_info("inventory-worker").await.ok()?;
        (info.cluster.as_ref()?.replicas.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_consumer_already_as_wanted_is_left_alone_and_a_changed_one_is_updated() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();
    let settings = |env: &[(&str, &str)]| {
        ConsumerSettings::from_env(&Env::from_pairs(env.iter().copied()), "WORKER", "inventory-worker")
            .unwrap()
    };
    let created = topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &settings(&[]))
        .await
        .unwrap()
        .cached_info()
        .created;

    // Every JetStream API request this client sends, in the order it sends them (one
    // connection: the server keeps that order).
    let client = js.client();
    let mut requests = client.subscribe("$JS.API.CONSUMER.>").await.unwrap();
    let again =
        topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &settings(&[])).await.unwrap();
    assert_eq!(again.cached_info().created, created, "the same consumer");
    client.publish("$JS.API.CONSUMER.test-sentinel", "".into()).await.unwrap();
    let mut sent = Vec::new();
    while let Some(request) = tokio::time::timeout(Duration::from_secs(5), requests.next()).await.unwrap() {
        if request.subject.as_str() == "$JS.API.CONSUMER.test-sentinel" {
            break;
        }
        sent.push(request.subject.to_string());
    }
    assert!(
        !sent.is_empty() && sent.iter().all(|s| !s.contains("CREATE")),
        "an existing consumer as wanted is only read, never written: {sent:?}"
    );

    let changed = settings(&[("WORKER_MAX_DELIVER", "7")]);
    topology::ensure_consumer(&js, streams::ORDERS_STREAM, "orders.new", &changed).await.unwrap();
    let info =
        js.get_stream(streams::ORDERS_STREAM).await.unwrap().consumer_info("inventory-worker").await.unwrap();
    assert_eq!(info.config.max_deliver, 7);
}

#[tokio::test]
async fn services_starting_together_create_the_database_and_migrate_their_schemas_safely() {
    let db = TestDatabase::new();
    let config = database_config(&db);
    let empty = Migrator::with_migrations(Vec::new());

    // Six starts at once, two per schema, on a database that does not exist yet.
    let starts = ["a", "b", "c", "a", "b", "c"]
        .map(|schema| db::connect_and_migrate(&config, "mechanisms-test", schema, &empty));
    let pools = futures::future::join_all(starts).await;

    for pool in pools {
        let pool = pool.unwrap();
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name IN ('outbox', 'processed_messages')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(tables, 2);
    }
}

/// Commits these messages to the outbox, in one transaction.
async fn commit_to_outbox(pool: &PgPool, messages: &[OutgoingMessage]) {
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

/// A relay running in the background with these settings, until the token is cancelled.
fn spawn_relay(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    env: &[(&str, &str)],
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = RelaySettings::from_env(&Env::from_pairs(env.iter().copied())).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(pool.clone(), js.clone(), settings).run(shutdown.clone()));
    (shutdown, relay)
}

/// A message the broker refuses for good (no stream for its subject; larger than the stream's
/// `max_message_size`) is quarantined, counted and logged, and the rows behind it keep flowing at
/// full speed instead of one batch per retry pause.
#[tokio::test]
async fn a_row_the_broker_refuses_for_good_is_quarantined_and_the_rows_behind_it_keep_flowing() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let pool = messaging_schema(&db).await;
    let js = nats.jetstream().await;
    let small = NatsConfig::from_env(&Env::from_pairs([("ORDERS_STREAM_MAX_MSG_SIZE", "4KiB")])).unwrap();
    topology::ensure_streams(&js, &small).await.unwrap();

    let mut nowhere = order_message();
    nowhere.subject = "nowhere.at.all".into();
    let mut too_large = order_message();
    too_large.payload = vec![b' '; 8 << 10];
    let rows = [nowhere.clone(), too_large.clone()].into_iter().chain((0..3000).map(|_| order_message()));
    commit_to_outbox(&pool, &rows.collect::<Vec<_>>()).await;

    let handle = shared::metrics::install();
    let (shutdown, relay) = spawn_relay(&pool, &js, &[("OUTBOX_QUARANTINE_AFTER", "0s")]);

    // Before: about one batch of 256 per retry pause (up to 5 s): a minute for 3000 rows.
    test_support::wait_until("every good row is in the stream", Duration::from_secs(15), || async {
        (stream_len(&nats).await == 3000).then_some(())
    })
    .await;
    test_support::wait_until("both bad rows are quarantined", Duration::from_secs(10), || async {
        let quarantined: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
            "SELECT message_id, last_error FROM outbox WHERE quarantined_at IS NOT NULL ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (quarantined.len() == 2).then_some(quarantined)
    })
    .await
    .into_iter()
    .zip([&nowhere, &too_large])
    .for_each(|((id, error), message)| {
        assert_eq!(id, message.message_id);
        assert!(error.is_some_and(|e| !e.is_empty()));
    });
    test_support::wait_until("the quarantine shows in /metrics", Duration::from_secs(10), || async {
        let text = handle.render();
        text.lines().any(|line| line == "outbox_quarantined_messages 2").then_some(())
    })
    .await;
    shutdown.cancel();
    relay.await.unwrap();
}

/// "No stream" can also be passing (an operator re-creating a stream): before
/// `OUTBOX_QUARANTINE_AFTER`, a refused row is only set aside and tried again now and then, and
/// it is sent once a stream takes its subject.
#[tokio::test]
async fn a_refused_row_is_tried_again_and_sent_once_a_stream_takes_its_subject() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let pool = messaging_schema(&db).await;
    let js = nats.jetstream().await;
    topology::ensure_streams(&js, &NatsConfig::from_env(&Env::from_pairs([])).unwrap()).await.unwrap();

    let mut early = order_message();
    early.subject = "late.arrival".into();
    let rows = std::iter::once(early.clone()).chain((0..100).map(|_| order_message()));
    commit_to_outbox(&pool, &rows.collect::<Vec<_>>()).await;

    let (shutdown, relay) =
        spawn_relay(&pool, &js, &[("OUTBOX_QUARANTINE_AFTER", "1h"), ("OUTBOX_RETRY_MAX", "200ms")]);
    test_support::wait_until("the good rows are sent", Duration::from_secs(10), || async {
        (stream_len(&nats).await == 100).then_some(())
    })
    .await;
    // The refusal is written once the relay has the answers to its whole batch, which may be
    // after the good rows are in the stream.
    let quarantined = test_support::wait_until("the refusal is recorded", Duration::from_secs(10), || async {
        let (error, quarantined): (Option<String>, bool) = sqlx::query_as(
            "SELECT last_error, quarantined_at IS NOT NULL FROM outbox WHERE message_id = $1 AND sent_at IS NULL",
        )
        .bind(early.message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        error.map(|_| quarantined)
    })
    .await;
    assert!(!quarantined, "not before OUTBOX_QUARANTINE_AFTER");

    js.create_stream(async_nats::jetstream::stream::Config {
        name: "late".into(),
        subjects: vec!["late.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    test_support::wait_until("the row is sent once a stream takes it", Duration::from_secs(10), || async {
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        (unsent == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    relay.await.unwrap();
}
