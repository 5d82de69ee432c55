//! Placing orders: one every `1 / rate` seconds, at most `concurrency` in flight.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
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
    let mut pacer = Pacer::new(config.rate, started);
    let mut kinds = config.mix.picker();
    // How many orders of each kind were sent: the `n` that varies their bodies.
    let mut sent_of_kind = [0u64; Kind::ALL.len()];
    let mut tasks = JoinSet::new();

    for sent in 0u64.. {
        // A count is reached after its last order, without waiting for one more tick...
        if matches!(config.load, Load::Count(count) if sent >= count) {
            break;
        }
        while let Some(wait) = pacer.wait(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        // ...a duration at the first send that falls at or past its end.
        if matches!(config.load, Load::For(duration) if started.elapsed() >= duration) {
            break;
        }
        // Waits while `concurrency` requests are in flight: backpressure reaches the generator.
        // It then carries on at `rate` from now, with no burst to catch up afterwards.
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let permit =
                    in_flight.clone().acquire_owned().await.context("the request limiter was closed")?;
                pacer.restart(Instant::now());
                permit
            }
        };
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

/// When the next order goes: every `1 / rate`, on a schedule kept in time rather than in timer
/// ticks. A timer wakes a millisecond at a time at best (later on a busy machine), so sending one
/// order per wake-up would cap the rate near 1,000/s and lose every late wake-up for good; here
/// the orders that fell due meanwhile go at once.
#[derive(Debug)]
struct Pacer {
    period: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64, start: Instant) -> Self {
        Self { period: Duration::from_secs_f64(1.0 / rate), next: start }
    }

    /// `None` if an order is due at `now` (and books it), else how long until the next one is.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        if now >= self.next {
            self.next += self.period;
            None
        } else {
            Some(self.next - now)
        }
    }

    /// Starts the schedule again from `now` (after waiting out backpressure: no catch-up burst).
    fn restart(&mut self, now: Instant) {
        self.next = now;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends for one second at `rate`, with a timer that wakes at whole milliseconds only.
    fn sent_in_a_second(pacer: &mut Pacer, start: Instant) -> u32 {
        let (mut now, mut sent) = (start, 0);
        while now < start + Duration::from_secs(1) {
            match pacer.wait(now) {
                None => sent += 1,
                Some(wait) => now += wait.max(Duration::from_millis(1)),
            }
        }
        sent
    }

    #[test]
    fn a_timer_that_wakes_a_millisecond_at_a_time_does_not_cap_the_rate() {
        let start = Instant::now();
        for rate in [250.0, 1_000.0, 5_000.0] {
            let sent = sent_in_a_second(&mut Pacer::new(rate, start), start);
            // Within 0.5 %: the wake-ups never fall behind (one per tick would give at most 1,000).
            assert!((f64::from(sent) - rate).abs() <= rate * 0.005 + 1.0, "{sent} sent at {rate}/s");
        }
    }

    #[test]
    fn after_waiting_out_backpressure_the_schedule_starts_again_without_a_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1_000.0, start);
        assert_eq!(pacer.wait(start), None);
        // A second spent waiting for a free slot: the thousand orders it would have sent are not
        // sent in a burst afterwards.
        let later = start + Duration::from_secs(1);
        pacer.restart(later);
        assert_eq!(pacer.wait(later), None);
        assert_eq!(pacer.wait(later), Some(Duration::from_millis(1)));
    }
}
