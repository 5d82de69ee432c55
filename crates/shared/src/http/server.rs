//! Serving HTTP with limits a hostile client cannot get around.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never fires, and it accepts any
//! number of connections: a client that sends half a request line and stops holds its
//! connection (a file descriptor, a task) for ever, and a few thousand such clients exhaust the
//! process. [`serve`] is the same accept loop with two bounds:
//!
//! - a connection must deliver a request's headers within [`ServerLimits::header_read_timeout`],
//!   or it is closed;
//! - at most [`ServerLimits::max_connections`] connections are served at once; one more is
//!   closed as soon as it is accepted (and counted in `http_connections_refused_total`), so
//!   the ones already open keep working.
//!
//! On shutdown it stops accepting, lets the requests in flight finish, and closes idle
//! keep-alive connections.

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections closed on arrival because [`ServerLimits::max_connections`] were open.
pub const CONNECTIONS_REFUSED: &str = "http.connections.refused";

/// The bounds [`serve`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    /// 10 s to send a request's headers (a browser or a load balancer needs milliseconds), and
    /// 1,024 connections (far above what this system's clients open; well below the process's
    /// file limit).
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), max_connections: 1024 }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, within `limits`. Returns once
/// every connection has finished its request in flight.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, most likely: pause rather than spin.
                    tracing::warn!(error = %err, "could not accept a connection");
                    crate::shutdown::sleep_or_cancel(Duration::from_millis(100), &shutdown).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        stream.set_nodelay(true).ok();
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
