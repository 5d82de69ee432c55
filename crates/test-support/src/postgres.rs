//! Postgres for tests: a fresh database per test, or a private server to stop and start.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};

use crate::{free_port, wait_until, workspace_root};

/// The services' Postgres roles, as `scripts/provision-db` creates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    OrderApi,
    InventoryWorker,
    DlqService,
}

impl PgRole {
    pub const ALL: [PgRole; 3] = [PgRole::OrderApi, PgRole::InventoryWorker, PgRole::DlqService];

    pub fn name(self) -> &'static str {
        match self {
            PgRole::OrderApi => "order_api",
            PgRole::InventoryWorker => "inventory_worker",
            PgRole::DlqService => "dlq_service",
        }
    }

    /// The schema this role owns.
    pub fn schema(self) -> &'static str {
        match self {
            PgRole::OrderApi => contract::schemas::ORDER_API,
            PgRole::InventoryWorker => contract::schemas::INVENTORY,
            PgRole::DlqService => contract::schemas::DLQ,
        }
    }

    /// The role of the service whose binary is `binary`.
    pub fn of_service(binary: &str) -> Self {
        match binary {
            "order-api" => PgRole::OrderApi,
            "inventory-worker" => PgRole::InventoryWorker,
            "dlq-service" => PgRole::DlqService,
            other => panic!("no Postgres role for {other}"),
        }
    }
}

/// The server tests create their databases on: `TEST_DATABASE_URL` (scripts/test points it at
/// a throwaway server it starts), else the local default.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database name unique to one test, dropped with it. The database itself is created by
/// whichever service connects first (services create their database if it is missing), or by
/// [`TestDatabase::create`].
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    server_url: String,
}

impl TestDatabase {
    /// A new, not yet created database on the shared test server.
    pub fn new() -> Self {
        Self::on(&admin_url())
    }

    /// A new, not yet created database on the server at `server_url`.
    pub fn on(server_url: &str) -> Self {
        Self { name: format!("test_{}", uuid::Uuid::new_v4().simple()), server_url: server_url.to_owned() }
    }

    /// The administrator's URL of this database (a superuser on the test server): for test
    /// setup, and for services run in-process by their own crate's tests.
    pub fn url(&self) -> String {
        let options: PgConnectOptions = self.server_url.parse().expect("TEST_DATABASE_URL");
        self.url_for(options.get_username())
    }

    /// The `DATABASE_URL` of a service logging in as its own role (after
    /// [`provision`](Self::provision); the test server trusts local connections, so there is no
    /// password).
    pub fn url_as(&self, role: PgRole) -> String {
        self.url_for(role.name())
    }

    fn url_for(&self, user: &str) -> String {
        let options: PgConnectOptions = self.server_url.parse().expect("TEST_DATABASE_URL");
        let port = options.get_port();
        let host = options.get_host().to_owned();
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    /// Creates the database if missing and gives each service its role and schema, by running
    /// the repository's `scripts/provision-db` (so the tests prove the script itself). Safe to
    /// run from parallel tests: the script tolerates roles created concurrently.
    pub async fn provision(&self) {
        let script = workspace_root().join("scripts/provision-db");
        let output = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(self.url())
            .env("PG_BIN_DIR", pg_bin_dir())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .expect("scripts/provision-db finished within 60 s")
            .expect("run scripts/provision-db");
        assert!(
            output.status.success(),
            "scripts/provision-db failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A pool on this database whose connections work in `schema` (as the owning service's do).
    pub async fn pool(&self, schema: &str) -> PgPool {
        let options: PgConnectOptions = self.url().parse().expect("database url");
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", schema)]))
            .await
            .expect("connect to the test database")
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime we may block: use a thread with its own.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&server_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.ok();
                }
            });
        })
        .join()
        .ok();
    }
}

/// A Postgres server of a test's own (temporary data directory, free port, `fsync` off), for
/// tests that stop and restart it. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    log: PathBuf,
    running: bool,
    frozen: bool,
}

impl PostgresServer {
    pub async fn start() -> Self {
        let bin = pg_bin_dir();
        let port = free_port();
        let data = std::env::temp_dir().join(format!("pg-test-{}", uuid::Uuid::new_v4().simple()));
        // Beside the data directory: the server runs as `postgres`, which may not write to target/.
        let log = data.with_extension("log");
        run_as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let mut server = Self { bin, data, port, log, running: false, frozen: false };
        server.start_again().await;
        server
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn start_again(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c full_page_writes=off",
            self.port
        );
        run_as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", path_str(&self.data), "-l", path_str(&self.log), "-o", &options, "-w", "start"],
        );
        self.running = true;
        let url = self.admin_url();
        wait_until("the private Postgres accepts connections", Duration::from_secs(30), || async {
            PgConnection::connect(&url).await.ok()
        })
        .await;
    }

    /// Freezes the server and every session of it (SIGSTOP), as a host that vanished from the
    /// network would look: connections stay open, and nothing answers. [`thaw`](Self::thaw) undoes it.
    pub fn freeze(&mut self) {
        self.signal_all("STOP");
        self.frozen = true;
    }

    pub fn thaw(&mut self) {
        if std::mem::take(&mut self.frozen) {
            self.signal_all("CONT");
        }
    }

    /// Sends `signal` to the postmaster (its PID is the first line of `postmaster.pid`) and to
    /// every process it started. A session may end between the listing and the signal: only the
    /// postmaster must take it.
    fn signal_all(&self, signal: &str) {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).expect("postmaster.pid");
        let postmaster = pid_file.lines().next().expect("postmaster PID").trim().to_owned();
        let children = Command::new("pgrep").args(["-P", &postmaster]).output().expect("run pgrep");
        let kill = |pid: &str| Command::new("kill").arg(format!("-{signal}")).arg(pid).status();
        assert!(kill(&postmaster).is_ok_and(|s| s.success()), "kill -{signal} {postmaster} failed");
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            kill(child).ok();
        }
    }

    /// Stops the server at once (`-m immediate`): clients see their connections drop.
    pub fn stop(&mut self) {
        if self.running {
            self.thaw(); // A frozen server cannot stop.
            run_as_postgres(
                &self.bin,
                "pg_ctl",
                &["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"],
            );
            self.running = false;
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.data).ok();
    }
}

/// Where Postgres's server binaries are: `PG_BIN_DIR`, else the newest Debian install.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect("Postgres server binaries not found: run scripts/ensure-tools (scripts/test does)")
}

/// Postgres refuses to run as root; when we are root, run its tools as the `postgres` user.
fn run_as_postgres(bin: &Path, tool: &str, args: &[&str]) {
    let program = bin.join(tool);
    let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let mut command = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    let output = command.args(args).output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
