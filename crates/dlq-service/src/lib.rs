//! dlq-service: dead-lettered orders captured, kept for review, replayed or discarded.
//!
//! A message that exhausts its deliveries must never vanish. JetStream announces it with a
//! MAX_DELIVERIES advisory, which the `orders_unprocessed` stream keeps (advisories are dropped
//! when nobody listens). This service consumes that stream, records each dead message once in
//! the `dead_letters` table, tells order-api (`order_events.dead_lettered`), and serves a review
//! API to replay or discard it.
//!
//! # Layout
//! - [`config`]: environment variables.
//! - [`capture`]: advisories, poison copies and last errors → `dead_letters` rows.
//! - [`sweep`]: dead letters whose advisory was lost; pruning of last-error notes.
//! - [`store`]: the table: record, list, replay, discard.
//! - [`routes`]: the HTTP review API, for operators with a token.
//! - [`cli`]: the same review actions from the command line.
//! - [`Application`]: wiring: build, then run until stopped.

pub mod capture;
pub mod cli;
pub mod config;
pub mod routes;
pub mod store;
pub mod sweep;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use shared::{
    config::DatabaseConfig,
    db,
    metrics::LagMonitor,
    outbox::{OutboxRelay, OutboxWaker},
    puller::Puller,
    shutdown::Tasks,
    topology::{self, UNPROCESSED_STREAM},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The Postgres schema dlq-service owns.
pub const SCHEMA: &str = "dlq";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/dlq-service");

/// Connects to Postgres and brings the `dlq` schema up to date.
pub async fn connect_database(config: &DatabaseConfig) -> Result<PgPool, db::DbError> {
    db::connect_and_migrate(config, "dlq-service", SCHEMA, &MIGRATIONS).await
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub outbox: OutboxWaker,
    /// Who may call the review API.
    pub operator_auth: shared::http::OperatorAuth,
}

/// A built dlq-service: connected, migrated, topology declared, listener bound.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: OutboxRelay,
    lag_monitor: LagMonitor,
    capture: capture::Capture,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    config: Config,
}

impl Application {
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // Before anything is reached: the review API shows customers' payloads and replays them.
        config.operator_auth.ensure_configured()?;
        config.operator_auth.log_at_start_up("/dead-letters");
        let pool = connect_database(&config.database).await?;
        let (client, jetstream) = shared::nats::connect(&config.nats, "dlq-service", shutdown)
            .await
            .context("stopped before NATS was reachable")?;
        topology::ensure_streams(&jetstream, &config.nats).await?;
        let consumer = topology::ensure_consumer(&jetstream, UNPROCESSED_STREAM, "", &config.capture).await?;
        shared::metrics::install();
        store::register_metrics();
        let lag_monitor = LagMonitor::new(
            jetstream.clone(),
            UNPROCESSED_STREAM,
            &config.capture.name,
            config.lag_poll_interval,
        );
        let relay = OutboxRelay::new(pool.clone(), jetstream.clone(), config.relay.clone());
        let capture = capture::Capture { pool: pool.clone(), jetstream, outbox: relay.waker() };
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR={}", config.http_addr))?;
        let state = AppState {
            pool,
            nats: client,
            outbox: relay.waker(),
            operator_auth: config.operator_auth.clone(),
        };
        Ok(Self { listener, state, relay, lag_monitor, capture, consumer, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "dlq-service listening");
        let mut tasks = Tasks::new(shutdown);
        tasks.serve_http(self.listener, routes::router(self.state.clone()));
        tasks.spawn_with_shutdown("outbox relay", |stop| self.relay.run(stop));
        let ack_wait = self.config.capture.backoff[0];
        let puller = Puller::new(self.capture.jetstream.clone(), self.consumer, &self.config.capture);
        let (sweep, every, retention) =
            (self.capture.clone(), self.config.sweep_interval, self.config.last_error_retention);
        tasks.spawn_with_shutdown("sweep", move |stop| sweep::run(sweep, every, retention, stop));
        tasks.spawn_with_shutdown("capture", |stop| self.capture.run(puller, ack_wait, stop));
        tasks.spawn_with_shutdown("lag monitor", |stop| self.lag_monitor.run(stop));
        let (pool, every) = (self.state.pool.clone(), self.config.lag_poll_interval);
        tasks.spawn_with_shutdown("review backlog", move |stop| store::watch_pending(pool, every, stop));
        let result = tasks.run_until_stopped(Duration::from_secs(15)).await;
        shared::nats::flush_before_exit(&self.state.nats, Duration::from_secs(2)).await;
        result
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
