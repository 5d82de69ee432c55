//! order-api against a real nats-server and a real Postgres, in-process.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

mod faults;
mod group_commit;
mod helpers;
mod orders;
mod outbox;
mod problems;
mod projection;
