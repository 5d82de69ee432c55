//! Placing and reading orders.

use std::time::Duration;

use contract::events::{OrderPlaced, decode};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{http::order_body, wait_until};

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_accepted_order_answers_202_with_its_location_and_pending_status() {
    let app = spawn_app().await;

    let response = app.api.place(&order_body("c-42", &[("WIDGET-1", 2)]), None).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["order_id"].as_str().unwrap();
    assert_eq!(location, format!("/orders/{id}"));
    assert_eq!(body["status"], "pending");
    assert_eq!(body["items"], json!([{"sku": "WIDGET-1", "quantity": 2}]));
    assert!(body.get("reason").is_none());

    let (status, fetched) = app.api.get(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["order_id"], id);
    assert_eq!(fetched["customer_id"], "c-42");
}

#[tokio::test]
async fn an_order_is_published_to_orders_new_as_a_cloudevent_with_the_dedupe_id_equal_to_ce_id() {
    let app = spawn_app().await;
    let id = app.api.place_ok("c-42", &[("WIDGET-1", 2)], None).await;

    let js = app.nats.jetstream().await;
    let stream = js.get_stream("orders_stream").await.unwrap();
    let message = wait_until("the order is in orders_stream", Duration::from_secs(10), || async {
        stream.direct_get_last_for_subject("orders.new").await.ok()
    })
    .await;

    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(header("ce-type"), "orders.placed.v1");
    assert_eq!(header("ce-source"), "/order-api");
    assert!(!header("ce-time").is_empty());
    assert_eq!(header("Nats-Msg-Id"), header("ce-id"));
    let placed: OrderPlaced = decode(&message.payload).unwrap();
    assert_eq!(placed.order_id.to_string(), id);
    assert_eq!(placed.version, 1);
    assert_eq!(placed.items[0].sku, "WIDGET-1");

    // Once acknowledged by JetStream, the outbox row is marked sent.
    wait_until("the outbox row is marked sent", Duration::from_secs(10), || async {
        (app.unsent_outbox_rows().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_order_and_publish_once() {
    let app = spawn_app().await;
    let body = order_body("c-42", &[("WIDGET-1", 2), ("GADGET-1", 1)]);

    let first = app.api.place(&body, Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();

    // Same order, items listed in another order: still the same request.
    let again = app.api.place(&order_body("c-42", &[("GADGET-1", 1), ("WIDGET-1", 2)]), Some("key-1")).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();

    assert_eq!(first["order_id"], again["order_id"]);
    assert_eq!(app.orders_count().await, 1);
    assert_eq!(app.outbox_rows().await, 1);
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_422() {
    let app = spawn_app().await;
    app.api.place_ok("c-42", &[("WIDGET-1", 2)], Some("key-2")).await;

    let response = app.api.place(&order_body("c-42", &[("WIDGET-1", 3)]), Some("key-2")).await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(problem["errors"][0]["header"], "Idempotency-Key");
    assert_eq!(app.orders_count().await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_order() {
    let app = spawn_app().await;
    let body = order_body("c-7", &[("WIDGET-1", 1)]);

    let responses = join_all((0..20).map(|_| app.api.place(&body, Some("racing-key")))).await;

    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every request got the same order");
    assert_eq!(app.orders_count().await, 1);
    assert_eq!(app.outbox_rows().await, 1);
}

#[tokio::test]
async fn orders_without_a_key_are_always_new() {
    let app = spawn_app().await;
    let a = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    let b = app.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    assert_ne!(a, b);
    assert_eq!(app.orders_count().await, 2);
}

#[tokio::test]
async fn an_unknown_order_is_404_and_a_malformed_id_is_400() {
    let app = spawn_app().await;

    let (status, problem) = app.api.get("0193f1b2-0000-7000-8000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);

    let (status, problem) = app.api.get("not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["parameter"], "id");
}

#[tokio::test]
async fn health_and_readiness_report_their_dependencies() {
    let mut app = spawn_app().await;
    let http = app.api.http().clone();
    let url = |path: &str| format!("{}{path}", app.api.base_url);

    let health = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = http.get(url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"], json!({"postgres": "ok", "nats": "ok"}));

    app.nats.stop();
    let problem = wait_until("readyz reports NATS down", Duration::from_secs(10), || async {
        let response = http.get(url("/readyz")).send().await.ok()?;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    let problem: Value = problem.json().await.unwrap();
    assert_eq!(problem["checks"]["nats"], "unreachable");
    assert_eq!(problem["checks"]["postgres"], "ok");
    // Alive all the same.
    assert_eq!(http.get(url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
}
