//! Configuration from environment variables, with local defaults.
//!
//! Every service builds its `Config` at start-up through an [`Env`], so a bad value stops the
//! service before it touches NATS or Postgres, with an error that names the variable:
//!
//! ```text
//! invalid configuration: WORKER_MAX_DELIVER="zero": expected a whole number
//! ```
//!
//! [`Env`] reads through a lookup function rather than `std::env` directly, so tests can build a
//! configuration from a map without touching the process environment.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Display,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub problem: String,
}

impl ConfigError {
    /// The value is shown [`redact`]ed: an error message ends up in logs, a password must not.
    pub fn new(variable: &str, value: &str, problem: impl Display) -> Self {
        Self { variable: variable.to_owned(), value: redact(value), problem: problem.to_string() }
    }
}

/// A URL (or a comma-separated list of them) fit for a log line: the password before `@`
/// becomes `***`, the user name kept (`postgres://app:s3cret@db/orders` →
/// `postgres://app:***@db/orders`; a NATS token, `nats://t0ken@host`, → `nats://***@host`).
/// Anything else is returned as it is.
pub fn redact(value: &str) -> String {
    value.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let masked = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // In a NATS URL a lone name is a token; elsewhere (Postgres) it is a user name.
        None if scheme.starts_with("nats") || scheme.starts_with("tls") => "***".to_owned(),
        None => return url.to_owned(),
    };
    format!("{scheme}://{masked}{}", &rest[at..])
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where configuration values come from: the process environment, or a map in tests.
pub struct Env {
    lookup: Lookup,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Env")
    }
}

impl Env {
    /// The process environment. Empty values count as unset, as in most shells' `${VAR:-default}`.
    pub fn from_process() -> Self {
        Self { lookup: Box::new(|name| std::env::var(name).ok()) }
    }

    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self { lookup: Box::new(move |name| map.get(name).cloned()) }
    }

    /// An environment from a map that remembers every variable the code asks for: a way to
    /// check that a deployment (compose.yaml) sets only variables the services read.
    pub fn recording(map: HashMap<String, String>) -> (Self, Arc<Mutex<BTreeSet<String>>>) {
        let asked = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = asked.clone();
        let env = Self {
            lookup: Box::new(move |name| {
                if let Ok(mut seen) = seen.lock() {
                    seen.insert(name.to_owned());
                }
                map.get(name).cloned()
            }),
        };
        (env, asked)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// The raw value, if set and not empty.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// Any type with a `FromStr` (numbers, addresses, …).
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|err| ConfigError::new(name, &value, err)),
        }
    }

    /// A whole number within `range`.
    pub fn number<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let value = match self.raw(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        let number: T =
            value.trim().parse().map_err(|_| ConfigError::new(name, &value, "expected a whole number"))?;
        if !range.contains(&number) {
            return Err(ConfigError::new(
                name,
                &value,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(number)
    }

    /// A fraction between 0.0 and 1.0, e.g. a failure rate.
    pub fn fraction(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        let value = match self.raw(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        match value.trim().parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err(ConfigError::new(name, &value, "expected a number between 0.0 and 1.0")),
        }
    }

    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let value = self.string(name, default);
        value
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(name, &value, "expected host:port, e.g. 127.0.0.1:8080"))
    }

    /// A duration such as `500ms`, `2s`, `5m`, `1h` or `7d`.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_duration(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }

    /// A comma-separated list of durations, e.g. `1s,2s,4s`.
    pub fn durations(&self, name: &str, default: &[Duration]) -> Result<Vec<Duration>, ConfigError> {
        match self.raw(name) {
            None => Ok(default.to_vec()),
            Some(value) => value
                .split(',')
                .map(|part| parse_duration(part).map_err(|p| ConfigError::new(name, &value, p)))
                .collect(),
        }
    }

    /// A size in bytes: `1048576`, `512KiB`, `256MiB`, `1GiB`.
    pub fn bytes(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_bytes(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }
}

/// Parses `250ms`, `2s`, `5m`, `1h`, `7d`. A bare number is rejected: the unit is the point.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "expected a number with a unit: ms, s, m, h or d (e.g. 2s)".to_owned())?;
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| "expected a number with a unit: ms, s, m, h or d (e.g. 2s)".to_owned())?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(number.saturating_mul(millis)))
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| "expected a size such as 1048576, 512KiB or 256MiB".to_owned())?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    Ok(number.saturating_mul(factor))
}

