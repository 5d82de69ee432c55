//! The chaos soak (`scripts/chaos`): the whole system as real processes (two or more
//! inventory-workers, order-api, dlq-service, nats-server, a private Postgres), a seeded mix of
//! orders placed by a careful client, and faults injected at seeded random moments while they
//! flow. Once the load is done and the system has settled, it checks the promises the README
//! makes and prints each with its figures:
//!
//! - every accepted order (one that got a 202) is stored and final, and ends as its kind demands;
//! - no order's message is applied twice, and the stock is exact per SKU;
//! - every failing order and poison message is exactly one dead letter, and nothing else is;
//! - every outbox is drained, and `orders_stream` is empty;
//! - no service spins or hangs (CPU over an idle window, `/readyz`), and memory stays flat.
//!
//! It exits non-zero on any breach. The same `--seed` repeats the same orders and the same
//! faults in the same order (their exact timing, and so the interleaving, still varies).

mod checks;
mod faults;
mod load;
mod plan;
mod procs;

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use test_support::{PostgresServer, TestDatabase, stack::Stack};
use tokio::time::Instant;

use crate::{
    checks::{Snapshot, Verdicts},
    faults::{Durations, Schedule},
    load::{Counters, Outcome},
    plan::Plan,
};

#[derive(Debug, Parser)]
#[command(about = "Orders under random faults; then every invariant is checked.")]
struct Args {
    /// How many orders (poison messages included).
    #[arg(long)]
    orders: Option<usize>,
    /// Seed of the orders and of the faults: repeat a run with the seed it printed.
    #[arg(long)]
    seed: Option<u64>,
    /// The shortened form for CI: 1,200 orders, each fault at least once, under four minutes.
    #[arg(long)]
    ci: bool,
    /// Orders per second.
    #[arg(long)]
    rate: Option<f64>,
    /// How many inventory-workers (at least two).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The pause between two faults, in seconds: a seeded random value between these.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    fault_gap: Option<Vec<f64>>,
    /// How long the system may take to settle after the load, in seconds.
    #[arg(long)]
    settle: Option<u64>,
    /// The final idle window over which CPU time is measured, in seconds.
    #[arg(long)]
    idle: Option<u64>,
    /// Leave out faults (e.g. `--skip delete-consumer,row-lock`) or the poison messages that
    /// hold `\u0000` (`--skip nul-poison`): to run around a known failure until it is fixed.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// The settings of one run, after the `--ci` preset and any explicit flags.
#[derive(Debug)]
struct Settings {
    orders: usize,
    seed: u64,
    rate: f64,
    workers: usize,
    concurrency: usize,
    fault_gap: (Duration, Duration),
    outage: Durations,
    warm_up: Duration,
    settle: Duration,
    idle: Duration,
    faults: Vec<faults::Fault>,
    nul_poison: bool,
}

impl Settings {
    fn from(args: Args) -> anyhow::Result<Self> {
        let mut known: Vec<String> = faults::ALL.iter().map(ToString::to_string).collect();
        known.push(NUL_POISON.to_owned());
        if let Some(unknown) = args.skip.iter().find(|s| !known.contains(s)) {
            anyhow::bail!("--skip {unknown}: not one of {}", known.join(", "));
        }
        let seed = args.seed.unwrap_or_else(|| rand::rng().random_range(1..1_000_000));
        let (orders, rate, gap, outage, settle, idle) = if args.ci {
            (1_200, 12.0, (4.0, 8.0), (3.0, 8.0), 150, 10)
        } else {
            (10_000, 40.0, (5.0, 15.0), (3.0, 15.0), 300, 20)
        };
        let gap = args.fault_gap.map_or(gap, |g| (g[0], g[1].max(g[0])));
        Ok(Self {
            orders: args.orders.unwrap_or(orders),
            seed,
            rate: args.rate.unwrap_or(rate),
            workers: args.workers.max(2),
            concurrency: args.concurrency.max(1),
            fault_gap: (Duration::from_secs_f64(gap.0), Duration::from_secs_f64(gap.1)),
            outage: Durations {
                outage_min: Duration::from_secs_f64(outage.0),
                outage_max: Duration::from_secs_f64(outage.1),
            },
            warm_up: Duration::from_secs(10),
            settle: Duration::from_secs(args.settle.unwrap_or(settle)),
            idle: Duration::from_secs(args.idle.unwrap_or(idle)),
            faults: faults::ALL.into_iter().filter(|f| !args.skip.contains(&f.to_string())).collect(),
            nul_poison: !args.skip.iter().any(|s| s == NUL_POISON),
        })
    }
}

/// CPU a settled service may use over the idle window (share of one core): idle services poll,
/// a spinning one uses a whole core.
const MAX_IDLE_CPU: f64 = 0.05;
/// Memory is flat when a service's resident set at the end is at most this factor of its size
/// after warm-up, plus [`RSS_SLACK_KIB`] (allocator pools and caches fill up under load).
const RSS_FACTOR: f64 = 1.5;
const RSS_SLACK_KIB: u64 = 32 * 1024;

/// The `--skip` value that leaves out the poison messages holding `\u0000`.
const NUL_POISON: &str = "nul-poison";

static START: OnceLock<(Instant, std::time::SystemTime)> = OnceLock::new();

/// Prints a line with the time since the start and the wall-clock time.
pub fn say(message: &str) {
    let (start, _) = START.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let now = chrono::Utc::now().format("%H:%M:%S%.3f");
    println!("[{:>7.1}s {now}] {message}", start.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from(Args::parse())?;
    // A panic is reported as its message and place (a failed start is one, and is expected to
    // be read in the run's output), without a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    say(&format!("chaos soak: {settings:?}"));
    say(&format!("repeat with: scripts/chaos --seed {} (plus the same flags)", settings.seed));
    let started = Instant::now();
    let verdicts = run(&settings).await?;
    let breaches = verdicts.breaches();
    println!();
    say(&format!(
        "{} invariants held, {} breached; took {:.0?}; seed {}",
        verdicts.lines.len() - breaches.len(),
        breaches.len(),
        started.elapsed(),
        settings.seed
    ));
    if breaches.is_empty() {
        println!("RESULT: PASS");
        Ok(())
    } else {
        println!("RESULT: FAIL ({})", breaches.join("; "));
        std::process::exit(1);
    }
}

async fn run(settings: &Settings) -> anyhow::Result<Verdicts> {
    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5eed_fa17);
    let mut postgres = PostgresServer::start().await;
    let db = TestDatabase::on(&postgres.admin_url());
    let db_url = db.url();
    let mut stack = Stack::start_with_dlq_on(db, settings.workers, &[]).await;
    say(&format!(
        "stack ready: order-api {}, {} workers, dlq-service, NATS {}, Postgres {}",
        stack.api.base_url,
        stack.workers.len(),
        stack.nats.address(),
        db_url
    ));
    for (name, log) in logs(&stack) {
        say(&format!("log of {name}: {log}"));
    }

    let plan = Plan::new(settings.orders, settings.seed, settings.nul_poison);
    let counts: BTreeMap<&str, usize> = plan.counts().into_iter().map(|(k, n)| (k.name(), n)).collect();
    say(&format!("plan: {} orders: {counts:?}", plan.orders.len()));
    set_stock(&db_url, &plan).await?;

    let counters = Arc::new(Counters::default());
    let orders = Arc::new(plan.orders.clone());
    let load = tokio::spawn(load::run(
        orders,
        stack.api.base_url.clone(),
        stack.nats.client().await,
        settings.rate,
        settings.concurrency,
        counters.clone(),
    ));

    tokio::time::sleep(settings.warm_up).await;
    let warm = rss(&mut stack);
    say(&format!("warm-up done; resident memory (KiB): {warm:?}"));

    let mut verdicts = Verdicts::default();
    let mut schedule = Schedule::new(settings.faults.clone());
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_recoveries = Vec::new();
    while !load.is_finished() {
        let gap = rng.random_range(settings.fault_gap.0..=settings.fault_gap.1);
        let until = Instant::now() + gap;
        while Instant::now() < until && !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if load.is_finished() {
            break;
        }
        let fault = schedule.next(&mut rng);
        *injected.entry(fault.to_string()).or_default() += 1;
        if let Err(err) =
            faults::inject(fault, &mut stack, &mut postgres, &db_url, settings.outage, &mut rng).await
        {
            say(&format!("fault {fault}: NOT RECOVERED: {err:#}"));
            failed_recoveries.push(format!("{fault}: {err:#}"));
        }
    }
    let outcomes = load.await.context("the load panicked")??;
    let failed_starts = faults::FAILED_STARTS.lock().map(|all| all.clone()).unwrap_or_default();
    say(&format!("load done; faults injected: {injected:?}"));
    report_client(&mut verdicts, &outcomes, &counters);
    verdicts.check(
        failed_recoveries.is_empty(),
        "every fault recovered from (all services ready again)",
        format!(
            "{} faults, {} not recovered {:?}",
            injected.values().sum::<usize>(),
            failed_recoveries.len(),
            failed_recoveries
        ),
    );

    verdicts.check(
        failed_starts.is_empty(),
        "every killed service started again at the first attempt",
        format!(
            "{} failed starts{}",
            failed_starts.len(),
            checks::sample(
                &failed_starts
                    .iter()
                    .map(|m| m.lines().take(8).collect::<Vec<_>>().join(" | "))
                    .collect::<Vec<_>>()
            )
        ),
    );

    // Settle: wait (bounded) until every accepted order is final and everything is drained.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db_url)
        .await
        .context("connect to the soak's database")?;
    let settle_start = Instant::now();
    let snapshot = loop {
        let snapshot = Snapshot::read(&pool).await;
        if let Ok(read) = &snapshot
            && read.settled(&plan, &outcomes)
        {
            say(&format!("settled after {:.1?}", settle_start.elapsed()));
            break snapshot?;
        }
        if settle_start.elapsed() > settings.settle {
            say(&format!("NOT settled after {:.0?}: checking anyway", settings.settle));
            break snapshot?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Let in-flight work (acks, deletes of dead-lettered originals) finish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = Snapshot::read(&pool).await.unwrap_or(snapshot);

    println!("\n== invariants (seed {}) ==", settings.seed);
    checks::data(&mut verdicts, &plan, &outcomes, &snapshot);
    streams(&mut verdicts, &stack).await;
    processes(&mut verdicts, &mut stack, settings.idle, &warm).await;
    for (name, log) in logs(&stack) {
        println!("log of {name}: {log}");
    }
    drop(stack);
    drop(postgres);
    Ok(verdicts)
}

/// Stocks every SKU the plan uses (the services' migrations created the table).
async fn set_stock(db_url: &str, plan: &Plan) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(db_url).await?;
    for (sku, units) in &plan.stock {
        sqlx::query(
            "INSERT INTO inventory.inventory (sku, available) VALUES ($1, $2)
             ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, reserved = 0",
        )
        .bind(sku)
        .bind(units)
        .execute(&pool)
        .await
        .context("set the stock")?;
    }
    pool.close().await;
    Ok(())
}

/// What the client saw: every valid order accepted, never a 5xx other than 503.
fn report_client(verdicts: &mut Verdicts, outcomes: &[Outcome], counters: &Counters) {
    let mut refused = Vec::new();
    let mut gave_up = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Refused(status, body) => {
                refused.push(format!("{status} {}", body.chars().take(200).collect::<String>()))
            }
            Outcome::GaveUp(last) => gave_up.push(last.chars().take(200).collect::<String>()),
            _ => {}
        }
    }
    let accepted = outcomes.iter().filter(|o| matches!(o, Outcome::Accepted(_))).count();
    let published = outcomes.iter().filter(|o| matches!(o, Outcome::Published(_))).count();
    println!(
        "client: {accepted} orders accepted, {published} poison messages published; {} requests, {} answered 503, {} other 5xx, {} connection errors or timeouts, {} replayed by key",
        counters.sent.load(Ordering::Relaxed),
        counters.unavailable_503.load(Ordering::Relaxed),
        counters.server_errors.load(Ordering::Relaxed),
        counters.connection_errors.load(Ordering::Relaxed),
        counters.replayed.load(Ordering::Relaxed),
    );
    verdicts.check(
        refused.is_empty() && gave_up.is_empty(),
        "every valid order accepted (retrying 503s and connection errors with its key)",
        format!(
            "refused: {}{}; gave up after retrying: {}{}",
            refused.len(),
            checks::sample(&refused),
            gave_up.len(),
            checks::sample(&gave_up)
        ),
    );
    let server_errors = counters.server_errors.load(Ordering::Relaxed);
    verdicts.check(
        server_errors == 0,
        "no 5xx answer other than 503 (+Retry-After)",
        format!("{server_errors} other 5xx answers"),
    );
}

