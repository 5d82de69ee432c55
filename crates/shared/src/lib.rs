//! What every service of the orders system shares: one mechanism, one place.
//!
//! # Layout
//! - [`config`]: environment variables with local defaults, validated at start-up.
//! - [`messages`]: the CloudEvents envelope and the versioned payloads on NATS.
//! - [`topology`]: the JetStream streams and consumers, created or updated at start-up.
//! - [`db`]: connecting to Postgres, one schema per service, migrations.
//! - [`outbox`]: the transactional outbox and the relay that publishes it.
//! - [`retention`]: pruning sent outbox rows and old processed message IDs.
//! - [`consumer`]: the idempotent consumer (at-least-once delivery, exactly-once effects).
//! - [`puller`]: pulling from a durable consumer only when ready, healing, stopping cleanly.
//! - [`http`]: RFC 9457 problem details, a JSON extractor that answers with them, and the
//!   operator routes' bearer tokens ([`http::auth`]).
//! - [`telemetry`], [`propagation`]: logs and OpenTelemetry traces; trace context in NATS headers.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`; consumer lag from JetStream.
//! - [`nats`], [`shutdown`]: connecting, stopping gracefully.
//! - [`nats_auth`]: who a service is to NATS (user and password, token, NKey, `.creds`, TLS).

pub mod config;
pub mod consumer;
pub mod db;
pub mod http;
pub mod messages;
pub mod metrics;
pub mod nats;
pub mod nats_auth;
pub mod outbox;
pub mod propagation;
pub mod puller;
pub mod retention;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
