//! Faults beyond NATS stopping (issue 16): a frozen broker, a lag figure that cannot be
//! refreshed, a COMMIT slower than the request timeout, a database that refuses writes. Each test
//! breaks a real server and checks what a client (or an operator) sees.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use test_support::{http::order_body, wait_until};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let response = app.api.http().get(format!("{}/readyz", app.api.base_url)).send().await.unwrap();
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// A frozen broker keeps its TCP connection open, so "connected" says nothing: readiness must be
/// a round trip, with a timeout.
#[tokio::test]
async fn readiness_fails_while_the_broker_is_frozen_and_answers_in_bounded_time() {
    let app = spawn_app().await;
    assert_eq!(readyz(&app).await.0, StatusCode::OK);

    app.nats.freeze();
    let body = wait_until("readyz reports NATS unreachable", Duration::from_secs(10), || async {
        let started = Instant::now();
        let (status, body) = readyz(&app).await;
        assert!(started.elapsed() < Duration::from_secs(3), "a probe took {:?}", started.elapsed());
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(body["checks"]["nats"], "unreachable");
    assert_eq!(body["checks"]["postgres"], "ok");

    app.nats.thaw();
    wait_until("readyz is ready again", Duration::from_secs(10), || async {
        (readyz(&app).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// Lag above the bound turns orders away; when NATS then goes away the lag cannot be read, and a
/// figure that cannot be refreshed must not keep turning orders away: the outbox can take them.
#[tokio::test]
async fn a_lag_figure_that_cannot_be_refreshed_expires_and_orders_are_accepted_into_the_outbox() {
    let mut app = spawn_app_with(&[("MAX_CONSUMER_LAG", "1"), ("LAG_POLL_INTERVAL", "200ms")]).await;
    // No worker runs: every published order is lag.
    let refused = wait_until("POST /orders is refused for consumer lag", Duration::from_secs(15), || async {
        let response = app.api.place(&order_body("c-1", &[("WIDGET-1", 1)]), None).await;
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let problem: Value = response.json().await.unwrap();
        (problem["type"] == "/problems/consumer-lag").then_some(problem)
    })
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("MAX_CONSUMER_LAG"));

    app.nats.stop();
    let id = wait_until("POST /orders is accepted again", Duration::from_secs(15), || async {
        let response = app.api.place(&order_body("c-2", &[("WIDGET-1", 1)]), None).await;
        if response.status() != StatusCode::ACCEPTED {
            return None;
        }
        let body: Value = response.json().await.unwrap();
        Some(body["order_id"].as_str().unwrap().to_owned())
    })
    .await;
    let unsent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND convert_from(payload, 'UTF8') LIKE '%' || $1 || '%'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(unsent, 1, "the order waits in the outbox for NATS");
}

/// Makes every `COMMIT` that inserted an order wait until the test lets it go: a deferred
/// constraint trigger runs inside `COMMIT`, and this one waits for a row lock the test holds.
async fn hold_commits(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    sqlx::raw_sql(
        "CREATE TABLE commit_gate (id int);
         INSERT INTO commit_gate VALUES (1);
         CREATE FUNCTION wait_for_commit_gate() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM 1 FROM commit_gate FOR UPDATE; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_for_commit_gate();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut gate = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM commit_gate FOR UPDATE").execute(&mut *gate).await.unwrap();
    gate
}

/// The request timeout fires while `COMMIT` runs: the order exists, so the answer must be the
/// order, not "retry later" (which, without an Idempotency-Key, places it twice).
#[tokio::test]
async fn an_order_whose_commit_outlasts_the_request_timeout_is_answered_with_the_order() {
    let timeout = Duration::from_millis(300);
    let app = spawn_app_with(&[("REQUEST_TIMEOUT", "300ms")]).await;
    let gate = hold_commits(&app).await;

    let sent = Instant::now();
    let api = app.api.clone();
    let request =
        tokio::spawn(async move { api.place(&order_body("c-slow", &[("WIDGET-1", 1)]), None).await });
    wait_until("the order's COMMIT waits for the gate", Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query = 'COMMIT'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    // The point of the test: the request timeout passes while COMMIT is running.
    tokio::time::sleep_until((sent + timeout * 2).into()).await;
    gate.rollback().await.unwrap();

    let response = request.await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    let (status, stored) = app.api.get(body["order_id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["customer_id"], "c-slow");
    assert_eq!(app.orders_count().await, 1);
}

/// Inserts, without committing, the order `c-1` wants 1 `WIDGET-1` under `key`: another request
/// with that key waits on the unique index until the returned transaction ends.
async fn hold_idempotency_key(app: &TestApp, key: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, items, idempotency_key, created_at, updated_at)
         VALUES (gen_random_uuid(), 'c-1', '[{\"sku\": \"WIDGET-1\", \"quantity\": 1}]', $1, now(), now())",
    )
    .bind(key)
    .execute(&mut *holder)
    .await
    .unwrap();
    holder
}

/// Before COMMIT, the request timeout still answers 503: nothing was stored.
#[tokio::test]
async fn a_request_that_times_out_before_commit_is_503_and_stores_nothing() {
    let app = spawn_app_with(&[("REQUEST_TIMEOUT", "300ms")]).await;
    let blocker = hold_idempotency_key(&app, "contended").await;

    let response = app.api.place(&order_body("c-1", &[("WIDGET-1", 1)]), Some("contended")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/timeout");
    blocker.rollback().await.unwrap();
    assert_eq!(app.orders_count().await, 0);
}

/// Sets a default of the test database (as a failover, or an operator, would), and ends every
/// other session so that the service's next connections get it. The setting is committed first
/// (in one query string with the terminations it would commit only after them, and a session
/// opened meanwhile would start with the old default), and each session is waited for until it
/// is gone (`pg_terminate_backend`'s timeout), not only signalled.
async fn set_database_default(app: &TestApp, setting: &str) {
    let mut conn = app.pool.acquire().await.unwrap();
    // This session may write whatever the database's default.
    sqlx::query("SET default_transaction_read_only = off").execute(&mut *conn).await.unwrap();
    let alter =
        format!("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {setting}', current_database()); END $$");
    sqlx::raw_sql(sqlx::AssertSqlSafe(alter)).execute(&mut *conn).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// A database that is up but refuses writes (read-only after a failover: SQLSTATE 25006) is
/// unavailable, not a bug: 503 with Retry-After, so clients come back, never 500.
#[tokio::test]
async fn a_read_only_database_is_answered_503_with_retry_after_not_500() {
    let app = spawn_app().await;
    app.api.place_ok("c-0", &[("WIDGET-1", 1)], None).await;

    set_database_default(&app, "SET default_transaction_read_only = on").await;
    for i in 0..5 {
        let response = app.api.place(&order_body(&format!("c-{i}"), &[("WIDGET-1", 1)]), None).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "request {i}");
        assert!(response.headers().contains_key("retry-after"));
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/database-unavailable");
    }

    set_database_default(&app, "RESET default_transaction_read_only").await;
    wait_until("orders are accepted again", Duration::from_secs(10), || async {
        let response = app.api.place(&order_body("c-back", &[("WIDGET-1", 1)]), Some("back")).await;
        (response.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
}

/// A lock not granted within `lock_timeout` (SQLSTATE 55P03: here, another request holding the
/// same Idempotency-Key) is a busy database, not a bug: 503 with Retry-After, and the retry
/// finds the order.
#[tokio::test]
async fn a_lock_timeout_is_answered_503_with_retry_after_not_500() {
    let app = spawn_app().await;
    set_database_default(&app, "SET lock_timeout = 100").await;
    let holder = hold_idempotency_key(&app, "held").await;

    let response = app.api.place(&order_body("c-1", &[("WIDGET-1", 1)]), Some("held")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));

    holder.commit().await.unwrap();
    let again = app.api.place(&order_body("c-1", &[("WIDGET-1", 1)]), Some("held")).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
}