/// A duration that must be longer than zero (Postgres reads a zero timeout as "none").
fn positive(env: &Env, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration(name, default)?;
    if value < Duration::from_millis(1) {
        return Err(ConfigError::new(name, &env.string(name, ""), "must be at least 1ms"));
    }
    Ok(value)
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
            statement_timeout: positive(env, "DATABASE_STATEMENT_TIMEOUT", Duration::from_secs(10))?,
            lock_timeout: positive(env, "DATABASE_LOCK_TIMEOUT", Duration::from_secs(2))?,
            idle_in_transaction_timeout: positive(
                env,
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
                Duration::from_secs(60),
            )?,
        })
    }
}

/// How to reach NATS and the shape of the streams every service relies on. Its `Debug` shows
/// the URLs [`redact`]ed (a password or token in `NATS_URL` never printed).
#[derive(Clone)]
pub struct NatsConfig {
    /// `NATS_URL`: one server, or several separated by commas (the nodes of a cluster).
    pub url: String,
    /// The servers of `NATS_URL`, in order. The client connects to one of them and, when it
    /// goes away, reconnects to another (and to any node the cluster tells it about).
    pub servers: Vec<async_nats::ServerAddr>,
    /// `STREAM_REPLICAS` (1 to 5): how many servers of a cluster keep a copy of every stream
    /// this project declares (see [`crate::topology`]). 1 for a single server; 3 on a
    /// three-node cluster, so that losing one node loses no message and stops nothing.
    pub stream_replicas: usize,
    /// Credentials (from `NATS_URL`, `NATS_CREDS` or `NATS_NKEY_SEED_FILE`) and TLS
    /// (`NATS_TLS_*`): see [`crate::nats_auth`].
    pub auth: crate::nats_auth::NatsAuth,
    pub orders_stream: OrdersStreamSettings,
    pub events_stream: EventsStreamSettings,
    /// `UNPROCESSED_STREAM_MAX_AGE`: how long `orders_unprocessed` keeps advisories and copies
    /// (the dead-letter table keeps its rows for good).
    pub unprocessed_max_age: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `servers` is left out: its addresses hold the same credentials as `url`.
        f.debug_struct("NatsConfig")
            .field("url", &redact(&self.url))
            .field("stream_replicas", &self.stream_replicas)
            .field("auth", &self.auth)
            .field("orders_stream", &self.orders_stream)
            .field("events_stream", &self.events_stream)
            .field("unprocessed_max_age", &self.unprocessed_max_age)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
    pub const DEFAULT_UNPROCESSED_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.string("NATS_URL", Self::DEFAULT_URL);
        let servers = url
            .split(',')
            .enumerate()
            .map(|(index, server)| {
                let server = server.trim();
                let number = index + 1;
                if !(server.starts_with("nats://") || server.starts_with("tls://") || server.contains(':')) {
                    return Err(ConfigError::new(
                        "NATS_URL",
                        &url,
                        format!("server {number}: expected an address such as nats://127.0.0.1:4222 (several: separated by commas)"),
                    ));
                }
                server
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|err| ConfigError::new("NATS_URL", &url, format!("server {number}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            auth: crate::nats_auth::NatsAuth::from_env(env, &url)?,
            url,
            servers,
            stream_replicas: env.number("STREAM_REPLICAS", 1, 1..=5)?,
            orders_stream: OrdersStreamSettings::from_env(env)?,
            events_stream: EventsStreamSettings::from_env(env)?,
            unprocessed_max_age: env
                .duration("UNPROCESSED_STREAM_MAX_AGE", Self::DEFAULT_UNPROCESSED_MAX_AGE)?,
        })
    }
}

/// Limits of the `orders_stream` work queue (the seed article's values by default).
///
/// All services that declare the stream must agree on these: each one updates the stream to its
/// own values at start-up.
#[derive(Debug, Clone)]
pub struct OrdersStreamSettings {
    /// `ORDERS_STREAM_MAX_BYTES`: with `discard: new`, a full stream refuses new orders instead of
    /// dropping old ones; the outbox then holds them (backpressure, not loss).
    pub max_bytes: u64,
    /// `ORDERS_STREAM_MAX_MSG_SIZE`.
    pub max_message_size: u64,
    /// `ORDERS_STREAM_DUPLICATE_WINDOW`: how long the broker remembers `Nats-Msg-Id`s.
    pub duplicate_window: Duration,
}

impl OrdersStreamSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_bytes: env.bytes("ORDERS_STREAM_MAX_BYTES", 256 << 20)?,
            max_message_size: env.bytes("ORDERS_STREAM_MAX_MSG_SIZE", 1 << 20)?,
            duplicate_window: env.duration("ORDERS_STREAM_DUPLICATE_WINDOW", Duration::from_secs(120))?,
        })
    }
}

