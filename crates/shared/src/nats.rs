//! Connecting to NATS, as the service's own user (see [`crate::nats_auth`]).

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, jetstream};
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;

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
