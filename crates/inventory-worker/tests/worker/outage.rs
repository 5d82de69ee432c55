//! A Postgres outage must not burn the messages' delivery attempts: the worker hands the batch
//! back and stops pulling until Postgres answers again.

use std::time::Duration;

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
    let mut advisories = max_deliveries_advisories(&nats).await;

    publish_order(&js, &order(&[("WIDGET-1", 1)])).await;
    wait_for_reserved(&worker.inventory, "WIDGET-1", 1, EVENT_TIMEOUT).await;

    postgres.stop();
    let mut first_sequence = None;
    for _ in 0..5 {
        let message = shared::messaging::envelope::OutgoingMessage::event(&order(&[("WIDGET-1", 2)]), "test");
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
    assert_no_dead_letter(&mut advisories).await;
}