/// Limits of the `order_events` stream.
#[derive(Debug, Clone)]
pub struct EventsStreamSettings {
    /// `EVENTS_STREAM_MAX_AGE`: events are history; a week of it is kept.
    pub max_age: Duration,
    /// `EVENTS_STREAM_MAX_BYTES`.
    pub max_bytes: u64,
}

impl EventsStreamSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_age: env.duration("EVENTS_STREAM_MAX_AGE", Duration::from_secs(7 * 24 * 3600))?,
            max_bytes: env.bytes("EVENTS_STREAM_MAX_BYTES", 1 << 30)?,
        })
    }
}

/// Settings of the outbox relay every service runs (see [`crate::outbox`]).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `OUTBOX_BATCH_SIZE`: rows claimed and published per round trip.
    pub batch_size: u32,
    /// `OUTBOX_POLL_INTERVAL`: how often the relay looks for rows nobody woke it for
    /// (rows left by a crashed replica, or written by another process).
    pub poll_interval: Duration,
    /// `OUTBOX_RETRY_MAX`: the longest pause between attempts while NATS is unreachable.
    pub retry_max: Duration,
    /// `OUTBOX_RETENTION`: how long sent rows are kept for inspection before they are pruned.
    pub retention: Duration,
    /// `OUTBOX_QUARANTINE_AFTER`: a row the broker keeps refusing with a permanent error (no
    /// stream, too large) for this long is quarantined (see [`crate::outbox`]).
    pub quarantine_after: Duration,
    /// `PROCESSED_MESSAGES_RETENTION`: how long a consumer remembers the IDs it processed (see
    /// [`crate::retention`]). At least `UNPROCESSED_STREAM_MAX_AGE`.
    pub processed_retention: Duration,
    /// `PRUNE_INTERVAL`: how often rows past their retention are deleted.
    pub prune_interval: Duration,
}

impl RelaySettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let processed_retention =
            env.duration("PROCESSED_MESSAGES_RETENTION", Duration::from_secs(30 * 24 * 3600))?;
        let unprocessed_max_age =
            env.duration("UNPROCESSED_STREAM_MAX_AGE", NatsConfig::DEFAULT_UNPROCESSED_MAX_AGE)?;
        if processed_retention < unprocessed_max_age {
            return Err(ConfigError::new(
                "PROCESSED_MESSAGES_RETENTION",
                &env.string("PROCESSED_MESSAGES_RETENTION", ""),
                format!(
                    "must be at least UNPROCESSED_STREAM_MAX_AGE ({unprocessed_max_age:?}): a dead letter captured from there can be replayed"
                ),
            ));
        }
        let prune_interval = env.duration("PRUNE_INTERVAL", Duration::from_secs(10))?;
        if prune_interval.is_zero() {
            return Err(ConfigError::new(
                "PRUNE_INTERVAL",
                &env.string("PRUNE_INTERVAL", ""),
                "must be longer than zero",
            ));
        }
        Ok(Self {
            batch_size: env.number("OUTBOX_BATCH_SIZE", 256, 1..=5_000)?,
            poll_interval: env.duration("OUTBOX_POLL_INTERVAL", Duration::from_secs(1))?,
            retry_max: env.duration("OUTBOX_RETRY_MAX", Duration::from_secs(5))?,
            retention: env.duration("OUTBOX_RETENTION", Duration::from_secs(24 * 3600))?,
            quarantine_after: env.duration("OUTBOX_QUARANTINE_AFTER", Duration::from_secs(300))?,
            processed_retention,
            prune_interval,
        })
    }
}

