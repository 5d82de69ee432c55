//! The load: orders placed over HTTP by a client that behaves as a careful real one does (a 503
//! or a connection error is sent again with the same `Idempotency-Key`), and poison messages
//! published straight to `orders.new`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use reqwest::StatusCode;
use tokio::{sync::Mutex, time::Instant};
use uuid::Uuid;

use crate::{
    plan::{Kind, Planned},
    say,
};

/// One request's bound: order-api answers within its own request timeout, so this is reached
/// only when it hangs (or was killed mid-request).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one order is retried before the client gives up on it (it then does not count as
/// accepted, and is reported).
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// Ceiling on a `Retry-After`, and the pause after a connection error.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(500);

/// What the chaos load's client saw of one planned order (or raw publish): accepted by
/// order-api, published straight to `orders_stream`, refused for good, or given up on. It
/// decides what the checks expect to find at the end.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 202: the order's ID.
    Accepted(Uuid),
    /// Published to `orders_stream` at this sequence.
    Published(u64),
    /// An answer other than 202 or 503 that retrying cannot change (4xx).
    Refused(u16, String),
    /// Still no 202 after [`GIVE_UP_AFTER`].
    GaveUp(String),
}

/// What the client saw on the way.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub unavailable_503: AtomicU64,
    pub server_errors: AtomicU64,
    pub connection_errors: AtomicU64,
    pub replayed: AtomicU64,
}

/// Places every planned order at `rate` per second with `concurrency` clients; returns each
/// one's outcome, in plan order.
pub async fn run(
    orders: Arc<Vec<Planned>>,
    api_base: String,
    // As `admin`: poison messages go to `orders.new` directly, past order-api's checks.
    nats: async_nats::Client,
    rate: f64,
    concurrency: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<Vec<Outcome>> {
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().context("HTTP client")?;
    let js = async_nats::jetstream::new(nats);

    let (tx, rx) = tokio::sync::mpsc::channel::<usize>(concurrency);
    let rx = Arc::new(Mutex::new(rx));
    let outcomes = Arc::new(Mutex::new(vec![None; orders.len()]));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (rx, orders, outcomes, http, js, base, counters) = (
            rx.clone(),
            orders.clone(),
            outcomes.clone(),
            http.clone(),
            js.clone(),
            api_base.clone(),
            counters.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(index) = rx.lock().await.recv().await else { break };
                let planned = &orders[index];
                let outcome = if planned.kind.is_poison() {
                    publish_poison(&js, planned).await
                } else {
                    place(&http, &base, planned, &counters).await
                };
                outcomes.lock().await[index] = Some(outcome);
            }
        }));
    }

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let progress_every = (orders.len() / 10).max(1);
    for index in 0..orders.len() {
        ticker.tick().await;
        tx.send(index).await.context("load clients stopped")?;
        if (index + 1) % progress_every == 0 {
            say(&format!("load: {} of {} sent", index + 1, orders.len()));
        }
    }
    drop(tx);
    for task in tasks {
        task.await.context("a load client panicked")?;
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().await);
    Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::GaveUp("never sent".into()))).collect())
}

/// `POST /orders` until a 202, sending the same key each time.
async fn place(http: &reqwest::Client, base: &str, planned: &Planned, counters: &Counters) -> Outcome {
    let started = Instant::now();
    let url = format!("{base}/orders");
    let mut last = String::new();
    while started.elapsed() < GIVE_UP_AFTER {
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let response =
            http.post(&url).header("Idempotency-Key", &planned.key).json(&planned.body).send().await;
        let pause = match response {
            Ok(response) if response.status() == StatusCode::ACCEPTED => {
                if response.headers().contains_key("idempotent-replayed") {
                    counters.replayed.fetch_add(1, Ordering::Relaxed);
                }
                let body: serde_json::Value = match response.json().await {
                    Ok(body) => body,
                    Err(err) => {
                        last = format!("202 with an unreadable body: {err}");
                        counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                        continue;
                    }
                };
                return match body["order_id"].as_str().and_then(|id| id.parse().ok()) {
                    Some(id) => Outcome::Accepted(id),
                    None => Outcome::Refused(202, format!("no order_id in {body}")),
                };
            }
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                counters.unavailable_503.fetch_add(1, Ordering::Relaxed);
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs);
                last = "503".into();
                after.min(MAX_RETRY_AFTER)
            }
            Ok(response) if response.status().is_server_error() => {
                // Not what order-api promises (it answers 503 when it cannot take an order now),
                // but a careful client retries with the same key: counted, reported.
                counters.server_errors.fetch_add(1, Ordering::Relaxed);
                let status = response.status().as_u16();
                last = format!("{status}: {}", response.text().await.unwrap_or_default());
                PAUSE_AFTER_ERROR
            }
            Ok(response) => {
                let status = response.status().as_u16();
                return Outcome::Refused(status, response.text().await.unwrap_or_default());
            }
            Err(err) => {
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                last = format!("{err}");
                PAUSE_AFTER_ERROR
            }
        };
        tokio::time::sleep(pause).await;
    }
    Outcome::GaveUp(last)
}

/// Publishes a poison message to `orders.new` until JetStream acknowledges it. `Nats-Msg-Id`
/// makes a repeat after a lost ack a duplicate the server drops (and answers with the first
/// sequence), so each poison message is stored once.
async fn publish_poison(js: &async_nats::jetstream::Context, planned: &Planned) -> Outcome {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", planned.key.as_str());
    let payload: Vec<u8> = match planned.kind {
        Kind::PoisonPayload => {
            headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
            headers.insert("ce-type", "orders.placed.v1");
            format!("\u{1}chaos poison #{}: this is not an order", planned.index).into_bytes()
        }
        Kind::PoisonNul => {
            headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
            headers.insert("ce-type", "orders.placed.v1");
            format!(r#"{{"chaos_poison": {}, "note": "NUL \u0000 inside"}}"#, planned.index).into_bytes()
        }
        _ => {
            let mut body = planned.body.clone();
            body["order_id"] = Uuid::now_v7().to_string().into();
            body["version"] = 1.into();
            body.to_string().into_bytes()
        }
    };
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < GIVE_UP_AFTER {
        let attempt = async {
            let ack = js.publish_with_headers("orders.new", headers.clone(), payload.clone().into()).await?;
            anyhow::Ok(ack.await?)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ack)) => return Outcome::Published(ack.sequence),
            Ok(Err(err)) => last = err.to_string(),
            Err(_) => last = "no PubAck within 5 s".into(),
        }
        tokio::time::sleep(PAUSE_AFTER_ERROR).await;
    }
    Outcome::GaveUp(last)
}
