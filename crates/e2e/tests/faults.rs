//! Faults of the whole system, from the outside: the real binaries against a nats-server and
//! Postgres that the test breaks.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::{Duration, Instant};

use test_support::{stack::Stack, wait_until};

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

/// Found by the chaos soak: after the durable consumer was deleted under load and declared
/// again by the running workers, a worker started later could not start (nats-server refused to
/// update the consumer: "meta.inf.tmp: no such file or directory"). Start-up now uses a consumer
/// that is already as wanted without updating it. The server's fault is timing-dependent and did
/// not show in this test's runs here even without that change: this guards the scenario, the
/// chaos soak's `delete-consumer` fault is what exercises it repeatedly.
#[tokio::test]
async fn a_worker_starts_after_the_consumer_was_deleted_and_declared_again_under_load() {
    let mut stack = Stack::start(2, &[]).await;
    let stream = stack.nats.jetstream().await.get_stream("orders_stream").await.unwrap();
    let api = stack.api.clone();
    let placing = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..200 {
            ids.push(api.place_ok("c-chaos", &[("WIDGET-1", 1)], None).await);
        }
        ids
    });
    wait_until("the workers are busy", Duration::from_secs(30), || async {
        (stream.consumer_info("inventory-worker").await.ok()?.delivered.stream_sequence >= 20).then_some(())
    })
    .await;

    stream.delete_consumer("inventory-worker").await.unwrap();
    wait_until("a running worker declares the consumer again", Duration::from_secs(30), || async {
        stream.consumer_info("inventory-worker").await.ok()
    })
    .await;
    let ids = placing.await.unwrap();

    stack.add_worker("worker-3").await;
    for id in &ids {
        wait_until(&format!("order {id} is reserved"), Duration::from_secs(60), || async {
            (stack.api.status_of(id).await.as_deref() == Some("reserved")).then_some(())
        })
        .await;
    }
}