/// Who gives up on a message that keeps failing, and so who must tell the dead-letter service.
///
/// A consumer of this project never drops a message silently: whichever way it is given up on,
/// a `dead_letters` row records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivesUp {
    /// JetStream, after `max_deliver` deliveries: it emits a MAX_DELIVERIES advisory, which the
    /// dead-letter service captures (the seed article's design; the inventory worker's). An
    /// advisory is best effort, so on the work queue the dead-letter service's sweep finds a
    /// message whose advisory was lost: such a message stays in the stream.
    JetStream,
    /// The consumer itself, on its `max_deliver`th failed attempt: it stores a copy in the
    /// dead-letter stream, then terminates the message; JetStream has no delivery limit, so
    /// there is no advisory to lose. For a consumer of a limits stream (the projection of
    /// `order_events`), where nothing after the fact tells a message given up on from one
    /// processed, so a lost advisory could not be recovered.
    Consumer,
    /// Nobody: retried until it succeeds. For the dead-letter service's own capture, whose
    /// failures are the database's or NATS's, never the message's (what it cannot read it records
    /// as it is), and which has nobody to hand a message on to.
    Never,
}

/// Settings of a durable pull consumer run by [`crate::consumer::IdempotentConsumer`].
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable consumer name; also the key under which processed message IDs are recorded.
    pub name: String,
    /// Most messages handled in one database transaction.
    pub batch_size: usize,
    /// Attempts before a message that keeps failing is given up on (by whom: `gives_up`).
    pub max_deliver: i64,
    /// Who gives up on a message after `max_deliver` failed attempts.
    pub gives_up: GivesUp,
    /// The consumer's `BackOff`: how long JetStream waits, after each delivery, for an
    /// acknowledgement before it delivers the message again (a failed attempt, or a worker that
    /// crashed or hung). The first value is also the ack wait; the last repeats.
    pub backoff: Vec<Duration>,
    /// Most messages delivered and not yet acknowledged, across all processes sharing the consumer.
    pub max_ack_pending: i64,
    /// `{prefix}_MAX_IN_PROGRESS`: the longest a batch's work may keep its messages "in
    /// progress". Past it, what is not done is left for redelivery, and a database that has not
    /// answered by then counts as unavailable.
    pub max_in_progress: Duration,
    /// `INSTANCE_ID`: this process, among those sharing the consumer (default: host name and
    /// process ID). Recorded with each processed message.
    pub instance: String,
}

impl ConsumerSettings {
    /// Reads `{prefix}_CONSUMER`, `{prefix}_BATCH_SIZE`, `{prefix}_MAX_DELIVER`, `{prefix}_BACKOFF`,
    /// `{prefix}_MAX_ACK_PENDING` and `{prefix}_MAX_IN_PROGRESS`.
    pub fn from_env(env: &Env, prefix: &str, default_name: &str) -> Result<Self, ConfigError> {
        // Defaults: 5 deliveries, 1+2+4+8 s apart; JetStream gives up on a message that always
        // fails when the 5th wait (8 s again) runs out, about 23 s after its first delivery.
        Self::from_env_with_defaults(env, prefix, default_name, 5, &[1, 2, 4, 8].map(Duration::from_secs))
    }

