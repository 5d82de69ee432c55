//! The stock API.

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{NatsServer, TestDatabase, http::raw_exchange};

use crate::helpers::spawn_worker;

#[tokio::test]
async fn stock_can_be_read_and_set() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let worker = spawn_worker(&nats, &db, &[]).await;

    let seeded = worker.inventory.get("WIDGET-1").await;
    assert_eq!((seeded.available, seeded.reserved), (1000, 0));

    worker.inventory.set("NEW-SKU", 7).await;
    assert_eq!(worker.inventory.get("NEW-SKU").await.available, 7);
    worker.inventory.set("NEW-SKU", 3).await;
    assert_eq!(worker.inventory.get("NEW-SKU").await.available, 3);
}

#[tokio::test]
async fn bad_stock_requests_are_problems() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let worker = spawn_worker(&nats, &db, &[]).await;
    let http = reqwest::Client::new();
    let url = |sku: &str| format!("{}/inventory/{sku}", worker.inventory.base_url);

    let missing = http.get(url("NOPE")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    let negative = http.put(url("A")).json(&json!({"available": -1})).send().await.unwrap();
    assert_eq!(negative.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = negative.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "#/available");

    let bad_sku = http.put(url("bad%20sku")).json(&json!({"available": 1})).send().await.unwrap();
    assert_eq!(bad_sku.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bad_sku.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "sku");
}

#[tokio::test]
async fn setting_stock_has_the_same_rules_and_limits_as_placing_an_order() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let worker = spawn_worker(&nats, &db, &[]).await;
    let http = reqwest::Client::new();
    let url = |sku: &str| format!("{}/inventory/{sku}", worker.inventory.base_url);

    for sku in [".", "..", "%FF"] {
        let body = br#"{"available": 1}"#;
        let head = format!(
            "PUT /inventory/{sku} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = raw_exchange(&worker.inventory.base_url, &head, body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{sku}: {answer}");
        assert!(answer.contains(r#""parameter":"sku""#), "{sku}: {answer}");
    }
    let padded = format!("{{\"available\": 1{}}}", " ".repeat(1024 * 1024));
    let response = http
        .put(url("WIDGET-1"))
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(worker.inventory.get("WIDGET-1").await.available, 1000);
}
