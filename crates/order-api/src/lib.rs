//! order-api: accepts orders over HTTP and never loses one.
//!
//! `POST /orders` validates the order, then stores it **and** its `orders.new` message in one
//! Postgres transaction (the transactional outbox), and answers `202 Accepted`. The outbox
//! relay publishes the message to JetStream afterwards, so an order accepted while NATS is down
//! is published once NATS is back. The order's status is a projection of the outcome events the
//! workers publish on `order_events.>`.
//!
//! # Layout
//! - [`config`]: environment variables.
//! - [`orders`]: request validation and the order view.
//! - [`store`]: the SQL, one function per unit of work.
//! - [`routes`]: the HTTP API.
//! - [`projection`]: outcome events → order status.
//! - [`Application`]: wiring: build (connect, migrate, declare topology, bind), then run.

pub mod config;
pub mod orders;
pub mod projection;
pub mod routes;
pub mod store;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use shared::{
    consumer::IdempotentConsumer,
    db,
    metrics::{ConsumerLag, LagMonitor},
    outbox::{OutboxBacklog, OutboxRelay, OutboxWaker},
    shutdown::Tasks,
    topology::{self, EVENTS_STREAM, EVENTS_SUBJECTS, ORDERS_STREAM},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The Postgres schema order-api owns.
pub const SCHEMA: &str = "order_api";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order-api");

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub outbox: OutboxWaker,
    pub outbox_backlog: OutboxBacklog,
    pub max_outbox_backlog: u64,
    /// The workers' lag, as JetStream last reported it (unknown once it could not be refreshed
    /// for a few polls: see [`ConsumerLag`]).
    pub consumer_lag: ConsumerLag,
    pub max_consumer_lag: u64,
    /// `REQUEST_TIMEOUT`.
    pub request_timeout: Duration,
}

/// A built order-api: connected, migrated, topology declared, listener bound.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: OutboxRelay,
    projection: IdempotentConsumer<projection::StatusProjection>,
    lag_monitor: LagMonitor,
}

impl Application {
    /// Connects to Postgres (creating and migrating the schema) and NATS (declaring streams and
    /// the projection's consumer), and binds the HTTP listener. Use port 0 for a free port.
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&config.database, "order-api", SCHEMA, &MIGRATIONS).await?;
        let (client, jetstream) = shared::nats::connect(&config.nats, "order-api", shutdown)
            .await
            .context("stopped before NATS was reachable")?;
        topology::ensure_streams(&jetstream, &config.nats).await?;
        let consumer =
            topology::ensure_consumer(&jetstream, EVENTS_STREAM, EVENTS_SUBJECTS, &config.projection).await?;

        shared::metrics::install();
        routes::register_metrics();
        let lag_monitor = LagMonitor::new(
            jetstream.clone(),
            ORDERS_STREAM,
            &config.worker_consumer,
            config.lag_poll_interval,
        );
        let relay = OutboxRelay::new(pool.clone(), jetstream.clone(), config.relay.clone());
        let projection = IdempotentConsumer::new(
            jetstream,
            consumer,
            pool.clone(),
            projection::StatusProjection,
            config.projection.clone(),
        );
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR={}", config.http_addr))?;
        let state = AppState {
            pool,
            nats: client,
            outbox: relay.waker(),
            outbox_backlog: relay.backlog(),
            max_outbox_backlog: config.max_outbox_backlog,
            consumer_lag: lag_monitor.lag(),
            max_consumer_lag: config.max_consumer_lag,
            request_timeout: config.request_timeout,
        };
        Ok(Self { listener, state, relay, projection, lag_monitor })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves HTTP and runs the relay and the projection until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "order-api listening");
        let mut tasks = Tasks::new(shutdown);
        tasks.serve_http(self.listener, routes::router(self.state.clone()));
        tasks.spawn_with_shutdown("outbox relay", |stop| self.relay.run(stop));
        tasks.spawn_with_shutdown("status projection", |stop| self.projection.run(stop));
        tasks.spawn_with_shutdown("lag monitor", |stop| self.lag_monitor.run(stop));
        let result = tasks.run_until_stopped(Duration::from_secs(15)).await;
        // Acks and publishes still buffered in the client go out before the process exits.
        shared::nats::flush_before_exit(&self.state.nats, Duration::from_secs(2)).await;
        result
    }
}

/// Builds and runs order-api until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
