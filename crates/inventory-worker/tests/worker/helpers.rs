//! `spawn_worker()`: a worker of a test's own, and helpers to publish orders to it.

use std::time::Duration;

use async_nats::jetstream;
use contract::{
    events::{OrderItem, OrderPlaced},
    streams::ORDERS_STREAM,
    subjects::ORDERS_NEW,
};
use inventory_worker::{Application, Config, reservation::Reservations};
use shared::{
    config::Env,
    messaging::{consumer::IdempotentConsumer, envelope::OutgoingMessage, topology},
};
use sqlx::PgPool;
use test_support::{NatsServer, TestDatabase, http::InventoryApi, wait_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestWorker {
    pub inventory: InventoryApi,
    pub shutdown: CancellationToken,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings tests use: quick retries (3 deliveries, 100 ms then 200 ms apart).
pub const FAST_RETRIES: [(&str, &str); 2] = [("WORKER_MAX_DELIVER", "3"), ("WORKER_BACKOFF", "100ms,200ms")];

pub fn env<'a>(nats_url: &'a str, db_url: &'a str, overrides: &[(&'a str, &'a str)]) -> Env {
    let mut env = vec![
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("NATS_URL", nats_url),
        ("DATABASE_URL", db_url),
        ("OUTBOX_POLL_INTERVAL", "200ms"),
        ("OUTBOX_RETRY_MAX", "500ms"),
        test_support::http::OPERATOR_TOKENS,
    ];
    env.extend_from_slice(&FAST_RETRIES);
    env.extend_from_slice(overrides);
    Env::from_pairs(env)
}

pub async fn spawn_worker(nats: &NatsServer, db: &TestDatabase, overrides: &[(&str, &str)]) -> TestWorker {
    test_support::init_logging_with(shared::telemetry::init_for_tests);
    let (nats_url, db_url) = (nats.url(), db.url());
    let config = Config::from_env(&env(&nats_url, &db_url, overrides)).expect("test configuration");
    let shutdown = CancellationToken::new();
    let app = Application::build(config, &shutdown).await.expect("build inventory-worker");
    let inventory = InventoryApi::new(format!("http://{}", app.local_addr()));
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestWorker { inventory, shutdown }
}

/// A worker with default settings, on a nats-server and a database of its own: how most tests
/// start.
pub async fn start_worker() -> (NatsServer, TestDatabase, TestWorker) {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let worker = spawn_worker(&nats, &db, &[]).await;
    (nats, db, worker)
}

pub fn order(items: &[(&str, u32)]) -> OrderPlaced {
    OrderPlaced::new("c-test", items.iter().map(|(sku, quantity)| OrderItem::new(sku, *quantity)).collect())
}

/// Publishes a message to JetStream as the outbox relay would, and returns its stream sequence.
pub async fn publish(js: &jetstream::Context, message: &OutgoingMessage) -> u64 {
    js.publish_with_headers(message.subject.clone(), message.nats_headers(), message.payload.clone().into())
        .await
        .expect("publish")
        .await
        .expect("PubAck")
        .sequence
}

pub async fn publish_order(js: &jetstream::Context, order: &OrderPlaced) -> OutgoingMessage {
    let message = OutgoingMessage::event(order, "test");
    publish(js, &message).await;
    message
}

/// The shared consumer's state as JetStream reports it: (pending, ack pending, redelivered).
pub async fn consumer_state(js: &jetstream::Context) -> (u64, usize, usize) {
    let stream = js.get_stream("orders_stream").await.expect("orders_stream");
    let info = stream.consumer_info("inventory-worker").await.expect("consumer info");
    (info.num_pending, info.num_ack_pending, info.num_redelivered)
}

pub async fn processed_count(pool: &PgPool, message_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .expect("count processed messages")
}

pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// The next message on `subscriber`, which must come within [`EVENT_TIMEOUT`] (`what` names it).
pub async fn next_message(subscriber: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    let next = tokio::time::timeout(EVENT_TIMEOUT, futures::StreamExt::next(subscriber)).await;
    next.unwrap_or_else(|_| panic!("{what} within {EVENT_TIMEOUT:?}")).expect("subscription open")
}

/// An idempotent consumer of the worker's durable consumer, built as the worker builds it but
/// not running: a test drives it one batch at a time, or runs it itself.
pub struct OwnConsumer {
    pub js: jetstream::Context,
    pub pool: PgPool,
    pub pull: jetstream::consumer::PullConsumer,
    pub consumer: IdempotentConsumer<Reservations>,
}

pub async fn own_consumer(nats: &NatsServer, db: &TestDatabase) -> OwnConsumer {
    let (nats_url, db_url) = (nats.url(), db.url());
    let config = Config::from_env(&env(&nats_url, &db_url, &[])).expect("test configuration");
    let js = nats.jetstream().await;
    let pool = inventory_worker::SERVICE.connect_database(&config.service.database).await.expect("database");
    topology::ensure_streams(&js, &config.service.nats).await.expect("streams");
    let pull =
        topology::ensure_consumer(&js, ORDERS_STREAM, ORDERS_NEW, &config.consumer).await.expect("consumer");
    let consumer = IdempotentConsumer::new(
        js.clone(),
        pull.clone(),
        pool.clone(),
        Reservations::default(),
        config.consumer,
    );
    OwnConsumer { js, pool, pull, consumer }
}

/// Every MAX_DELIVERIES advisory from now on: a message that exhausted its deliveries.
pub async fn max_deliveries_advisories(nats: &NatsServer) -> async_nats::Subscriber {
    nats.client().await.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>").await.expect("subscribe")
}

/// Asserts that no message exhausts its deliveries in the next half second.
pub async fn assert_no_dead_letter(advisories: &mut async_nats::Subscriber) {
    let next = tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(advisories)).await;
    assert!(next.is_err(), "no message may exhaust its deliveries: {next:?}");
}

/// Waits until `sku` has `units` reserved, as the worker's stock API shows it.
pub async fn wait_for_reserved(inventory: &InventoryApi, sku: &str, units: i64, timeout: Duration) {
    wait_until(&format!("{units} units of {sku} are reserved"), timeout, || async {
        (inventory.get(sku).await.reserved == units).then_some(())
    })
    .await;
}
