//! What every service does the same way around its own work: start up (telemetry,
//! configuration, Postgres, NATS, the listener) and stop (a signal, then every task finished).
//!
//! A service describes itself once, as a [`Service`] (its name, its schema, its migrations);
//! its `main.rs` is then one call to [`main`]. Its `Config` embeds the [`ServiceSettings`] every
//! service reads the same way; its `Application::build` starts with [`Service::start`], and its
//! `run_until_stopped` ends with [`Runtime::run`], which runs what every service runs (the HTTP
//! server, the outbox relay, the lag monitor) beside the tasks that are its own.

use std::{future::Future, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use sqlx::{PgPool, migrate::Migrator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, Env},
    db::{self, DatabaseConfig},
    messaging::{
        consumer::{ConsumerSettings, Handler, IdempotentConsumer},
        lag::{ConsumerLag, LagMonitor},
        outbox::{OutboxBacklog, OutboxRelay, OutboxWaker, RelaySettings},
        topology,
    },
    nats::NatsConfig,
    shutdown::{self, Tasks},
    telemetry,
};

/// The settings every service reads, with the same variables and defaults (but `HTTP_ADDR`'s,
/// which is the service's own port); the rest of each service's `Config` is its own.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `HTTP_ADDR`: the service's HTTP API, health and /metrics.
    pub http_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// `OUTBOX_*`: the relay that publishes what the service writes to its outbox.
    pub relay: RelaySettings,
    /// `LAG_POLL_INTERVAL` (default `2s`): how often the lag of the consumer the service
    /// watches is read from JetStream (for /metrics, and order-api's load shedding).
    pub lag_poll_interval: Duration,
}

impl ServiceSettings {
    pub fn from_env(env: &Env, default_http_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: env.socket_addr("HTTP_ADDR", default_http_addr)?,
            database: DatabaseConfig::from_env(env)?,
            nats: NatsConfig::from_env(env)?,
            relay: RelaySettings::from_env(env)?,
            lag_poll_interval: env.duration("LAG_POLL_INTERVAL", Duration::from_secs(2))?,
        })
    }
}

/// Who a service is: the name it logs, traces and connects under, and the Postgres schema it owns.
#[derive(Debug)]
pub struct Service {
    /// `order-api`, `inventory-worker`, `dlq-service`: also `service.name` in traces.
    pub name: &'static str,
    /// The one Postgres schema this service owns (its tables; `outbox` and
    /// `processed_messages` from the shared migrations).
    pub schema: &'static str,
    pub migrations: &'static Migrator,
}

/// A started service: its connections, and the parts every service runs (its outbox relay,
/// the monitor of one consumer's lag, its bound HTTP listener), until [`Runtime::run`] runs them.
#[derive(Debug)]
pub struct Runtime {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    relay: OutboxRelay,
    lag_monitor: LagMonitor,
    listener: TcpListener,
}

/// The consumer whose lag a service watches: `(stream, durable consumer name)`.
pub type Watched<'a> = (&'static str, &'a str);

impl Service {
    /// [`Service::connect`], then the outbox relay, the monitor of `watched`'s lag, and the
    /// HTTP listener bound to `HTTP_ADDR`.
    pub async fn start(
        &self,
        settings: &ServiceSettings,
        watched: Watched<'_>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Runtime> {
        let (pool, nats, jetstream) = self.connect(&settings.database, &settings.nats, shutdown).await?;
        let (stream, consumer) = watched;
        let lag_monitor = LagMonitor::new(jetstream.clone(), stream, consumer, settings.lag_poll_interval);
        let relay = OutboxRelay::new(pool.clone(), jetstream.clone(), settings.relay.clone());
        let listener = self.listen(settings.http_addr).await?;
        Ok(Runtime { pool, nats, jetstream, relay, lag_monitor, listener })
    }

