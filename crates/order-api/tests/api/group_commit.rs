//! Group commit: concurrent `POST /orders` share transactions, and each `202` still means
//! "committed".

use futures::future::join_all;
use reqwest::StatusCode;
use sqlx::{Connection, PgConnection};
use test_support::{http::order_body, wait_until};

use crate::helpers::{TestApp, spawn_app_with};

const WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds the outbox table locked, so that the next writer's transaction waits inside, while
/// requests pile up for the one after it.
async fn hold_the_outbox(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("LOCK TABLE order_api.outbox IN EXCLUSIVE MODE").execute(&mut conn).await.unwrap();
    conn
}

/// Waits until `count` orders have reached the writers: taken into a transaction
/// (`orders_write_batch_size_sum`) or queued for the next (`orders_queued_for_writer`).
async fn handed_over(app: &TestApp, count: f64) {
    wait_until("the orders have reached the writers", WITHIN, || async {
        let scrape = test_support::metrics::scrape(&app.base_url).await;
        let metric = |name| test_support::metrics::value(&scrape, name, &[]).unwrap_or(0.0);
        (metric("orders_write_batch_size_sum") + metric("orders_queued_for_writer") >= count).then_some(())
    })
    .await;
}

#[tokio::test]
async fn concurrent_orders_share_transactions_and_every_202_is_committed_with_its_message() {
    let app = spawn_app_with(&[("ORDER_WRITERS", "1")]).await;
    let mut lock = hold_the_outbox(&app).await;
    let body = order_body("c-1", &[("WIDGET-1", 1)]);

    let requests = join_all((0..50).map(|_| app.api.place(&body, None)));
    let release = async {
        app.wait_until_someone_waits_for("outbox").await;
        // Every other order waits for the next transaction.
        handed_over(&app, 50.0).await;
        sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    };
    let (responses, ()) = tokio::join!(requests, release);

    assert!(responses.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    assert_eq!(app.orders_count().await, 50);
    // Rows written by one transaction share its ID (xmin): fewer transactions than orders.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(transactions, 2, "the orders that waited shared one transaction");
    let with_their_message: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o
         JOIN outbox m ON convert_from(m.payload, 'UTF8')::jsonb->>'order_id' = o.id::text",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(with_their_message, 50, "each order has its own message");
}

#[tokio::test]
async fn an_order_the_database_refuses_does_not_fail_the_others_of_its_batch() {
    let app = spawn_app_with(&[("ORDER_WRITERS", "1")]).await;
    // A rule only the database knows, standing in for any refusal of one row (a constraint, a
    // trigger, a value Postgres cannot store).
    sqlx::raw_sql(
        "CREATE FUNCTION order_api.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.customer_id = 'refused' THEN RAISE EXCEPTION 'refused by the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON order_api.orders
             FOR EACH ROW EXECUTE FUNCTION order_api.refuse();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut lock = hold_the_outbox(&app).await;

    let good = order_body("c-1", &[("WIDGET-1", 1)]);
    let bad = order_body("refused", &[("WIDGET-1", 1)]);
    let first = app.api.place(&good, None);
    let batch = async {
        app.wait_until_someone_waits_for("outbox").await;
        // These pile up behind the first order's transaction: the next batch takes them all.
        let others = join_all((0..20).map(|i| app.api.place(if i == 10 { &bad } else { &good }, None)));
        let release = async {
            handed_over(&app, 21.0).await;
            sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
        };
        tokio::join!(others, release).0
    };
    let (first, others) = tokio::join!(first, batch);

    assert_eq!(first.status(), StatusCode::ACCEPTED);
    for (i, response) in others.iter().enumerate() {
        let expected = if i == 10 { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::ACCEPTED };
        assert_eq!(response.status(), expected, "request {i}");
    }
    assert_eq!(app.orders_count().await, 20);
    assert_eq!(app.outbox_rows().await, 20);
    let scrape = test_support::metrics::scrape(&app.base_url).await;
    let batches = test_support::metrics::value(&scrape, "orders_write_batch_size_count", &[]);
    assert_eq!(
        batches,
        Some(2.0),
        "the 20 that waited were one batch (which failed, then each was written alone)"
    );
}
