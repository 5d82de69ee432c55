//! A Postgres outage must not burn the messages' delivery attempts: the worker hands the batch
//! back and stops pulling until Postgres answers again.

use std::time::Duration;

use futures::StreamExt;
use test_support::{NatsServer, PostgresServer, TestDatabase, wait_until};

use crate::helpers::*;

#[tokio::test]
async fn while_postgres_is_down_the_worker_stops_pulling_and_every_order_survives_the_outage() {
    let nats = NatsServer::start().await;
    let mut postgres = PostgresServer::start().await;
    let db = TestDatabase::on(&postgres.admin_url());
    // 3 deliveries, 100 ms and 200 ms apart, and Postgres declared unavailable after 200 ms: a
    // worker that kept pulling through the outage would exhaust every attempt within a second.
    let worker = spawn_worker(&nats, &db, &[("DATABASE_ACQUIRE_TIMEOUT", "200ms")]).await;
    let js = nats.jetstream().await;
    let mut advisories =
        nats.client().await.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>").await.unwrap();

    publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    wait_until("the worker works", EVENT_TIMEOUT, || async {
        (worker.inventory.get("WIDGET-1").await.reserved == 1).then_some(())
    })
    .await;

    postgres.stop();
    let mut first_sequence = None;
    for _ in 0..5 {
        let message = shared::messages::OutgoingMessage::event(&order(&[("WIDGET-1", 2)]), "test");
        first_sequence.get_or_insert(publish(&js, &message).await);
    }
    wait_until("the worker has taken orders it cannot store", EVENT_TIMEOUT, || async {
        let stream = js.get_stream("orders_stream").await.ok()?;
        let info = stream.consumer_info("inventory-worker").await.ok()?;
        (info.delivered.stream_sequence >= first_sequence?).then_some(())
    })
    .await;

    // The outage lasts several times as long as every delivery attempt would take.
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.start_again().await;

    wait_until("every order is reserved once Postgres is back", Duration::from_secs(30), || async {
        let reserved = tokio::time::timeout(Duration::from_secs(1), worker.inventory.get_opt("WIDGET-1"))
            .await
            .ok()??;
        (reserved.reserved == 11).then_some(())
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), advisories.next()).await.is_err(),
        "no message exhausted its deliveries"
    );
}
