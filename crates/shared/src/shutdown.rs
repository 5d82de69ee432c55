//! Graceful shutdown: one signal, every task told, every task awaited.
//!
//! A [`CancellationToken`] is the shutdown signal. [`signal`] cancels it on SIGTERM or Ctrl-C;
//! tests cancel it themselves. A service spawns its long-running parts (HTTP server, relay,
//! consumers) into [`Tasks`]; if any of them ends on its own, the others are stopped too, so a
//! service never limps on with half its parts.

use std::{future::Future, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Cancels `token` when the process receives SIGTERM or Ctrl-C. A second signal ends the
/// process at once (exit code 130): whoever sends it has decided not to wait for the grace
/// period, and a service that ignored it would have to be killed.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
        signal().await;
        tracing::warn!("second shutdown signal: exiting now, without waiting for work in hand");
        std::process::exit(130);
    });
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                ctrl_c.await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}

/// Sleeps for `duration`, or less if `shutdown` is cancelled meanwhile.
pub async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

/// The long-running tasks of one service.
#[derive(Debug)]
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { set: JoinSet::new(), shutdown }
    }

    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Spawns a loop that runs until the shutdown signal it is given fires (a relay, a consumer).
    pub fn spawn_with_shutdown<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run = task(self.shutdown.clone());
        self.spawn(name, async move {
            run.await;
            Ok(())
        });
    }

    /// Serves HTTP until shutdown, within [`ServerLimits`](crate::http::ServerLimits); requests
    /// in flight are finished first.
    pub fn serve_http(&mut self, listener: tokio::net::TcpListener, router: axum::Router) {
        let stop = self.shutdown.clone();
        self.spawn("http", async move {
            crate::http::serve(listener, router, crate::http::ServerLimits::default(), stop).await;
            Ok(())
        });
    }

    /// Waits for shutdown (or for a task to end by itself, which triggers shutdown), then for
    /// every task to finish, up to `grace`. Returns the first error.
    pub async fn run_until_stopped(mut self, grace: Duration) -> anyhow::Result<()> {
        let mut first_error = None;
        tokio::select! {
            // Checked first: tasks end *because* of shutdown, which is not worth a warning.
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(ended) = self.set.join_next() => {
                let (name, result) = flatten(ended);
                match &result {
                    Ok(()) => tracing::warn!(task = name, "task ended before shutdown; stopping the service"),
                    Err(err) => tracing::error!(task = name, error = format!("{err:#}"), "task failed; stopping the service"),
                }
                first_error = result.err();
                self.shutdown.cancel();
            }
        }
        let drain = async {
            while let Some(ended) = self.set.join_next().await {
                let (name, result) = flatten(ended);
                match result {
                    Ok(()) => tracing::debug!(task = name, "task stopped"),
                    Err(err) => {
                        tracing::error!(
                            task = name,
                            error = format!("{err:#}"),
                            "task failed while stopping"
                        );
                        first_error.get_or_insert(err);
                    }
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "tasks still running after the grace period; abandoning them");
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn flatten(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> (&'static str, anyhow::Result<()>) {
    match joined {
        Ok(ended) => ended,
        Err(err) => ("(panicked task)", Err(anyhow::anyhow!("task panicked: {err}"))),
    }
}
