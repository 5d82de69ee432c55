//! dlq-service against a real nats-server and Postgres, in-process.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

mod auth;
mod capture;
mod console;
mod faults;
mod helpers;
mod review;
