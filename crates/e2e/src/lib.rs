//! End-to-end tests live in `tests/`: they start the real `order-api` and `inventory-worker`
//! binaries as processes, against a nats-server and a Postgres database of their own, and
//! check the whole pipeline from the outside.
