//! Postgres alone: how many commits per second, and how many rows per second when 100 go in
//! each commit.
//!
//! Every commit waits for its WAL to reach the disk (`fsync` on, `synchronous_commit` on): that
//! wait, not the SQL, bounds a design that commits once per request. Concurrent commits share
//! one flush (Postgres's own group commit), so more connections give more commits per second, up
//! to the disk. Batching many rows into one commit is the other way round that wait.

use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use crate::sample_payload;

/// The table every measurement here inserts into: a primary key (as `processed_messages` has)
/// and a payload.
const CREATE_TABLE: &str = "CREATE TABLE rawbench_rows (id uuid PRIMARY KEY, payload bytea NOT NULL)";

/// Refuses a server that does not flush each commit to disk: its figures would say nothing
/// about the bench's durable Postgres.
pub async fn check_durable(pool: &PgPool) -> anyhow::Result<()> {
    for setting in ["fsync", "synchronous_commit"] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(pool)
            .await
            .with_context(|| format!("reading the server's {setting} setting"))?;
        if value != "on" {
            bail!("the server has {setting} = {value}: rawbench measures a durable Postgres (on)");
        }
    }
    Ok(())
}

/// Creates the tables the measurements write to, empty (dropping those of an earlier run).
pub async fn create_tables(pool: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "DROP TABLE IF EXISTS rawbench_rows",
        CREATE_TABLE,
        "DROP TABLE IF EXISTS rawbench_pipeline",
        crate::pipeline::CREATE_TABLE,
    ] {
        sqlx::query(statement).execute(pool).await.with_context(|| statement.to_owned())?;
    }
    Ok(())
}

/// Rows inserted per second with one transaction per row, over `connections` connections.
pub async fn commits_per_message(
    pool: &PgPool,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    rows_per_second(pool, connections, 1, duration).await
}

/// Rows inserted per second with `rows_per_transaction` rows in each transaction.
pub async fn rows_in_batches(
    pool: &PgPool,
    connections: usize,
    rows_per_transaction: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    rows_per_second(pool, connections, rows_per_transaction, duration).await
}

/// `connections` tasks, each committing transactions of `rows_per_transaction` rows until
/// `duration` is over; the rows committed by all of them, per second.
async fn rows_per_second(
    pool: &PgPool,
    connections: usize,
    rows_per_transaction: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut rows = 0_u64;
            while Instant::now() < deadline {
                insert_in_one_transaction(&pool, rows_per_transaction).await?;
                rows += rows_per_transaction as u64;
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done.context("a connection's task panicked")??;
    }
    Ok(crate::per_second(rows, started.elapsed()))
}

/// `BEGIN`, one set-based `INSERT` of `rows` new rows, `COMMIT`: the round trips of a
/// request that commits its own work.
async fn insert_in_one_transaction(pool: &PgPool, rows: usize) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
    let payloads = vec![sample_payload().to_vec(); rows];
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO rawbench_rows (id, payload) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])")
        .bind(&ids)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
