//! order-api against a real nats-server and a real Postgres, in-process.

mod helpers;
mod orders;
mod outbox;
mod problems;
mod projection;
