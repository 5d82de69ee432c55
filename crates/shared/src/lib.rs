//! The platform every service of the orders system runs on: one mechanism, one place.
//!
//! What services *say* to each other (subjects, headers, payloads) is the [`contract`] crate;
//! this crate is *how* they do it.
//!
//! # Layout
//! - [`config`]: environment variables with local defaults, validated at start-up. Each
//!   subsystem's settings live beside it (`db::DatabaseConfig`, `nats::NatsConfig`, …).
//! - [`messaging`]: everything between a service and JetStream:
//!   - [`messaging::envelope`]: contract events as NATS messages (CloudEvents headers);
//!   - [`messaging::topology`]: the streams and consumers, created or updated at start-up;
//!   - [`messaging::outbox`]: the transactional outbox and the relay that publishes it;
//!   - [`messaging::consumer`]: the idempotent consumer (at-least-once delivery, exactly-once
//!     effects), pulling through [`messaging::puller`];
//!   - [`messaging::retention`]: pruning sent outbox rows and old processed message IDs.
//! - [`db`]: connecting to Postgres, one schema per service, migrations.
//! - [`nats`]: connecting to NATS, and who a service is to it ([`nats::auth`]).
//! - [`http`]: RFC 9457 problem details, a JSON extractor that answers with them, readiness,
//!   and the operator routes' bearer tokens ([`http::auth`]).
//! - [`telemetry`]: logs and OpenTelemetry traces; trace context in NATS headers
//!   ([`telemetry::propagation`]).
//! - [`metrics`]: Prometheus metrics at `GET /metrics`; consumer lag from JetStream.
//! - [`service`]: what every service does the same way: its `main`, the settings every
//!   `Config` embeds, starting (connections, outbox relay, lag monitor, listener) and running.
//! - [`shutdown`]: stopping gracefully.

pub mod config;
pub mod db;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod nats;
pub mod service;
pub mod shutdown;
pub mod telemetry;
