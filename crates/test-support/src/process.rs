//! Service binaries started as child processes, as in production.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::{log_dir, wait_until};

/// A running service binary (`order-api`, `inventory-worker`, …), killed on drop. Its output
/// goes to `target/test-logs/<name>-<pid>.log`.
#[derive(Debug)]
pub struct ServiceProcess {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with the given environment (on top of a clean one: only `PATH` and
    /// `RUST_LOG` are inherited, so a developer's settings cannot leak into a test).
    pub fn spawn(binary: &str, name: &str, env: &[(&str, String)]) -> Self {
        let path = binary_path(binary);
        let log = log_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("service log file");
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        Self { name: name.to_owned(), child, log }
    }

    /// The exit status, if the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// The process ID, or `None` once the process has exited and been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until `GET {base_url}/readyz` answers 200.
    pub async fn wait_ready(&mut self, base_url: &str) {
        let url = format!("{base_url}/readyz");
        let http = reqwest::Client::new();
        let name = self.name.clone();
        let log = self.log.clone();
        wait_until(&format!("{name} is ready (log: {})", log.display()), Duration::from_secs(60), || {
            let http = http.clone();
            let url = url.clone();
            let exited = self.child.try_wait().ok().flatten();
            let (name, log) = (name.clone(), log.clone());
            async move {
                if let Some(status) = exited {
                    panic!("{name} exited with {status} before becoming ready; log:\n{}", tail(&log));
                }
                let response = http.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{} did not exit within 30 s of SIGTERM; log:\n{}", self.name, tail(&self.log))
            })
            .expect("wait for the process")
    }

    /// SIGKILL: no chance to finish, ack or flush anything, like a crash.
    pub async fn kill(&mut self) {
        self.child.kill().await.ok();
    }

    /// The last lines the process wrote, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The path of a workspace binary built for this run (`target/debug/<name>`), found beside the
/// running executable: a test (in `target/<profile>/deps/`) or a binary such as `chaos`.
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}
