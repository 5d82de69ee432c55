//! Postgres: one database, one schema per service.
//!
//! Each service owns a schema (`order_api`, `inventory`, …) and its connections use it as their
//! `search_path`, so the shared tables (`outbox`, `processed_messages`) are written with the same
//! unqualified SQL by every service and still land in that service's own schema. No service reads
//! another's tables.
//!
//! Migrations come in two sets, each tracked in its own table inside the service's schema:
//! `migrations/shared` (the messaging tables every service has) and the service's own folder.
//! sqlx serialises concurrent migrators with an advisory lock, so services starting together
//! are safe.

use std::{borrow::Cow, time::Duration};

use sqlx::{
    Connection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// The tables every service has in its schema: `outbox` and `processed_messages`.
pub static SHARED_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/shared");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not connect to Postgres")]
    Connect(#[source] sqlx::Error),
    #[error("could not create database {0:?}")]
    CreateDatabase(String, #[source] sqlx::Error),
    #[error("could not migrate schema {schema:?} ({set})")]
    Migrate {
        schema: String,
        set: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Connects a pool whose connections work in `schema`, creating the database if it is missing,
/// and brings the schema up to date (shared tables first, then the service's own).
///
/// Every connection of the pool carries bounded waits (see [`DatabaseConfig`]): no statement,
/// lock wait or idle transaction can hold a worker, a request or a row forever.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    schema: &'static str,
    service_migrations: &Migrator,
) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = config.url.parse().map_err(DbError::Connect)?;
    create_database_if_missing(&options).await?;
    let in_schema_options = options.options([("search_path", schema)]);
    migrate(&in_schema_options, schema, service_migrations).await?;

    let millis = |d: std::time::Duration| d.as_millis().to_string();
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(in_schema_options.options([
            ("statement_timeout", millis(config.statement_timeout)),
            ("lock_timeout", millis(config.lock_timeout)),
            ("idle_in_transaction_session_timeout", millis(config.idle_in_transaction_timeout)),
        ]))
        .await
        .map_err(DbError::Connect)
}

/// Runs both migration sets on a connection of its own, without the pool's timeouts: a
/// migration may rightly take longer than any request is allowed to.
async fn migrate(
    options: &PgConnectOptions,
    schema: &'static str,
    service: &Migrator,
) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(options).await.map_err(DbError::Connect)?;
    for (set, migrator) in [("shared", &SHARED_MIGRATIONS), ("service", service)] {
        in_schema(migrator, schema, set).run(&mut conn).await.map_err(|source| DbError::Migrate {
            schema: schema.to_owned(),
            set,
            source,
        })?;
    }
    conn.close().await.ok();
    Ok(())
}

/// A copy of `migrator` that creates `schema` and tracks itself in a table inside it.
fn in_schema(migrator: &Migrator, schema: &'static str, set: &'static str) -> Migrator {
    let mut scoped = Migrator::with_migrations(migrator.iter().cloned().collect());
    scoped.create_schema(schema);
    scoped.dangerous_set_table_name(format!("{schema}._sqlx_migrations_{set}"));
    scoped
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(()); // No database named: the server's default for the user.
    };
    let mut admin =
        PgConnection::connect_with(&options.clone().database("postgres")).await.map_err(DbError::Connect)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .map_err(DbError::Connect)?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another service created it between our check and our CREATE.
            Err(err) if has_code(&err, &["42P04", "23505"]) => {}
            Err(err) => return Err(DbError::CreateDatabase(name, err)),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Whether a database error carries one of these SQLSTATE codes.
pub fn has_code(err: &sqlx::Error, codes: &[&str]) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| codes.contains(&c.as_ref())),
        _ => false,
    }
}

/// Conflicts between concurrent transactions that succeed when simply run again:
/// deadlock (40P01) and serialization failure (40001).
pub fn is_retryable_conflict(err: &sqlx::Error) -> bool {
    has_code(err, &["40P01", "40001"])
}

/// Errors that mean "Postgres cannot do work right now" rather than "this request is wrong":
/// worth waiting out (a consumer stops pulling, so the outage costs its messages at most one
/// delivery attempt), and answered with 503 rather than 500.
///
/// Not only a lost connection: a database that is up but refuses writes is just as down for
/// this system. A lock wait that timed out (55P03) is *not* here: it concerns the rows of one
/// message, and the consumer retries that message alone.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code: Cow<'_, str>| {
            OUTAGE_CLASSES.iter().any(|class| code.starts_with(class))
                || OUTAGE_CODES.contains(&code.as_ref())
        }),
        _ => false,
    }
}

/// SQLSTATE classes of an outage: 08 connection exception, 53 insufficient resources (disk
/// full, out of memory, too many connections), 57P operator intervention (shutdown, restart,
/// cannot connect now), 58 system error (I/O).
const OUTAGE_CLASSES: [&str; 4] = ["08", "53", "57P", "58"];
/// Single SQLSTATE codes of an outage: 25006 read-only transaction (a standby, or a database
/// turned read-only after a failover), 57014 statement timeout (a server too slow to work),
/// 25P03 idle-in-transaction timeout (the session was ended under us).
const OUTAGE_CODES: [&str; 3] = ["25006", "57014", "25P03"];

/// Whether Postgres answers a trivial query within a second (for readiness).
pub async fn ping(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// Whether Postgres commits a write within a few seconds. A read would succeed on a database
/// that is read-only or out of disk, so the probe is a real, committed write: it upserts one
/// row of `processed_messages` under a consumer name no consumer uses.
pub async fn accepts_writes(pool: &PgPool) -> bool {
    let probe = sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, processed_by)
         VALUES ('(write probe)', '00000000-0000-0000-0000-000000000000', 'probe')
         ON CONFLICT (consumer, message_id) DO UPDATE SET processed_at = now()",
    )
    .execute(pool);
    matches!(tokio::time::timeout(Duration::from_secs(5), probe).await, Ok(Ok(_)))
}

/// Returns once Postgres commits writes again (probing every second), or when `shutdown` is
/// cancelled.
pub async fn wait_until_available(pool: &PgPool, shutdown: &tokio_util::sync::CancellationToken) {
    while !shutdown.is_cancelled() && !accepts_writes(pool).await {
        crate::shutdown::sleep_or_cancel(Duration::from_secs(1), shutdown).await;
    }
}
