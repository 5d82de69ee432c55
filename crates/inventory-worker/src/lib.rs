//! inventory-worker: reserves stock for orders, once each, however often they are delivered.
//!
//! Every worker process pulls from the same durable consumer on `orders.new` (a work queue:
//! each order goes to one of them) and runs the shared idempotent consumer with the
//! [`Reservations`](reservation::Reservations) handler: per batch, one transaction records the
//! message IDs, reserves stock and writes the outcome events to the outbox; the messages are
//! acknowledged after the commit. The outbox relay publishes the outcomes to `order_events.*`.
//!
//! # Layout
//! - [`config`]: environment variables.
//! - [`reservation`]: the reservation rules and the batch handler.
//! - [`failure`]: failure injection (`FAIL-`, `FLAKY-`, `INVENTORY_FAILURE_RATE`).
//! - [`stock`]: the HTTP API (stock levels, health).
//! - [`Application`]: wiring: build, then run until stopped.

pub mod config;
pub mod failure;
pub mod reservation;
pub mod stock;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use shared::{
    config::DatabaseConfig,
    consumer::IdempotentConsumer,
    db,
    messages::subjects::ORDERS_NEW,
    metrics::LagMonitor,
    outbox::OutboxRelay,
    shutdown::Tasks,
    topology::{self, ORDERS_STREAM},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The Postgres schema inventory-worker owns.
pub const SCHEMA: &str = "inventory";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/inventory-worker");

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Who may set stock.
    pub operator_auth: shared::http::OperatorAuth,
}

/// A built worker: connected, migrated, topology declared, listener bound.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: OutboxRelay,
    consumer: IdempotentConsumer<reservation::Reservations>,
    lag_monitor: LagMonitor,
}

/// Connects to Postgres and brings the `inventory` schema up to date.
pub async fn connect_database(config: &DatabaseConfig) -> Result<PgPool, db::DbError> {
    db::connect_and_migrate(config, "inventory-worker", SCHEMA, &MIGRATIONS).await
}

impl Application {
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // Before anything is reached: setting stock is for operators only.
        config.operator_auth.ensure_configured()?;
        config.operator_auth.log_at_start_up("PUT /inventory/{sku}");
        let pool = connect_database(&config.database).await?;
        let (client, jetstream) = shared::nats::connect(&config.nats, "inventory-worker", shutdown)
            .await
            .context("stopped before NATS was reachable")?;
        topology::ensure_streams(&jetstream, &config.nats).await?;
        let consumer =
            topology::ensure_consumer(&jetstream, ORDERS_STREAM, ORDERS_NEW, &config.consumer).await?;

        shared::metrics::install();
        let lag_monitor = LagMonitor::new(
            jetstream.clone(),
            ORDERS_STREAM,
            &config.consumer.name,
            config.lag_poll_interval,
        );
        let relay = OutboxRelay::new(pool.clone(), jetstream.clone(), config.relay.clone());
        let handler = reservation::Reservations {
            failures: failure::FailureInjection { random_rate: config.failure_rate },
        };
        let consumer =
            IdempotentConsumer::new(jetstream, consumer, pool.clone(), handler, config.consumer.clone())
                .with_outbox(relay.waker());
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR={}", config.http_addr))?;
        let state = AppState { pool, nats: client, operator_auth: config.operator_auth.clone() };
        Ok(Self { listener, state, relay, consumer, lag_monitor })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Runs until `shutdown` is cancelled. On shutdown the worker stops pulling, finishes and
    /// acknowledges the batch in hand, lets the relay finish its round, and flushes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "inventory-worker listening");
        let mut tasks = Tasks::new(shutdown);
        tasks.serve_http(self.listener, stock::router(self.state.clone()));
        tasks.spawn_with_shutdown("outbox relay", |stop| self.relay.run(stop));
        tasks.spawn_with_shutdown("orders consumer", |stop| self.consumer.run(stop));
        tasks.spawn_with_shutdown("lag monitor", |stop| self.lag_monitor.run(stop));
        let result = tasks.run_until_stopped(Duration::from_secs(25)).await;
        // The acks of the last batch may still sit in the client's buffer.
        shared::nats::flush_before_exit(&self.state.nats, Duration::from_secs(2)).await;
        result
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
