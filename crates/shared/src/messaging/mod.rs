//! Everything between a service and JetStream: how a contract event becomes a NATS message,
//! where it is kept, how it leaves a service (the outbox) and how it is taken in (the idempotent
//! consumer).
//!
//! Read in this order: [`envelope`], [`topology`], [`outbox`], [`consumer`] (with [`puller`]),
//! [`retention`], and [`lag`], how far a consumer is behind.

pub mod consumer;
pub mod envelope;
pub mod lag;
pub mod outbox;
pub mod puller;
pub mod retention;
pub mod topology;
