//! The faults, injected one at a time at seeded random moments while the load runs. Each is
//! logged with a timestamp when it starts and when the system is ready again, and the next one
//! waits until every service answers `/readyz`: faults are spaced so that each is recovered from.

use std::{fmt, panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;

use anyhow::Context;
use rand::{RngExt, rngs::StdRng, seq::SliceRandom};
use sqlx::{Connection, PgConnection};
use test_support::{PostgresServer, stack::Stack};
use tokio::time::Instant;

use crate::say;

/// How long the whole system may take to answer `/readyz` again after a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one worker, start it again.
    KillWorker,
    /// SIGKILL order-api, start it again on the same port.
    KillOrderApi,
    /// SIGKILL dlq-service, start it again.
    KillDlq,
    /// SIGKILL nats-server, start it again on the same store.
    RestartNats,
    /// Stop Postgres at once (`-m immediate`), start it again.
    RestartPostgres,
    /// `default_transaction_read_only = on` for every session, as after a failover to a replica.
    ReadOnly,
    /// An open transaction holds `SELECT … FOR UPDATE` on one inventory row.
    RowLock,
    /// Delete the workers' durable consumer, as an operator might.
    DeleteConsumer,
}

pub const ALL: [Fault; 8] = [
    Fault::KillWorker,
    Fault::KillOrderApi,
    Fault::KillDlq,
    Fault::RestartNats,
    Fault::RestartPostgres,
    Fault::ReadOnly,
    Fault::RowLock,
    Fault::DeleteConsumer,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillWorker => "kill-worker",
            Fault::KillOrderApi => "kill-order-api",
            Fault::KillDlq => "kill-dlq-service",
            Fault::RestartNats => "restart-nats",
            Fault::RestartPostgres => "restart-postgres",
            Fault::ReadOnly => "read-only-database",
            Fault::RowLock => "row-lock",
            Fault::DeleteConsumer => "delete-consumer",
        })
    }
}

/// Faults in rounds: each round is every fault once, in a seeded random order, so a short run
/// still meets every kind.
#[derive(Debug)]
pub struct Schedule {
    faults: Vec<Fault>,
    round: Vec<Fault>,
}

impl Schedule {
    /// Rounds of `faults` (falls back to killing a worker when none is left).
    pub fn new(faults: Vec<Fault>) -> Self {
        Self { faults, round: Vec::new() }
    }

    pub fn next(&mut self, rng: &mut StdRng) -> Fault {
        if self.round.is_empty() {
            self.round = self.faults.clone();
            self.round.shuffle(rng);
        }
        self.round.pop().unwrap_or(Fault::KillWorker)
    }
}

/// How long a fault lasts (an outage, a lock held, read-only), in a seeded range.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub outage_min: Duration,
    pub outage_max: Duration,
}

impl Durations {
    fn pick(&self, rng: &mut StdRng) -> Duration {
        rng.random_range(self.outage_min..=self.outage_max)
    }
}

