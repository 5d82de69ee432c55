//! Faults of the whole system, from the outside: the real binaries against a nats-server and
//! Postgres that the test breaks.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::{Duration, Instant};

use test_support::stack::Stack;

/// Every service's grace period is 25 s or less; with nothing in hand, stopping takes moments,
/// NATS or no NATS (the last flush of the connection waits at most 2 s).
const STOPS_WITHIN: Duration = Duration::from_secs(8);

#[tokio::test]
async fn every_service_stops_promptly_on_sigterm_while_nats_is_down() {
    let mut stack = Stack::start_with_dlq(1, &[]).await;
    stack.nats.stop();

    let dlq = &mut stack.dlq.as_mut().unwrap().process;
    for process in [&mut stack.order_api, &mut stack.workers[0].process, dlq] {
        let started = Instant::now();
        let status = process.terminate().await;
        let took = started.elapsed();
        assert!(took < STOPS_WITHIN, "took {took:?} to stop; log:\n{}", process.log_tail());
        assert!(status.success(), "exit status {status}; log:\n{}", process.log_tail());
    }
}
