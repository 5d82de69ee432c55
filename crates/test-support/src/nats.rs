//! A nats-server of the pinned version, one per test, configured by the repository's own
//! `deploy/nats/nats-server.conf`: the users and permissions the tests run under are the ones
//! compose and run-local deploy, so a test that passes proves that file grants enough, and the
//! least-privilege tests prove it grants no more.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{free_port, log_dir, wait_until, workspace_root};

/// Keep in step with `scripts/ensure-tools`.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// The users of `deploy/nats/nats-server.conf`: one per service, and `admin` for test setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsUser {
    Admin,
    OrderApi,
    InventoryWorker,
    DlqService,
}

impl NatsUser {
    pub const SERVICES: [NatsUser; 3] = [NatsUser::OrderApi, NatsUser::InventoryWorker, NatsUser::DlqService];

    /// The user name in the server's configuration.
    pub fn name(self) -> &'static str {
        match self {
            NatsUser::Admin => "admin",
            NatsUser::OrderApi => "order_api",
            NatsUser::InventoryWorker => "inventory_worker",
            NatsUser::DlqService => "dlq_service",
        }
    }

    /// The user of the service whose binary is `binary`.
    pub fn of_service(binary: &str) -> Self {
        match binary {
            "order-api" => NatsUser::OrderApi,
            "inventory-worker" => NatsUser::InventoryWorker,
            "dlq-service" => NatsUser::DlqService,
            other => panic!("no NATS user for {other}"),
        }
    }

    /// The environment variable the configuration reads this user's password from.
    pub fn password_variable(self) -> &'static str {
        match self {
            NatsUser::Admin => "NATS_ADMIN_PASSWORD",
            NatsUser::OrderApi => "ORDER_API_NATS_PASSWORD",
            NatsUser::InventoryWorker => "INVENTORY_WORKER_NATS_PASSWORD",
            NatsUser::DlqService => "DLQ_SERVICE_NATS_PASSWORD",
        }
    }

    /// The prefix of this user's reply subjects, the only ones it may subscribe to (as
    /// `shared::nats::inbox_prefix` sets it for the service).
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }

    /// The password test servers give this user.
    pub fn password(self) -> String {
        format!("{}-test-password", self.name())
    }

    pub(crate) const ALL: [NatsUser; 4] =
        [NatsUser::Admin, NatsUser::OrderApi, NatsUser::InventoryWorker, NatsUser::DlqService];
}

/// The repository's nats-server configuration.
pub fn config_file() -> PathBuf {
    workspace_root().join("deploy/nats/nats-server.conf")
}

/// A nats-server with JetStream on a free port and a temporary store directory, killed on drop.
/// It can be stopped and started again on the same port and store, to test outages.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
    log: PathBuf,
    /// The configuration file: the repository's, or one a test wrote.
    config: PathBuf,
}

impl NatsServer {
    /// Starts a server with the repository's configuration and waits until JetStream answers.
    pub async fn start() -> Self {
        let store = tempfile::Builder::new().prefix("nats-test-").tempdir().expect("temp dir");
        let port = free_port();
        let log = log_dir().join(format!("nats-{port}.log"));
        let mut server = Self { child: None, port, store, log, config: config_file() };
        server.start_again().await;
        server
    }

    /// Starts a server with a configuration of the test's own (e.g. NKey users, TLS), and waits
    /// until it listens. `config` may not set the address, port or store directory.
    pub async fn start_with_config(config: &str) -> Self {
        let store = tempfile::Builder::new().prefix("nats-test-").tempdir().expect("temp dir");
        let port = free_port();
        let log = log_dir().join(format!("nats-{port}.log"));
        let file = store.path().join("test-server.conf");
        std::fs::write(&file, config).expect("write the test server's configuration");
        let mut server = Self { child: None, port, store, log, config: file };
        server.spawn();
        let address = format!("127.0.0.1:{port}");
        wait_until("nats-server listens", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(&address).await.ok()
        })
        .await;
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

    /// The URL to log in as `admin`, who may do anything (test setup, in-process services).
    pub fn url(&self) -> String {
        self.url_as(NatsUser::Admin)
    }

    /// The URL to log in as `user` (user and password in the URL, as a deployment would give
    /// them in `NATS_URL`).
    pub fn url_as(&self, user: NatsUser) -> String {
        format!("nats://{}:{}@127.0.0.1:{}", user.name(), user.password(), self.port)
    }

    /// The URL without credentials (the repository's configuration refuses anonymous clients).
    pub fn address(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's temporary directory (removed on drop): a place for a test's key files.
    pub fn dir(&self) -> &std::path::Path {
        self.store.path()
    }

    /// (Re)starts the server on its port and store, and waits until JetStream answers (as
    /// `admin`: use it with the repository's configuration).
    pub async fn start_again(&mut self) {
        self.spawn();
        let address = self.address();
        wait_until("nats-server accepts JetStream requests", Duration::from_secs(20), || async {
            let client = connect_as(&address, NatsUser::Admin).await.ok()?;
            async_nats::jetstream::new(client).query_account().await.ok()
        })
        .await;
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        self.child = Some(spawn_server(&self.config, self.port, &[], self.store.path(), &self.log));
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

    /// A client connected to this server as `admin`.
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(NatsUser::Admin).await
    }

    /// A client connected to this server as `user`.
    pub async fn client_as(&self, user: NatsUser) -> async_nats::Client {
        connect_as(&self.address(), user).await.expect("connect to the test nats-server")
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

/// Starts the pinned nats-server with `config` (the passwords of every [`NatsUser`] in its
/// environment) on 127.0.0.1:`port`, with the store in `store`, `extra` flags, and its output
/// appended to `log`.
pub(crate) fn spawn_server(
    config: &std::path::Path,
    port: u16,
    extra: &[String],
    store: &std::path::Path,
    log: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let mut command = Command::new(NatsServer::binary());
    command.arg("-c").arg(config);
    for user in NatsUser::ALL {
        command.env(user.password_variable(), user.password());
    }
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .arg("-sd")
        .arg(store)
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start nats-server")
}

pub(crate) async fn connect_as(
    address: impl async_nats::ToServerAddrs,
    user: NatsUser,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::with_user_and_password(user.name().to_owned(), user.password())
        .connect(address)
        .await
}
