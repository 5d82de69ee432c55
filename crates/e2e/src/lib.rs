//! End-to-end tests live in `tests/`: they start the real `order-api` and `inventory-worker`
//! binaries as processes, against a nats-server and a Postgres database of their own, and
//! check the whole pipeline from the outside.
//!
//! # Layout
//! - [`steady_load`]: orders placed at a steady pace over any number of order-api replicas,
//!   with what each request answered and how long it took.
//! - [`final_state`]: once the load has settled, the invariants every run must keep (no order
//!   lost, none reserved twice, stock exact, each message stored and each dead letter captured
//!   once), checked from the database and the streams.

pub mod final_state;
pub mod steady_load;