    /// Connects to Postgres (creating the schema and bringing it up to date) and to NATS
    /// (declaring the streams every service relies on), and installs the metrics recorder. NATS
    /// is waited for, retrying, until `shutdown`.
    pub async fn connect(
        &self,
        database: &DatabaseConfig,
        nats: &NatsConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(PgPool, async_nats::Client, jetstream::Context)> {
        let pool = self.connect_database(database).await?;
        let (client, jetstream) = crate::nats::connect(nats, self.name, shutdown)
            .await
            .context("stopped before NATS was reachable")?;
        topology::ensure_streams(&jetstream, nats).await?;
        crate::metrics::install();
        Ok((pool, client, jetstream))
    }

    /// Connects to Postgres only (the review commands of the CLI need no more).
    pub async fn connect_database(&self, database: &DatabaseConfig) -> Result<PgPool, db::DbError> {
        db::connect_and_migrate(database, self.name, self.schema, self.migrations).await
    }

    /// Binds the HTTP listener (port 0: a free one), naming the setting if it cannot.
    pub async fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on HTTP_ADDR={addr}"))
    }
}

impl Runtime {
    /// Wakes the relay when a transaction has written to the outbox.
    pub fn outbox(&self) -> OutboxWaker {
        self.relay.waker()
    }

    pub fn outbox_backlog(&self) -> OutboxBacklog {
        self.relay.backlog()
    }

    /// The watched consumer's lag, as JetStream last reported it.
    pub fn consumer_lag(&self) -> ConsumerLag {
        self.lag_monitor.lag()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Declares the durable consumer `settings` names on `stream` (of `filter_subject`; empty:
    /// all of it), and an idempotent consumer of it that runs `handler` in this service's
    /// database. Not yet running: the service spawns it in [`Runtime::run`].
    pub async fn idempotent_consumer<H: Handler>(
        &self,
        stream: &'static str,
        filter_subject: &str,
        settings: &ConsumerSettings,
        handler: H,
    ) -> anyhow::Result<IdempotentConsumer<H>> {
        let consumer = topology::ensure_consumer(&self.jetstream, stream, filter_subject, settings).await?;
        let (jetstream, pool) = (self.jetstream.clone(), self.pool.clone());
        Ok(IdempotentConsumer::new(jetstream, consumer, pool, handler, settings.clone()))
    }

    /// Serves `router` and runs the relay, the lag monitor, the metrics' upkeep and the tasks `spawn` adds (the
    /// service's own) until `shutdown` is cancelled or one of them ends; then waits up to
    /// `grace` for every task to finish, and flushes what the NATS client still buffers (acks,
    /// publishes) before the process exits.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        router: axum::Router,
        grace: Duration,
        spawn: impl FnOnce(&mut Tasks),
    ) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(shutdown);
        tasks.serve_http(self.listener, router);
        let (relay, lag_monitor) = (self.relay, self.lag_monitor);
        tasks.spawn_with_shutdown("outbox relay", |stop| relay.run(stop));
        tasks.spawn_with_shutdown("metrics upkeep", crate::metrics::upkeep);
        spawn(&mut tasks);
        tasks.spawn_with_shutdown("lag monitor", |stop| lag_monitor.run(stop));
        let result = tasks.run_until_stopped(grace).await;
        crate::nats::flush_before_exit(&self.nats, Duration::from_secs(2)).await;
        result
    }
}

/// A service's whole `main`: telemetry, then its configuration from the environment (exit code
/// 2, naming the variable, if either is wrong), then `run` until SIGTERM or Ctrl-C; an error is
/// logged with its causes (exit code 1), and spans not yet exported are flushed on the way out.
pub async fn main<C, Fut>(
    name: &'static str,
    config: impl FnOnce(&Env) -> Result<C, ConfigError>,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = match telemetry::init(name) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let config = match config(&Env::from_process()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone());
    let result = run(config, stop).await;
    if let Err(err) = &result {
        tracing::error!(error = telemetry::error_chain(err), "{name} failed");
    }
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
