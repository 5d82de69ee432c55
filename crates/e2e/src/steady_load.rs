//! A steady load: one `POST /orders` every `pace`, each in a task of its own so that a slow
//! answer does not slow the pace, spread in turn over every order-api it is given.
//!
//! The orders follow [`items_of_order`]: mostly plentiful widgets, every fifth one a unit of a
//! scarce SKU (so some are rejected), and every twentieth one a `FAIL-` SKU that fails every
//! delivery (so it ends as a dead letter).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;
use test_support::{
    http::{OrderApi, order_body},
    wait_until,
};
use tokio::task::{JoinHandle, JoinSet};

/// The SKUs [`items_of_order`] uses, besides [`FAILING_SKU`].
pub const SKUS: [&str; 3] = ["WIDGET-1", "WIDGET-2", SCARCE_SKU];
/// The SKU of every fifth order, of which a test keeps fewer units than orders.
pub const SCARCE_SKU: &str = "SCARCE-1";
/// The SKU of every twentieth order: the worker fails every delivery of it.
pub const FAILING_SKU: &str = "FAIL-1";

/// What the `n`th order asks for.
pub fn items_of_order(n: u64) -> Vec<(&'static str, u32)> {
    match (n % 5, n % 20) {
        (_, 19) => vec![(FAILING_SKU, 1)],
        (0, _) => vec![(SCARCE_SKU, 1)],
        (1 | 3, _) => vec![("WIDGET-1", 1 + (n % 3) as u32)],
        _ => vec![("WIDGET-2", 1), ("WIDGET-1", 1)],
    }
}

/// One `POST /orders`: when it was sent, how long it took, its status and (if 202) the order.
#[derive(Debug, Clone)]
pub struct Placed {
    pub sent: Instant,
    pub latency: Duration,
    pub status: StatusCode,
    pub order_id: Option<String>,
}

/// The load while it runs.
#[derive(Debug)]
pub struct SteadyLoad {
    placed: Arc<Mutex<Vec<Placed>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl SteadyLoad {
    /// Starts placing orders, the `n`th one on `apis[n % apis.len()]`.
    pub fn start(apis: Vec<OrderApi>, pace: Duration) -> Self {
        assert!(!apis.is_empty(), "a load needs an order-api");
        let placed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(place_until_stopped(apis, pace, placed.clone(), stop.clone()));
        Self { placed, stop, task }
    }

    /// How many requests have been answered so far.
    pub fn answered(&self) -> usize {
        self.placed.lock().expect("not poisoned").len()
    }

    /// Waits until `more` requests have been answered after the ones answered now.
    pub async fn wait_for_orders(&self, more: usize) {
        let target = self.answered() + more;
        wait_until("the load places more orders", Duration::from_secs(60), || async {
            (self.answered() >= target).then_some(())
        })
        .await;
    }

    /// Stops placing orders, waits for the answers in flight, and returns every request.
    pub async fn stop(self) -> Vec<Placed> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load task does not panic");
        self.placed.lock().expect("not poisoned").clone()
    }
}

async fn place_until_stopped(
    apis: Vec<OrderApi>,
    pace: Duration,
    placed: Arc<Mutex<Vec<Placed>>>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = JoinSet::new();
    for n in 0u64.. {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let api = apis[(n % apis.len() as u64) as usize].clone();
        let placed = placed.clone();
        requests.spawn(async move {
            let record = place_one(&api, n).await;
            placed.lock().expect("not poisoned").push(record);
        });
    }
    while requests.join_next().await.is_some() {}
}

async fn place_one(api: &OrderApi, n: u64) -> Placed {
    let sent = Instant::now();
    let response = api.place(&order_body(&format!("load-{n}"), &items_of_order(n)), None).await;
    let latency = sent.elapsed();
    let status = response.status();
    let order_id = if status == StatusCode::ACCEPTED {
        let body: Value = response.json().await.expect("a 202 has a JSON body");
        Some(body["order_id"].as_str().expect("a 202 names its order").to_owned())
    } else {
        None
    };
    Placed { sent, latency, status, order_id }
}

/// How many requests answered each status code.
pub fn by_status(placed: &[Placed]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for p in placed {
        *counts.entry(p.status.as_u16()).or_default() += 1;
    }
    counts
}

/// The IDs of the accepted orders.
pub fn accepted(placed: &[Placed]) -> Vec<String> {
    placed.iter().filter_map(|p| p.order_id.clone()).collect()
}

/// The 99th percentile of `latencies` (zero when there are none).
pub fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies.get((latencies.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
}
