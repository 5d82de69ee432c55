//! inventory-worker against a real nats-server and a real Postgres, in-process.

mod helpers;
mod outage;
mod reservations;
mod stock_api;