/// Injects `fault`, lets it last, undoes it and waits until every service is ready again.
pub async fn inject(
    fault: Fault,
    stack: &mut Stack,
    postgres: &mut PostgresServer,
    db_url: &str,
    durations: Durations,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let hold = durations.pick(rng);
    let started = Instant::now();
    match fault {
        Fault::KillWorker => {
            let index = rng.random_range(0..stack.workers.len());
            let worker = &mut stack.workers[index];
            say(&format!("fault {fault}: SIGKILL {} (pid {})", worker.instance, pid(&worker.process)));
            worker.process.kill().await;
            tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
            supervise(fault, stack, Some(index)).await?;
        }
        Fault::KillOrderApi => {
            say(&format!("fault {fault}: SIGKILL order-api (pid {})", pid(&stack.order_api)));
            stack.order_api.kill().await;
            tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
            supervise(fault, stack, None).await?;
        }
        Fault::KillDlq => {
            let dlq = stack.dlq.as_mut().context("dlq-service runs")?;
            say(&format!("fault {fault}: SIGKILL dlq-service (pid {})", pid(&dlq.process)));
            dlq.process.kill().await;
            tokio::time::sleep(hold.min(Duration::from_secs(3))).await;
            supervise(fault, stack, None).await?;
        }
        Fault::RestartNats => {
            say(&format!("fault {fault}: SIGKILL nats-server for {hold:.1?}"));
            stack.nats.stop();
            tokio::time::sleep(hold).await;
            stack.nats.start_again().await;
        }
        Fault::RestartPostgres => {
            say(&format!("fault {fault}: Postgres stopped (immediate) for {hold:.1?}"));
            postgres.stop();
            tokio::time::sleep(hold).await;
            postgres.start_again().await;
        }
        Fault::ReadOnly => {
            say(&format!("fault {fault}: database read-only for {hold:.1?}"));
            let mut admin = admin(db_url).await?;
            // `admin` has set `default_transaction_read_only = off` for itself: it can undo this.
            for sql in ["ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"] {
                sqlx::query(sql).execute(&mut admin).await.with_context(|| sql.to_owned())?;
            }
            tokio::time::sleep(hold).await;
            for sql in ["ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"] {
                sqlx::query(sql).execute(&mut admin).await.with_context(|| sql.to_owned())?;
            }
        }
        Fault::RowLock => {
            let sku = crate::plan::PLENTIFUL[rng.random_range(0..crate::plan::PLENTIFUL.len())];
            say(&format!("fault {fault}: SELECT … FOR UPDATE on inventory row {sku} held for {hold:.1?}"));
            let mut admin = admin(db_url).await?;
            let mut tx = admin.begin().await?;
            sqlx::query("SELECT sku FROM inventory.inventory WHERE sku = $1 FOR UPDATE")
                .bind(sku)
                .fetch_one(&mut *tx)
                .await
                .context("lock the inventory row")?;
            tokio::time::sleep(hold).await;
            tx.rollback().await?;
        }
        Fault::DeleteConsumer => {
            say(&format!("fault {fault}: delete durable consumer inventory-worker on orders_stream"));
            let js = stack.nats.jetstream().await;
            let stream = js.get_stream("orders_stream").await.context("orders_stream")?;
            stream.delete_consumer("inventory-worker").await.context("delete the consumer")?;
            // The workers must notice and declare it again from the topology.
            let deadline = Instant::now() + RECOVERY_DEADLINE;
            while stream.consumer_info("inventory-worker").await.is_err() {
                anyhow::ensure!(Instant::now() < deadline, "the consumer was not declared again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            say(&format!("fault {fault}: consumer declared again after {:.1?}", started.elapsed()));
        }
    }
    let undone = started.elapsed();
    wait_all_ready(stack).await?;
    say(&format!(
        "fault {fault}: undone after {undone:.1?}; every service ready after {:.1?}",
        started.elapsed()
    ));
    Ok(())
}

/// Starts the killed service again, as a supervisor (systemd, Kubernetes) would: if it exits
/// before it is ready, it is started again, up to [`START_ATTEMPTS`] times. Each failed start
/// is logged and counted in [`FAILED_STARTS`]: a service should come back at its first start.
async fn supervise(fault: Fault, stack: &mut Stack, worker: Option<usize>) -> anyhow::Result<()> {
    for attempt in 1..=START_ATTEMPTS {
        // The test-support helpers panic when a process exits before it is ready (what a test
        // wants); here that is one failed start.
        let started = AssertUnwindSafe(async {
            match (fault, worker) {
                (Fault::KillWorker, Some(index)) => stack.restart_worker(index).await,
                (Fault::KillOrderApi, _) => stack.restart_order_api().await,
                (Fault::KillDlq, _) => stack.restart_dlq().await,
                _ => {}
            }
        })
        .catch_unwind()
        .await;
        match started {
            Ok(()) => return Ok(()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                say(&format!("fault {fault}: start attempt {attempt} FAILED: {message}"));
                FAILED_STARTS.lock().map(|mut all| all.push(format!("{fault}: {message}"))).ok();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    anyhow::bail!("the service did not start in {START_ATTEMPTS} attempts")
}

const START_ATTEMPTS: u32 = 5;

/// Starts of a service that failed (it exited before it was ready), with the reason.
pub static FAILED_STARTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// An admin session on the soak's database (superuser, always allowed to write).
async fn admin(db_url: &str) -> anyhow::Result<PgConnection> {
    let mut conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(db_url))
        .await
        .context("connect to Postgres: timed out")??;
    sqlx::query("SET default_transaction_read_only = off").execute(&mut conn).await?;
    Ok(conn)
}

/// Every service's base URL, by name.
pub fn services(stack: &Stack) -> Vec<(String, String)> {
    let mut all = vec![("order-api".to_owned(), stack.api.base_url.clone())];
    all.extend(stack.workers.iter().map(|w| (w.instance.clone(), w.inventory.base_url.clone())));
    all.extend(stack.dlq.iter().map(|d| ("dlq-service".to_owned(), d.base_url.clone())));
    all
}

/// Waits until every service answers `GET /readyz` with 200.
pub async fn wait_all_ready(stack: &Stack) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    for (name, url) in services(stack) {
        loop {
            let ok = http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} not ready {RECOVERY_DEADLINE:?} after a fault"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// A process ID for the log (`-` when the process has already exited).
fn pid(process: &test_support::ServiceProcess) -> String {
    process.id().map_or_else(|| "-".to_owned(), |pid| pid.to_string())
}