/// `orders_stream` empty (a work queue: what is done or dead-lettered is removed) and the
/// workers' consumer with nothing pending.
async fn streams(verdicts: &mut Verdicts, stack: &Stack) {
    let figures = async {
        let js = stack.nats.jetstream().await;
        let mut stream = js.get_stream("orders_stream").await.ok()?;
        let messages = stream.info().await.ok()?.state.messages;
        let consumer = stream.consumer_info("inventory-worker").await.ok()?;
        Some((messages, consumer.num_pending, consumer.num_ack_pending))
    }
    .await;
    match figures {
        Some((messages, pending, ack_pending)) => verdicts.check(
            messages == 0 && pending == 0 && ack_pending == 0,
            "orders_stream drained",
            format!("{messages} messages left; consumer inventory-worker: {pending} pending, {ack_pending} ack pending"),
        ),
        None => verdicts.check(false, "orders_stream drained", "could not read the stream or its consumer".into()),
    }
}

/// No process spun or hung: alive, ready, (almost) idle once settled; memory flat.
async fn processes(verdicts: &mut Verdicts, stack: &mut Stack, idle: Duration, warm: &BTreeMap<String, u64>) {
    let before: BTreeMap<String, Option<u64>> =
        pids(stack).into_iter().map(|(name, pid)| (name, procs::cpu_ticks(pid).ok())).collect();
    tokio::time::sleep(idle).await;
    let ticks = procs::ticks_per_second() as f64;
    let mut cpu = Vec::new();
    let mut busy = false;
    for (name, pid) in pids(stack) {
        let used = match (before.get(&name).copied().flatten(), procs::cpu_ticks(pid).ok()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / ticks / idle.as_secs_f64(),
            _ => f64::INFINITY,
        };
        busy |= used > MAX_IDLE_CPU;
        cpu.push(format!("{name} {:.1}%", used * 100.0));
    }
    verdicts.check(
        !busy,
        "no process spinning once idle",
        format!("CPU over the last {idle:?} (bound {:.0}%): {}", MAX_IDLE_CPU * 100.0, cpu.join(", ")),
    );

    let end = rss(stack); // before reaping a dead process (its pid is gone then)
    let mut alive = Vec::new();
    for (name, process) in processes_of(stack) {
        if let Some(status) = process.exited() {
            alive.push(format!("{name} exited: {status}"));
        }
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok();
    let mut readiness = Vec::new();
    for (name, url) in faults::services(stack) {
        let status = match &http {
            Some(http) => match http.get(format!("{url}/readyz")).send().await {
                Ok(response) => response.status().as_u16().to_string(),
                Err(err) => format!("no answer ({err})"),
            },
            None => "no HTTP client".into(),
        };
        if status != "200" {
            alive.push(format!("{name} /readyz {status}"));
        }
        readiness.push(format!("{name} {status}"));
    }
    verdicts.check(
        alive.is_empty(),
        "no process hung or died (each alive, /readyz 200)",
        format!("{}{}", readiness.join(", "), checks::sample(&alive)),
    );

    let mut grown = Vec::new();
    let mut figures = Vec::new();
    for (name, kib) in &end {
        let Some(base) = warm.get(name) else { continue };
        let bound = (*base as f64 * RSS_FACTOR) as u64 + RSS_SLACK_KIB;
        figures.push(format!("{name} {} → {} MiB", base / 1024, kib / 1024));
        if *kib > bound {
            grown.push(format!("{name} {} → {} MiB (bound {} MiB)", base / 1024, kib / 1024, bound / 1024));
        }
    }
    verdicts.check(
        grown.is_empty(),
        "memory flat (resident set after warm-up → at the end)",
        format!(
            "{} (bound ×{RSS_FACTOR} + {} MiB){}",
            figures.join(", "),
            RSS_SLACK_KIB / 1024,
            checks::sample(&grown)
        ),
    );
}

fn processes_of(stack: &mut Stack) -> Vec<(String, &mut test_support::ServiceProcess)> {
    let mut all = vec![("order-api".to_owned(), &mut stack.order_api)];
    all.extend(stack.workers.iter_mut().map(|w| (w.instance.clone(), &mut w.process)));
    all.extend(stack.dlq.iter_mut().map(|d| ("dlq-service".to_owned(), &mut d.process)));
    all
}

/// The services still running, with their process IDs.
fn pids(stack: &mut Stack) -> Vec<(String, u32)> {
    processes_of(stack).into_iter().filter_map(|(name, p)| p.id().map(|pid| (name, pid))).collect()
}

fn logs(stack: &Stack) -> Vec<(String, String)> {
    let mut all = vec![("order-api".to_owned(), stack.order_api.log.display().to_string())];
    all.extend(stack.workers.iter().map(|w| (w.instance.clone(), w.process.log.display().to_string())));
    all.extend(stack.dlq.iter().map(|d| ("dlq-service".to_owned(), d.process.log.display().to_string())));
    all
}

/// Resident memory of each service, by name (a restarted service keeps its name).
fn rss(stack: &mut Stack) -> BTreeMap<String, u64> {
    pids(stack)
        .into_iter()
        .filter_map(|(name, pid)| procs::rss_kib(pid).ok().map(|kib| (name, kib)))
        .collect()
}
