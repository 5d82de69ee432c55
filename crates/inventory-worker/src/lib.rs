//! inventory-worker: reserves stock for orders, once each, however often they are delivered.
//!
//! Every worker process pulls from the same durable consumer on `orders.new` (a work queue:
//! each order goes to one of them) and runs the shared idempotent consumer with the
//! [`Reservations`](reservation::Reservations) handler: per batch, one transaction records the
//! message IDs, reserves stock and writes the outcome events to the outbox; the messages are
//! acknowledged after the commit. The outbox relay publishes the outcomes to `order_events.*`.
//! Each process also answers the dead-letter sweep's "did you apply this message?"
//! ([`shared::messaging::consumer::applied`]).
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

use contract::{streams::ORDERS_STREAM, subjects::ORDERS_NEW};
use shared::{
    messaging::consumer::{IdempotentConsumer, applied::Answerer},
    service::{Runtime, Service},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The Postgres schema inventory-worker owns.
pub const SCHEMA: &str = contract::schemas::INVENTORY;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/inventory-worker");

/// inventory-worker, as the platform knows it.
pub static SERVICE: Service = Service { name: "inventory-worker", schema: SCHEMA, migrations: &MIGRATIONS };

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
    runtime: Runtime,
    state: AppState,
    consumer: IdempotentConsumer<reservation::Reservations>,
    /// Tells the dead-letter sweep whether this consumer applied a message still in the queue.
    answerer: Answerer,
}

impl Application {
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // Before anything is reached: setting stock is for operators only.
        config.operator_auth.ensure_configured()?;
        config.operator_auth.log_at_start_up("PUT /inventory/{sku}");
        let runtime =
            SERVICE.start(&config.service, (ORDERS_STREAM, &config.consumer.name), shutdown).await?;
        let handler = reservation::Reservations {
            failures: failure::FailureInjection { random_rate: config.failure_rate },
        };
        let consumer = runtime
            .idempotent_consumer(ORDERS_STREAM, ORDERS_NEW, &config.consumer, handler)
            .await?
            .with_outbox(runtime.outbox());
        let answerer = Answerer {
            nats: runtime.nats.clone(),
            pool: runtime.pool.clone(),
            stream: ORDERS_STREAM.to_owned(),
            consumer: config.consumer.name.clone(),
        };
        let state = AppState {
            pool: runtime.pool.clone(),
            nats: runtime.nats.clone(),
            operator_auth: config.operator_auth.clone(),
        };
        Ok(Self { runtime, state, consumer, answerer })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    /// Runs until `shutdown` is cancelled. On shutdown the worker stops pulling, finishes and
    /// acknowledges the batch in hand, lets the relay finish its round, and flushes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "inventory-worker listening");
        let Self { runtime, state, consumer, answerer } = self;
        // 25 s of grace: a batch in hand is committed and acknowledged, and its acks flushed.
        runtime
            .run(shutdown, stock::router(state), Duration::from_secs(25), |tasks| {
                tasks.spawn_with_shutdown("orders consumer", |stop| consumer.run(stop));
                tasks.spawn_with_shutdown("applied answers", |stop| answerer.run(stop));
            })
            .await
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
