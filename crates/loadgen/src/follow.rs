//! Following accepted orders to their final status by polling `GET /orders/{id}`.
//!
//! Only orders not final yet are polled, in rounds at most every [`POLL_INTERVAL`], with at most
//! [`POLL_CONCURRENCY`] requests at once: the load of following stays small next to the load
//! being generated. Latency does not depend on the polling: it is taken from the order's own
//! timestamps once it is final.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use uuid::Uuid;

use crate::{client::OrderApiClient, orders::OrderView, report::Tally};

/// The pause between the starts of two polling rounds.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Status requests in flight at once.
pub const POLL_CONCURRENCY: usize = 16;

/// Follows every order received on `accepted` until it is final. Once the channel closes (the
/// last order is placed), waits at most `wait` more. Returns how many orders were still not
/// final then.
pub async fn follow_statuses(
    client: OrderApiClient,
    mut accepted: mpsc::UnboundedReceiver<OrderView>,
    tally: Arc<Tally>,
    wait: Duration,
) -> u64 {
    let mut pending: HashSet<Uuid> = HashSet::new();
    let mut rounds = tokio::time::interval(POLL_INTERVAL);
    // A slow round delays the next one rather than being followed by a catch-up burst.
    rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Set once the last order is placed: the end of the wait.
    let mut deadline: Option<Instant> = None;

    loop {
        tokio::select! {
            received = accepted.recv(), if deadline.is_none() => match received {
                // A 202 can already carry a final status (a retried request whose first attempt
                // was stored and processed): nothing to poll then.
                Some(order) if order.status.is_final() => {
                    tally.finished(order.status, order.time_to_status());
                }
                Some(order) => {
                    pending.insert(order.order_id);
                }
                None => deadline = Some(Instant::now() + wait),
            },
            _ = rounds.tick() => poll_round(&client, &mut pending, &tally).await,
        }
        if let Some(deadline) = deadline
            && (pending.is_empty() || Instant::now() >= deadline)
        {
            return pending.len() as u64;
        }
    }
}

/// Reads every pending order once; those now final are counted and dropped from `pending`.
async fn poll_round(client: &OrderApiClient, pending: &mut HashSet<Uuid>, tally: &Tally) {
    let answers: Vec<_> = stream::iter(pending.iter().copied())
        .map(|id| async move { (id, client.order(id).await) })
        .buffer_unordered(POLL_CONCURRENCY)
        .collect()
        .await;
    for (id, answer) in answers {
        match answer {
            Ok(order) if order.status.is_final() => {
                tally.finished(order.status, order.time_to_status());
                pending.remove(&id);
            }
            Ok(_) => {}
            // Counted, and read again next round: one failed read loses nothing.
            Err(kind) => tally.error(kind),
        }
    }
}
