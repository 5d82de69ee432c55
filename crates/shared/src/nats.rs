//! Connecting to NATS.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, jetstream};
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;

/// Connects to NATS, retrying until the server answers or `shutdown` is cancelled (a service
/// may start before its broker, as in `docker compose up`). Once connected, the client
/// reconnects by itself, buffering publishes while the server is away.
pub async fn connect(
    config: &NatsConfig,
    service: &str,
    shutdown: &CancellationToken,
) -> Option<(Client, jetstream::Context)> {
    let mut attempt: u32 = 0;
    loop {
        let options = ConnectOptions::new()
            .name(service)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                match event {
                    Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            });
        match options.connect(config.url.as_str()).await {
            Ok(client) => {
                let js = jetstream::new(client.clone());
                return Some((client, js));
            }
            Err(err) => {
                attempt += 1;
                let pause = Duration::from_millis(200 * u64::from(attempt.min(10)));
                tracing::warn!(url = %crate::config::redact(&config.url), error = %err, retry_in = ?pause, "cannot reach NATS yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
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
