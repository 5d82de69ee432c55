//! `spawn_dlq()`: a dlq-service of a test's own.

use std::time::Duration;

use contract::streams;
use dlq_service::{Application, Config, store};
use shared::{config::Env, messaging::topology};
use sqlx::PgPool;
use test_support::{
    NatsServer, TestDatabase,
    http::{AsOperator, OPERATOR_TOKEN},
    wait_until,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestDlq {
    pub base_url: String,
    /// The database's URL, as the service (and the command line) is given it.
    pub database_url: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub nats: NatsServer,
    pub shutdown: CancellationToken,
    _db: TestDatabase,
}

impl Drop for TestDlq {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_dlq() -> TestDlq {
    spawn_dlq_on(Servers::start().await, &[]).await
}

/// A nats-server and a database, before any dlq-service: for tests that prepare a fault first.
pub struct Servers {
    pub nats: NatsServer,
    pub db: TestDatabase,
}

impl Servers {
    /// Starts nats-server and declares the streams (as any service does at start-up).
    pub async fn start() -> Self {
        test_support::init_logging_with(shared::telemetry::init_for_tests);
        let servers = Self { nats: NatsServer::start().await, db: TestDatabase::new() };
        let config = servers.config(&[]);
        topology::ensure_streams(&servers.nats.jetstream().await, &config.service.nats).await.unwrap();
        servers
    }

    pub fn config(&self, extra_env: &[(&str, &str)]) -> Config {
        let (nats_url, db_url) = (self.nats.url(), self.db.url());
        let mut env: Vec<(&str, &str)> = vec![
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("NATS_URL", nats_url.as_str()),
            ("DATABASE_URL", db_url.as_str()),
            ("OUTBOX_POLL_INTERVAL", "200ms"),
            ("DLQ_BACKOFF", "200ms"),
            test_support::http::OPERATOR_TOKENS,
        ];
        env.extend_from_slice(extra_env);
        Config::from_env(&Env::from_pairs(env)).unwrap()
    }

    /// Creates and migrates the database, as dlq-service would at start-up.
    pub async fn migrate(&self) -> PgPool {
        dlq_service::SERVICE.connect_database(&self.config(&[]).service.database).await.unwrap();
        self.db.pool(dlq_service::SCHEMA).await
    }
}

/// A dlq-service on servers prepared by the test, with extra environment variables (later ones
/// win).
pub async fn spawn_dlq_on(servers: Servers, extra_env: &[(&str, &str)]) -> TestDlq {
    let config = servers.config(extra_env);
    let shutdown = CancellationToken::new();
    let app = Application::build(config, &shutdown).await.unwrap();
    let base_url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let pool = servers.db.pool(dlq_service::SCHEMA).await;
    let database_url = servers.db.url();
    let Servers { nats, db } = servers;
    TestDlq { base_url, database_url, http: reqwest::Client::new(), pool, nats, shutdown, _db: db }
}

impl TestDlq {
    pub async fn rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&self.pool).await.unwrap()
    }

    /// How many messages on `subject` the service has written to its outbox.
    pub async fn outbox_count(&self, subject: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = $1")
            .bind(subject)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn wait_for_rows(&self, n: i64) {
        wait_until(&format!("{n} dead letters are recorded"), Duration::from_secs(15), || async {
            (self.rows().await >= n).then_some(())
        })
        .await;
    }

    /// Waits until the capture consumer has acknowledged everything in `orders_unprocessed`.
    pub async fn wait_until_captured(&self) {
        let js = self.nats.jetstream().await;
        wait_until("capture has handled every message", Duration::from_secs(15), || async {
            let stream = js.get_stream(streams::UNPROCESSED_STREAM).await.ok()?;
            let info = stream.consumer_info("dlq-service").await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await;
    }

    /// `GET path` as the test operator.
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let response =
            self.http.get(format!("{}{path}", self.base_url)).with_operator_token().send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// `POST path` as the test operator, with an optional JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.post_with_token(path, Some(OPERATOR_TOKEN), body).await
    }

    /// `POST path` with `token` (or no `Authorization` at all), and an optional JSON body.
    pub async fn post_with_token(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.http.post(format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// Records a dead letter directly, as capture would, and returns its ID.
    pub async fn seed(&self, letter: store::NewDeadLetter) -> Uuid {
        let mut tx = self.pool.begin().await.unwrap();
        let id = store::record(&mut tx, &letter).await.unwrap().expect("a new row");
        tx.commit().await.unwrap();
        id
    }
}

/// A dead letter for an order placed on `orders.new`.
pub fn order_letter(sequence: i64) -> store::NewDeadLetter {
    use contract::events::{OrderItem, OrderPlaced};
    let order = OrderPlaced::new("c-1", vec![OrderItem::new("WIDGET-1", 1)]);
    let message = shared::messaging::envelope::OutgoingMessage::event(&order, "order-api");
    store::NewDeadLetter {
        kind: "exhausted",
        source_stream: "orders_stream".into(),
        source_sequence: sequence,
        subject: Some("orders.new".into()),
        message_id: Some(message.message_id),
        order_id: Some(order.order_id),
        payload: Some(message.payload),
        headers: message.headers,
        consumer: Some("inventory-worker".into()),
        deliveries: Some(5),
        reason: "delivery limit reached: 5 attempts failed".into(),
        failed_at: chrono::Utc::now(),
        ..Default::default()
    }
}
