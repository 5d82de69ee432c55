//! Placing orders: one every `1 / rate` seconds, at most `concurrency` in flight.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use uuid::Uuid;

use crate::{
    client::OrderApiClient,
    config::{Config, Load},
    mix::Kind,
    orders::{OrderView, order_body},
    report::Tally,
};

/// Sends orders until the run's count or duration is reached, then waits for every request in
/// flight (including those waiting out a `Retry-After`). Each accepted order goes to
/// `accepted`, whose receiver follows it to its final status; the channel closes when this
/// returns, which tells the receiver that no more orders are coming.
pub async fn place_orders(
    config: &Config,
    client: &OrderApiClient,
    tally: &Arc<Tally>,
    accepted: mpsc::UnboundedSender<OrderView>,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(config.concurrency));
    let started = Instant::now();
    // The first tick completes at once, each later one `1 / rate` after the one before.
    let mut ticks = tokio::time::interval_at(started, Duration::from_secs_f64(1.0 / config.rate));
    // When loadgen falls behind (every permit taken: the API is slow or asked us to wait), it
    // does not send a burst to catch up afterwards. It simply carries on at `rate`.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut kinds = config.mix.picker();
    // How many orders of each kind were sent: the `n` that varies their bodies.
    let mut sent_of_kind = [0u64; Kind::ALL.len()];
    let mut tasks = JoinSet::new();

    for sent in 0u64.. {
        // A count is reached after its last order, without waiting for one more tick...
        if matches!(config.load, Load::Count(count) if sent >= count) {
            break;
        }
        ticks.tick().await;
        // ...a duration at the first tick that falls at or past its end.
        if matches!(config.load, Load::For(duration) if started.elapsed() >= duration) {
            break;
        }
        // Waits while `concurrency` requests are in flight: backpressure reaches the generator.
        let permit = in_flight.clone().acquire_owned().await.context("the request limiter was closed")?;
        let kind = kinds.pick();
        let n = &mut sent_of_kind[kind.index()];
        tally.sent(kind);
        tasks.spawn(place_one(client.clone(), tally.clone(), accepted.clone(), kind, *n, permit));
        *n += 1;
        // Collect the tasks already finished, so a long run does not keep them all.
        while let Some(finished) = tasks.try_join_next() {
            finished.context("a task placing an order failed")?;
        }
    }
    while let Some(finished) = tasks.join_next().await {
        finished.context("a task placing an order failed")?;
    }
    Ok(())
}

/// Places one order and records what happened. `_permit` is held until the order is placed or
/// given up, 503 retries included.
async fn place_one(
    client: OrderApiClient,
    tally: Arc<Tally>,
    accepted: mpsc::UnboundedSender<OrderView>,
    kind: Kind,
    n: u64,
    _permit: OwnedSemaphorePermit,
) {
    let body = order_body(kind, n);
    // Every request carries a fresh key, so any retry of it is safe: order-api stores one order
    // per key and answers a repeat with that same order.
    let key = Uuid::new_v4().to_string();

    let first = client.place(&body, &key).await;
    tally.retried_after_503(first.retries_after_503);
    let order = match first.result {
        Ok(accepted) => accepted.order,
        Err(kind) => {
            tally.error(kind);
            tally.not_placed();
            return;
        }
    };
    tally.placed();
    let order_id = order.order_id;
    // The receiver only goes away when the run is being abandoned; nothing to follow then.
    let _ = accepted.send(order);

    if kind == Kind::Repeat {
        // The same request again, as a client does when the first answer was lost: it must
        // name the order the first one made, and make no new one.
        let again = client.place(&body, &key).await;
        tally.retried_after_503(again.retries_after_503);
        match again.result {
            Ok(again) => tally.repeat(again.order.order_id == order_id),
            Err(kind) => tally.error(kind),
        }
    }
}
