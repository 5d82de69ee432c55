//! Connecting to NATS, as the service's own user (see [`crate::nats::auth`]).

pub mod auth;

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, jetstream};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, Env, redact},
    messaging::topology::{EventsStreamSettings, OrdersStreamSettings},
};

/// How often the client pings its server. A server cut off by the network (a partition) closes
/// nothing: the client finds out only when its pings go unanswered, and drops the connection
/// after more than two. At async-nats's default of one ping a minute that left a service publishing
/// into a dead connection for two to three minutes (seen in `scripts/test-compose --cluster`);
/// every 5 s it is about 15 s, then the client reconnects to another node.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to NATS, retrying until the server answers or `shutdown` is cancelled (a service
/// may start before its broker, as in `docker compose up`). Once connected, the client
/// reconnects by itself, buffering publishes while the server is away.
///
/// The service logs in as [`NatsConfig::auth`] says. A server that refuses the credentials is
/// retried too (an operator may be fixing the server's users), but logged at error with what to
/// check, never with the secret.
pub async fn connect(
    config: &NatsConfig,
    service: &str,
    shutdown: &CancellationToken,
) -> Option<(Client, jetstream::Context)> {
    let mut attempt: u32 = 0;
    loop {
        let options = ConnectOptions::new()
            .name(service)
            .custom_inbox_prefix(inbox_prefix(service))
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(PING_INTERVAL)
            .event_callback(|event| async move {
                match event {
                    Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    Event::Connected => tracing::info!("connected to NATS"),
                    // A publish or subscription the server's permissions refuse (see
                    // deploy/nats/nats-server.conf): the service lacks a right it needs.
                    Event::ServerError(err) => tracing::error!(error = %err, "NATS server error"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            });
        let url = crate::config::redact(&config.url);
        let options = match config.auth.apply(options).await {
            Ok(options) => options,
            Err(err) => {
                // The files were checked at start-up; one that went away since is an error to
                // report, and perhaps to see fixed.
                tracing::error!(login = %config.auth.describe(), error = %err, "cannot read the NATS credentials");
                crate::shutdown::sleep_or_cancel(Duration::from_secs(2), shutdown).await;
                if shutdown.is_cancelled() {
                    return None;
                }
                continue;
            }
        };
        match options.connect(config.servers.as_slice()).await {
            Ok(client) => {
                tracing::info!(%url, login = %config.auth.describe(), "logged in to NATS");
                let js = jetstream::new(client.clone());
                return Some((client, js));
            }
            Err(err) => {
                attempt += 1;
                let pause = Duration::from_millis(200 * u64::from(attempt.min(10)));
                if is_refused_login(&err) {
                    tracing::error!(%url, login = %config.auth.describe(), error = %err, retry_in = ?pause, "NATS refused this service's credentials: check NATS_URL, NATS_CREDS or NATS_NKEY_SEED_FILE against the server's users");
                } else {
                    tracing::warn!(%url, error = %err, retry_in = ?pause, "cannot reach NATS yet");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// The prefix of the reply subjects of `service`'s requests and pulls: `_INBOX_order_api` for
/// order-api. Replies (JetStream acks, pulled messages) travel on these subjects, so a user
/// allowed to subscribe to the usual shared `_INBOX.>` could read every other client's; with a
/// prefix of its own, each service's NATS user is allowed its own replies only
/// (deploy/nats/nats-server.conf).
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{}", service.replace('-', "_"))
}

/// Whether NATS answered, and refused to let this client log in (wrong or missing
/// credentials), rather than not answering at all.
pub fn is_refused_login(err: &async_nats::ConnectError) -> bool {
    matches!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication
    )
}

/// Sends what the client still buffers (acks, publishes) before the process exits, waiting at
/// most `limit`: with NATS away, an unbounded flush would keep a stopping service alive until
/// NATS came back.
pub async fn flush_before_exit(client: &Client, limit: Duration) {
    if !is_connected(client) {
        tracing::warn!("not connected to NATS: exiting without flushing what the client buffers");
        return;
    }
    match tokio::time::timeout(limit, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "could not flush the NATS connection before exiting"),
        Err(_) => {
            tracing::warn!(?limit, "NATS did not take the last buffered messages in time; exiting anyway")
        }
    }
}

/// Whether the client is connected right now (for readiness checks).
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
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
    /// this project declares (see [`crate::messaging::topology`]). 1 for a single server; 3 on a
    /// three-node cluster, so that losing one node loses no message and stops nothing.
    pub stream_replicas: usize,
    /// Credentials (from `NATS_URL`, `NATS_CREDS` or `NATS_NKEY_SEED_FILE`) and TLS
    /// (`NATS_TLS_*`): see [`crate::nats::auth`].
    pub auth: crate::nats::auth::NatsAuth,
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
            auth: crate::nats::auth::NatsAuth::from_env(env, &url)?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn printing_the_settings_never_prints_a_password_or_token() {
        for url in ["nats://u:s3cret@a:4222,nats://u:s3cret@b:4222", "nats://s3cret-token@a:4222"] {
            let nats = NatsConfig::from_env(&Env::from_pairs([("NATS_URL", url)])).unwrap();
            let shown = format!("{nats:?}");
            assert!(shown.contains("@a:4222") && !shown.contains("s3cret"), "{shown}");
        }
    }
}
