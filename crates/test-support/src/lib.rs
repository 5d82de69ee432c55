//! Real servers and real processes for the tests of every crate. No mocks: a test gets its own
//! nats-server (pinned version, free port, temporary store, killed on drop), its own database on
//! a shared Postgres (or, to break it, a Postgres server of its own), and the services themselves,
//! in-process or as the real binaries.
//!
//! # Layout
//! - [`nats`]: [`NatsServer`], a nats-server process per test, with the repository's users
//!   ([`NatsUser`]).
//! - [`nats_cluster`]: [`NatsCluster`], three routed nats-servers, with nodes to kill and restart.
//! - [`postgres`]: [`TestDatabase`] (a fresh database per test, with the services' roles:
//!   [`PgRole`]) and [`PostgresServer`] (a private server, for tests that stop Postgres).
//! - [`process`]: [`ServiceProcess`], a service binary started as a child process.
//! - [`http`]: small clients for the services' HTTP APIs.
//! - [`browser`]: [`Browser`](browser::Browser), a headless Chromium driven over WebDriver.
//! - [`metrics`]: scraping and reading `GET /metrics`.
//! - [`otlp`]: an OTLP/HTTP receiver that keeps the spans services export.
//! - [`stack`]: [`Stack`](stack::Stack), the whole system as real processes.
//! - [`wait_until`]: await a condition with a deadline, instead of sleeping.

pub mod browser;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod nats_cluster;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod stack;

pub use nats::{NatsServer, NatsUser};
pub use nats_cluster::NatsCluster;
pub use postgres::{PgRole, PostgresServer, TestDatabase};
pub use process::ServiceProcess;

use std::{future::Future, path::PathBuf, time::Duration};

/// Shows the test's own logs in its output when `TEST_LOG` is set (e.g. `TEST_LOG=debug`), in
/// tracing's plain format: for tests whose services run as processes, which log by themselves.
/// Safe to call from every helper; only the first call installs the subscriber.
pub fn init_logging() {
    init_logging_with(|filter| tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().init());
}

/// The same, installing the subscriber with `install` (given the filter): tests that run a
/// service in-process pass `shared::telemetry::init_for_tests`, so that their logs are the
/// service's own, trace IDs and all. (This crate does not depend on `shared`, to stay light.)
pub fn init_logging_with(install: impl FnOnce(&str)) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let filter = if filter == "1" { "info,sqlx=warn".to_owned() } else { filter };
            install(&filter);
        }
    });
}

/// The repository's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Polls `check` every 50 ms until it returns `Some`, and returns that value. Panics with `what`
/// once `timeout` has passed: a condition awaited with a deadline, not a sleep.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1, for a server the caller is about to start.
///
/// The port must stay free from now until the server binds it, so it is chosen **below the
/// kernel's ephemeral range** (`net.ipv4.ip_local_port_range`, 32768 to 60999 by default).
/// A port in that range can be taken meanwhile as the source port of any outgoing
/// connection. That was seen here: a node of a test cluster dialled another's route port
/// before it listened, the kernel picked that same port as the source, the socket connected
/// to itself, and the node then could not bind its port. Below the range only another test
/// choosing a port can take it, so each choice is also reserved for a while with a file in
/// the temporary directory that other test processes respect.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let below = ephemeral_ports_start();
    if below <= LOWEST + 1_000 {
        // Too little room below the range on this machine: take what the kernel gives.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        return listener.local_addr().expect("local address").port();
    }
    loop {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = LOWEST + (random % u64::from(below - LOWEST)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && reserve_port(port) {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (32768 if it cannot be read).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Claims `port` for this test process: false if another claimed it in the last 10 minutes
/// (its server may not be listening yet). Claims are files, kept until they are stale.
fn reserve_port(port: u16) -> bool {
    const STALE: std::time::Duration = std::time::Duration::from_secs(600);
    let dir = std::env::temp_dir().join("orders-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // No claims on this machine: the bind check alone.
    }
    let claim = dir.join(port.to_string());
    let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(&claim);
    match create() {
        Ok(_) => true,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let age =
                std::fs::metadata(&claim).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            // A stale claim is taken over; of two processes doing so at once, one wins.
            age.is_some_and(|age| age > STALE) && std::fs::remove_file(&claim).is_ok() && create().is_ok()
        }
        Err(_) => true,
    }
}

/// Where tests write the logs of the servers and services they start, kept after the run.
pub fn log_dir() -> PathBuf {
    let dir = workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("create target/test-logs");
    dir
}