    /// As [`Self::from_env`], with a service's own defaults for `{prefix}_MAX_DELIVER` and
    /// `{prefix}_BACKOFF`, applied *before* validation, so that setting either one alone is
    /// checked against the other's default.
    pub fn from_env_with_defaults(
        env: &Env,
        prefix: &str,
        default_name: &str,
        default_max_deliver: i64,
        default_backoff: &[Duration],
    ) -> Result<Self, ConfigError> {
        let var = |suffix: &str| format!("{prefix}_{suffix}");
        let name = env.string(&var("CONSUMER"), default_name);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::new(&var("CONSUMER"), &name, "use letters, digits, '-' and '_' only"));
        }
        let max_deliver = env.number(&var("MAX_DELIVER"), default_max_deliver, 1..=1_000)?;
        let backoff = env.durations(&var("BACKOFF"), default_backoff)?;
        if backoff.is_empty() || backoff.iter().any(Duration::is_zero) {
            return Err(ConfigError::new(
                &var("BACKOFF"),
                &env.string(&var("BACKOFF"), ""),
                "every pause must be longer than zero",
            ));
        }
        // JetStream rejects a backoff list that is not shorter than max_deliver.
        if backoff.len() as i64 >= max_deliver {
            return Err(ConfigError::new(
                &var("BACKOFF"),
                &env.string(&var("BACKOFF"), ""),
                format!("must list fewer pauses than {} ({max_deliver})", var("MAX_DELIVER")),
            ));
        }
        Ok(Self {
            name,
            batch_size: env.number(&var("BATCH_SIZE"), 100, 1..=1_000)?,
            max_deliver,
            gives_up: GivesUp::JetStream,
            backoff,
            max_ack_pending: env.number(&var("MAX_ACK_PENDING"), 1_000, 1..=100_000)?,
            max_in_progress: positive(env, &var("MAX_IN_PROGRESS"), Duration::from_secs(30))?,
            instance: env.raw("INSTANCE_ID").unwrap_or_else(default_instance_id),
        })
    }

    /// Whether a failed delivery number `attempt` (1-based) is the last one.
    pub fn is_last_attempt(&self, attempt: u64) -> bool {
        self.gives_up != GivesUp::Never && attempt >= self.max_deliver.unsigned_abs()
    }

    /// The consumer's `max_deliver` as JetStream sees it: -1 (no limit) unless JetStream is the
    /// one that gives up.
    pub fn jetstream_max_deliver(&self) -> i64 {
        match self.gives_up {
            GivesUp::JetStream => self.max_deliver,
            GivesUp::Consumer | GivesUp::Never => -1,
        }
    }

    /// How long JetStream waits after delivery number `attempt` (1-based) before the next one.
    pub fn delay_after(&self, attempt: u64) -> Duration {
        let index = (attempt.max(1) - 1) as usize;
        self.backoff[index.min(self.backoff.len() - 1)]
    }
}

