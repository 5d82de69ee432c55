//! `spawn_app()`: an order-api of a test's own (its own nats-server, its own database, a free port).

use order_api::{Application, Config};
use shared::config::Env;
use sqlx::PgPool;
use test_support::{NatsServer, TestDatabase, http::OrderApi};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub api: OrderApi,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The test database (as the superuser).
    pub database_url: String,
    pub nats: NatsServer,
    /// A pool on the test database, in order-api's schema.
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    _db: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// An app with some environment variables overridden.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    test_support::init_logging_with(shared::telemetry::init_for_tests);
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let (nats_url, db_url) = (nats.url(), db.url());
    let mut env = vec![
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("NATS_URL", nats_url.as_str()),
        ("DATABASE_URL", db_url.as_str()),
        ("OUTBOX_POLL_INTERVAL", "200ms"),
        ("OUTBOX_RETRY_MAX", "500ms"),
        ("PROJECTION_BACKOFF", "200ms,400ms"),
    ];
    env.extend_from_slice(overrides);
    let config = Config::from_env(&Env::from_pairs(env)).expect("test configuration");

    let shutdown = CancellationToken::new();
    let app = Application::build(config, &shutdown).await.expect("build order-api");
    let base_url = format!("http://{}", app.local_addr());
    let api = OrderApi::new(base_url.clone());
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let pool = db.pool(order_api::SCHEMA).await;
    TestApp { api, base_url, database_url: db_url, nats, pool, shutdown, _db: db }
}

impl TestApp {
    pub async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&self.pool).await.unwrap()
    }

    pub async fn unsent_outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until a transaction of the service waits for a lock on `table` (of order-api's
    /// schema) that a test holds.
    pub async fn wait_until_someone_waits_for(&self, table: &str) {
        let query = format!(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'order_api.{table}'::regclass"
        );
        test_support::wait_until(
            "a transaction waits for the lock",
            std::time::Duration::from_secs(10),
            || async {
                let waiting: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone()))
                    .fetch_one(&self.pool)
                    .await
                    .ok()?;
                (waiting > 0).then_some(())
            },
        )
        .await;
    }

    pub async fn orders_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&self.pool).await.unwrap()
    }

    /// How many messages `orders_stream` holds.
    pub async fn orders_stream_len(&self) -> u64 {
        let js = self.nats.jetstream().await;
        let mut stream = js.get_stream("orders_stream").await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}
