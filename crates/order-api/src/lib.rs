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
//! - [`writer`]: placing orders, with one transaction shared by concurrent requests.
//! - [`store`]: the rest of the SQL, one function per unit of work.
//! - [`routes`]: the HTTP API.
//! - [`projection`]: outcome events → order status.
//! - [`Application`]: wiring: build (connect, migrate, declare topology, bind), then run; what
//!   every service does is [`shared::service`]'s.

pub mod config;
pub mod orders;
pub mod projection;
pub mod routes;
pub mod store;
pub mod writer;

use std::{net::SocketAddr, time::Duration};

use contract::streams::{EVENTS_STREAM, EVENTS_SUBJECTS, ORDERS_STREAM};
use shared::{
    messaging::{consumer::IdempotentConsumer, lag::ConsumerLag, outbox::OutboxBacklog},
    service::{Runtime, Service},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use writer::{OrderWriter, OrderWriters};

/// The Postgres schema order-api owns.
pub const SCHEMA: &str = contract::schemas::ORDER_API;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order-api");

/// order-api, as the platform knows it.
pub static SERVICE: Service = Service { name: "order-api", schema: SCHEMA, migrations: &MIGRATIONS };

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Where `POST /orders` hands its order, to be committed with others.
    pub writer: OrderWriter,
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
    runtime: Runtime,
    state: AppState,
    writers: OrderWriters,
    projection: IdempotentConsumer<projection::StatusProjection>,
}

impl Application {
    /// Connects to Postgres (creating and migrating the schema) and NATS (declaring streams and
    /// the projection's consumer), and binds the HTTP listener. Use port 0 for a free port.
    pub async fn build(config: Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // The lag watched is the workers': it is what load shedding reads.
        let watched = (ORDERS_STREAM, config.worker_consumer.as_str());
        let runtime = SERVICE.start(&config.service, watched, shutdown).await?;
        let projection = runtime
            .idempotent_consumer(
                EVENTS_STREAM,
                EVENTS_SUBJECTS,
                &config.projection,
                projection::StatusProjection,
            )
            .await?;
        routes::register_metrics();
        writer::register_metrics();
        let (writer, writers) = OrderWriter::new(runtime.pool.clone(), runtime.outbox(), config.writer);
        let state = AppState {
            pool: runtime.pool.clone(),
            nats: runtime.nats.clone(),
            writer,
            outbox_backlog: runtime.outbox_backlog(),
            max_outbox_backlog: config.max_outbox_backlog,
            consumer_lag: runtime.consumer_lag(),
            max_consumer_lag: config.max_consumer_lag,
            request_timeout: config.request_timeout,
        };
        Ok(Self { runtime, state, writers, projection })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    /// Serves HTTP and runs the relay and the projection until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "order-api listening");
        let Self { runtime, state, writers, projection } = self;
        // The router holds the only handles to the writers: once it has served its last request,
        // they write what they were handed and stop.
        runtime
            .run(shutdown, routes::router(state), Duration::from_secs(15), |tasks| {
                tasks.spawn("order writers", async move {
                    writers.run().await;
                    Ok(())
                });
                tasks.spawn_with_shutdown("status projection", |stop| projection.run(stop));
            })
            .await
    }
}

/// Builds and runs order-api until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Application::build(config, &shutdown).await?.run_until_stopped(shutdown).await
}
