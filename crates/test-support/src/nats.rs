//! A nats-server of the pinned version, one per test.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{free_port, log_dir, wait_until, workspace_root};

/// Keep in step with `scripts/ensure-tools`.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// A nats-server with JetStream on a free port and a temporary store directory, killed on drop.
/// It can be stopped and started again on the same port and store, to test outages.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
    log: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until JetStream answers.
    pub async fn start() -> Self {
        let store = tempfile::Builder::new().prefix("nats-test-").tempdir().expect("temp dir");
        let port = free_port();
        let log = log_dir().join(format!("nats-{port}.log"));
        let mut server = Self { child: None, port, store, log };
        server.start_again().await;
        server
    }

    /// The pinned binary: `NATS_SERVER_BIN`, or the one `scripts/ensure-tools` installs.
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
            return PathBuf::from(path);
        }
        let path = workspace_root().join(format!(".tools/nats-server-{NATS_SERVER_VERSION}/bin/nats-server"));
        assert!(
            path.exists(),
            "nats-server {NATS_SERVER_VERSION} is not installed at {}: run scripts/ensure-tools (scripts/test does)",
            path.display()
        );
        path
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (Re)starts the server on its port and store, and waits until JetStream answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let url = self.url();
        wait_until("nats-server accepts JetStream requests", Duration::from_secs(20), || async {
            let client = async_nats::connect(&url).await.ok()?;
            async_nats::jetstream::new(client).query_account().await.ok()
        })
        .await;
    }

    /// Stops the server abruptly (SIGKILL), as a crash or a network cut would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Freezes the server (SIGSTOP), as a hung broker or a stalled VM would: its TCP connections
    /// stay open, but it answers nothing until [`NatsServer::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("nats-server is running");
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} nats-server");
    }

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect to the test nats-server")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
