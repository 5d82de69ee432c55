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
//!
//! # Least privilege
//! In a deployment each service logs in as a role of its own (`order_api`, `inventory_worker`,
//! `dlq_service`), which owns its schema and nothing else: `scripts/provision-db` creates the
//! roles and schemas, and takes away what Postgres grants everyone by default (creating in
//! `public`, creating schemas). The service then runs its own migrations as that role, so
//! everything they create belongs to it, and a bug or an injection in one service cannot read
//! or change another's tables. So a role need not create its schema, nor its database: both are
//! created here only when missing, which only an administrator's URL (a local demo) needs.
//! A service given a superuser still works, and says at start-up that it should not be.

use std::{borrow::Cow, time::Duration};

use crate::config::{ConfigError, Env, redact};

use sqlx::{
    Connection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

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
/// Every connection carries `application_name` = `service`, so `pg_stat_activity` and the
/// server's logs say which service a session belongs to. Every connection of the pool carries
/// bounded waits (see [`DatabaseConfig`]): no statement, lock wait or idle transaction can hold
/// a worker, a request or a row forever.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    service: &str,
    schema: &'static str,
    service_migrations: &Migrator,
) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = config.url.parse().map_err(DbError::Connect)?;
    let options = options.application_name(service);
    create_database_if_missing(&options).await?;
    let in_schema_options = options.options([("search_path", schema)]);
    migrate(&in_schema_options, schema, service_migrations).await?;

    let millis = |d: std::time::Duration| d.as_millis().to_string();
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(in_schema_options.options([
            ("statement_timeout", millis(config.statement_timeout)),
            ("lock_timeout", millis(config.lock_timeout)),
            ("idle_in_transaction_session_timeout", millis(config.idle_in_transaction_timeout)),
        ]))
        .await
        .map_err(DbError::Connect)?;
    warn_if_superuser(&pool, service).await;
    Ok(pool)
}

/// Says so, at warn, when the service is logged in as a superuser: it works, but one bug away
/// from every other service's data (and the server's).
async fn warn_if_superuser(pool: &PgPool, service: &str) {
    let role: Result<(String, bool), _> =
        sqlx::query_as("SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await;
    if let Ok((role, true)) = role {
        tracing::warn!(
            %role,
            "{service} is connected to Postgres as a superuser: give it a role of its own that owns only its schema (scripts/provision-db creates one; docs/security.md, \"Postgres roles\")"
        );
    }
}

/// Runs both migration sets on a connection of its own, without the pool's timeouts: a
/// migration may rightly take longer than any request is allowed to.
async fn migrate(
    options: &PgConnectOptions,
    schema: &'static str,
    service: &Migrator,
) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(options).await.map_err(DbError::Connect)?;
    // `CREATE SCHEMA IF NOT EXISTS` needs the right to create schemas even when the schema
    // exists, and a service's role rightly lacks it: only a missing schema is created.
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .map_err(DbError::Connect)?;
    for (set, migrator) in [("shared", &SHARED_MIGRATIONS), ("service", service)] {
        in_schema(migrator, schema, set, !exists)
            .run(&mut conn)
            .await
            .map_err(|source| DbError::Migrate { schema: schema.to_owned(), set, source })?;
    }
    conn.close().await.ok();
    Ok(())
}

/// A copy of `migrator` that tracks itself in a table inside `schema`, creating the schema first
/// if `create` says so.
fn in_schema(migrator: &Migrator, schema: &'static str, set: &'static str, create: bool) -> Migrator {
    let mut scoped = Migrator::with_migrations(migrator.iter().cloned().collect());
    if create {
        scoped.create_schema(schema);
    }
    scoped.dangerous_set_table_name(format!("{schema}._sqlx_migrations_{set}"));
    scoped
}

/// Creates the database if it is missing. Tried by connecting to it first: a service's role may
/// connect to its own database and nowhere else, and has no right to create one (nor needs it:
/// `scripts/provision-db` creates it).
async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(()); // No database named: the server's default for the user.
    };
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await.ok();
            return Ok(());
        }
        // 3D000: the database does not exist. Anything else is reported by the caller's connect.
        Err(err) if has_code(&err, &["3D000"]) => {}
        Err(_) => return Ok(()),
    }
    let mut admin =
        PgConnection::connect_with(&options.clone().database("postgres")).await.map_err(DbError::Connect)?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another service created it between our check and our CREATE.
        Err(err) if has_code(&err, &["42P04", "23505"]) => {}
        Err(err) => return Err(DbError::CreateDatabase(name, err)),
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

/// Where and how to reach Postgres. Each service owns one schema of the one database. Its
/// `Debug` shows the URL [`redact`]ed, so that printing the settings never prints a password.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`. The database is created if missing.
    pub url: String,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT`: how long to wait for a connection before treating Postgres
    /// as unavailable (HTTP 503; a worker hands its batch back and stops pulling).
    pub acquire_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT`: the longest any one statement may run (Postgres's
    /// `statement_timeout`). Also bounds, on the client's side, how long a unit of work may wait
    /// on a server that stopped answering (no TCP keepalive reaches a vanished host sooner).
    pub statement_timeout: Duration,
    /// `DATABASE_LOCK_TIMEOUT`: the longest a statement waits for a row lock (`lock_timeout`).
    /// A row held by someone else fails the one message that needs it, not the whole batch.
    pub lock_timeout: Duration,
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`: Postgres ends a session that holds a transaction
    /// open and idle this long (`idle_in_transaction_session_timeout`), releasing its locks.
    pub idle_in_transaction_timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("idle_in_transaction_timeout", &self.idle_in_transaction_timeout)
            .finish()
    }
}

impl DatabaseConfig {
    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.string("DATABASE_URL", Self::DEFAULT_URL);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                &url,
                "expected postgres://user[:password]@host:port/database",
            ));
        }
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|err| ConfigError::new("DATABASE_URL", &url, err))?;
        Ok(Self {
            url,
            max_connections: env.number("DATABASE_MAX_CONNECTIONS", 10, 1..=1000)?,
            acquire_timeout: env.duration("DATABASE_ACQUIRE_TIMEOUT", Duration::from_secs(3))?,
            statement_timeout: env
                .positive_duration("DATABASE_STATEMENT_TIMEOUT", Duration::from_secs(10))?,
            lock_timeout: env.positive_duration("DATABASE_LOCK_TIMEOUT", Duration::from_secs(2))?,
            idle_in_transaction_timeout: env
                .positive_duration("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", Duration::from_secs(60))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_named_in_the_error_without_its_password() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql://app:s3cret@db/orders")]);
        let err = DatabaseConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL=\"mysql://app:***@db/orders\""), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_bad_database_url_is_refused_at_start_up() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql:/nope")]);
        let err = DatabaseConfig::from_env(&env).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
    }

    #[test]
    fn printing_the_settings_never_prints_a_password() {
        let database =
            DatabaseConfig::from_env(&Env::from_pairs([("DATABASE_URL", "postgres://app:s3cret@db/orders")]))
                .unwrap();
        let shown = format!("{database:?}");
        assert!(shown.contains("postgres://app:***@db/orders") && !shown.contains("s3cret"), "{shown}");
    }
}