/// `<host name>-<process ID>`: distinct for replicas on one host and across containers.
fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert!(parse_bytes("12 parsecs").is_err());
    }

    #[test]
    fn an_error_names_the_variable_and_the_rule() {
        let env = Env::from_pairs([("WORKER_MAX_DELIVER", "zero")]);
        let err = ConsumerSettings::from_env(&env, "WORKER", "w").unwrap_err();
        assert_eq!(err.variable, "WORKER_MAX_DELIVER");
        assert!(err.to_string().contains("WORKER_MAX_DELIVER=\"zero\""), "{err}");
    }

    #[test]
    fn a_backoff_list_must_be_shorter_than_max_deliver() {
        let env = Env::from_pairs([("WORKER_MAX_DELIVER", "3"), ("WORKER_BACKOFF", "1s,2s,3s")]);
        let err = ConsumerSettings::from_env(&env, "WORKER", "w").unwrap_err();
        assert_eq!(err.variable, "WORKER_BACKOFF");
    }

    #[test]
    fn default_retries_dead_letter_within_thirty_seconds() {
        let settings = ConsumerSettings::from_env(&Env::from_pairs([]), "WORKER", "w").unwrap();
        // Every delivery, the last included, waits its BackOff step before JetStream moves on.
        let until_given_up: Duration =
            (1..=settings.max_deliver as u64).map(|attempt| settings.delay_after(attempt)).sum();
        assert_eq!(until_given_up, Duration::from_secs(1 + 2 + 4 + 8 + 8));
        assert!(until_given_up < Duration::from_secs(30));
        // After the last listed pause, the last one repeats.
        assert_eq!(settings.delay_after(99), Duration::from_secs(8));
    }

    #[test]
    fn passwords_and_tokens_are_redacted_and_the_rest_kept() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/orders"), "postgres://app:***@db:5432/orders");
        assert_eq!(redact("nats://t0ken@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("nats://u:p@a:4222,nats://u:p@b:4222"), "nats://u:***@a:4222,nats://u:***@b:4222");
        assert_eq!(redact("postgres://app@db/orders"), "postgres://app@db/orders");
        assert_eq!(redact("http://host/path?q=a@b"), "http://host/path?q=a@b");
        assert_eq!(redact("5s"), "5s");
    }

    #[test]
    fn printing_the_settings_never_prints_a_password_or_token() {
        let database =
            DatabaseConfig::from_env(&Env::from_pairs([("DATABASE_URL", "postgres://app:s3cret@db/orders")]))
                .unwrap();
        let shown = format!("{database:?}");
        assert!(shown.contains("postgres://app:***@db/orders") && !shown.contains("s3cret"), "{shown}");
        for url in ["nats://u:s3cret@a:4222,nats://u:s3cret@b:4222", "nats://s3cret-token@a:4222"] {
            let nats = NatsConfig::from_env(&Env::from_pairs([("NATS_URL", url)])).unwrap();
            let shown = format!("{nats:?}");
            assert!(shown.contains("@a:4222") && !shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn a_bad_url_is_named_in_the_error_without_its_password() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql://app:s3cret@db/orders")]);
        let err = DatabaseConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL=\"mysql://app:***@db/orders\""), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::from_pairs([("NATS_URL", "  ")]);
        assert_eq!(NatsConfig::from_env(&env).unwrap().url, NatsConfig::DEFAULT_URL);
    }

    #[test]
    fn nats_url_may_list_several_servers() {
        let env = Env::from_pairs([("NATS_URL", "nats://u:p@a:4222, nats://u:p@b:4223,c:4224")]);
        let config = NatsConfig::from_env(&env).unwrap();
        let ports: Vec<u16> = config.servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(config.stream_replicas, 1);
    }

    #[test]
    fn a_bad_server_in_the_list_is_refused_naming_nats_url_and_no_password() {
        for url in ["nats://u:s3cret@a:4222,", "nats://u:s3cret@a:4222,http://b:80"] {
            let err = NatsConfig::from_env(&Env::from_pairs([("NATS_URL", url)])).unwrap_err();
            assert_eq!(err.variable, "NATS_URL");
            assert!(err.to_string().contains("server 2"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        let replicas = |value| NatsConfig::from_env(&Env::from_pairs([("STREAM_REPLICAS", value)]));
        assert_eq!(replicas("3").unwrap().stream_replicas, 3);
        for bad in ["0", "6", "three"] {
            assert_eq!(replicas(bad).unwrap_err().variable, "STREAM_REPLICAS");
        }
    }

    #[test]
    fn a_bad_database_url_is_refused_at_start_up() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql:/nope")]);
        let err = DatabaseConfig::from_env(&env).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
    }

    #[test]
    fn processed_ids_are_kept_at_least_as_long_as_a_dead_letter_can_be_captured() {
        let err =
            RelaySettings::from_env(&Env::from_pairs([("PROCESSED_MESSAGES_RETENTION", "7d")])).unwrap_err();
        assert_eq!(err.variable, "PROCESSED_MESSAGES_RETENTION");
        let shorter = [("PROCESSED_MESSAGES_RETENTION", "7d"), ("UNPROCESSED_STREAM_MAX_AGE", "3d")];
        assert!(RelaySettings::from_env(&Env::from_pairs(shorter)).is_ok());
        let err = RelaySettings::from_env(&Env::from_pairs([("PRUNE_INTERVAL", "0s")])).unwrap_err();
        assert_eq!(err.variable, "PRUNE_INTERVAL");
    }
}
