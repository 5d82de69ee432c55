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
//! - [`console`]: the same review in a browser, under `/console/` (sign-in, HTML pages).
//! - [`review`]: replay and discard, the one path both of them take.
//! - [`cli`]: the same review actions from the command line.
//! - [`Application`]: wiring: build, then run until stopped.

pub mod capture;
pub mod cli;
pub mod config;
pub mod console;
pub mod review;
pub mod routes;
pub mod store;
pub mod sweep;

use std::{net::SocketAddr, time::Duration};

use contract::streams::UNPROCESSED_STREAM;
use shared::{
    messaging::{outbox::OutboxWaker, puller::Puller, topology},
    service::{Runtime, Service},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The Postgres schema dlq-service owns.
pub const SCHEMA: &str = contract::schemas::DLQ;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/dlq-service");

/// dlq-service, as the platform knows it.
pub static SERVICE: Service = Service { name: "dlq-service", schema: SCHEMA, migrations: &MIGRATIONS };

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub outbox: OutboxWaker,
    /// Who may call the review API.
    pub operator_auth: shared::http::OperatorAuth,
    /// The review console's session key and links.
    pub console: console::ConsoleSettings,
}

/// A built dlq-service: connected, migrated, topology declared, listener bound.
#[derive(Debug)]
pub struct Application {
    runtime: Runtime,
    state: AppState,
    capture: capture::Capture,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    config: Config,
}

impl Application {
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // Before anything is reached: the review API shows customers' payloads and replays them.
        config.operator_auth.ensure_configured()?;
        config.operator_auth.log_at_start_up("/dead-letters, /console");
        if config.console.session_key_generated {
            tracing::info!(
                "console sessions are signed with a key made at start-up: they end when this process does \
                 (set CONSOLE_SESSION_KEY to keep them across restarts and replicas)"
            );
        }
        let runtime =
            SERVICE.start(&config.service, (UNPROCESSED_STREAM, &config.capture.name), shutdown).await?;
        let (pool, jetstream) = (runtime.pool.clone(), runtime.jetstream.clone());
        let consumer = topology::ensure_consumer(&jetstream, UNPROCESSED_STREAM, "", &config.capture).await?;
        store::register_metrics();
        let capture = capture::Capture { pool: pool.clone(), jetstream, outbox: runtime.outbox() };
        let state = AppState {
            pool,
            nats: runtime.nats.clone(),
            outbox: runtime.outbox(),
            operator_auth: config.operator_auth.clone(),
            console: config.console.clone(),
        };
        Ok(Self { runtime, state, capture, consumer, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), console = %format!("http://{}/console/", self.local_addr()), "dlq-service listening");
        let Self { runtime, state, capture, consumer, config } = self;
        let ack_wait = config.capture.backoff[0];
        let puller = Puller::new(capture.jetstream.clone(), consumer, &config.capture);
        let (sweep, every, retention) = (capture.clone(), config.sweep_interval, config.last_error_retention);
        let (pool, poll) = (state.pool.clone(), config.service.lag_poll_interval);
        runtime
            .run(shutdown, routes::router(state), Duration::from_secs(15), move |tasks| {
                tasks.spawn_with_shutdown("sweep", move |stop| sweep::run(sweep, every, retention, stop));
                tasks.spawn_with_shutdown("capture", |stop| capture.run(puller, ack_wait, stop));
                tasks.spawn_with_shutdown("review backlog", move |stop| {
                    store::watch_pending(pool, poll, stop)
                });
            })
            .await
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
