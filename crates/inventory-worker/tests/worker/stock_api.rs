//! The stock API.

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    NatsServer, TestDatabase,
    http::{AsOperator, OPERATOR_TOKEN, raw_exchange},
};

use inventory_worker::{Application, Config};
use tokio_util::sync::CancellationToken;

use crate::helpers::{env, spawn_worker, start_worker};

#[tokio::test]
async fn stock_can_be_read_and_set() {
    let (_nats, _db, worker) = start_worker().await;

    let seeded = worker.inventory.get("WIDGET-1").await;
    assert_eq!((seeded.available, seeded.reserved), (1000, 0));

    worker.inventory.set("NEW-SKU", 7).await;
    assert_eq!(worker.inventory.get("NEW-SKU").await.available, 7);
    worker.inventory.set("NEW-SKU", 3).await;
    assert_eq!(worker.inventory.get("NEW-SKU").await.available, 3);
}

#[tokio::test]
async fn bad_stock_requests_are_problems() {
    let (_nats, _db, worker) = start_worker().await;
    let http = reqwest::Client::new();
    let url = |sku: &str| format!("{}/inventory/{sku}", worker.inventory.base_url);

    let missing = http.get(url("NOPE")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    let negative =
        http.put(url("A")).with_operator_token().json(&json!({"available": -1})).send().await.unwrap();
    assert_eq!(negative.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = negative.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "#/available");

    let bad_sku =
        http.put(url("bad%20sku")).with_operator_token().json(&json!({"available": 1})).send().await.unwrap();
    assert_eq!(bad_sku.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bad_sku.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "sku");
}

#[tokio::test]
async fn setting_stock_has_the_same_rules_and_limits_as_placing_an_order() {
    let (_nats, _db, worker) = start_worker().await;
    let http = reqwest::Client::new();
    let url = |sku: &str| format!("{}/inventory/{sku}", worker.inventory.base_url);

    for sku in [".", "..", "%FF"] {
        let body = br#"{"available": 1}"#;
        let head = format!(
            "PUT /inventory/{sku} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = raw_exchange(&worker.inventory.base_url, &head, body).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{sku}: {answer}");
        assert!(answer.contains(r#""parameter":"sku""#), "{sku}: {answer}");
    }
    let padded = format!("{{\"available\": 1{}}}", " ".repeat(1024 * 1024));
    let response = http
        .put(url("WIDGET-1"))
        .with_operator_token()
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(worker.inventory.get("WIDGET-1").await.available, 1000);
}

#[tokio::test]
async fn setting_stock_needs_an_operator_token_and_reading_it_does_not() {
    let (_nats, _db, worker) = start_worker().await;
    let http = reqwest::Client::new();
    let url = format!("{}/inventory/WIDGET-1", worker.inventory.base_url);
    let body = json!({"available": 5});

    let anonymous = http.put(&url).json(&body).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], r#"Bearer realm="operator""#);
    assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
    let problem: Value = anonymous.json().await.unwrap();
    assert_eq!(problem["status"], 401);

    let wrong = http.put(&url).bearer_auth("not-the-operator-token").json(&body).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let challenge = wrong.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer") && challenge.contains(r#"error="invalid_token""#), "{challenge}");
    // Even a SKU that breaks the rules is refused for the missing token first: nothing about
    // the route is told to a caller who may not use it.
    let bad = http.put(format!("{}/inventory/bad%20sku", worker.inventory.base_url)).json(&body).send().await;
    assert_eq!(bad.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(worker.inventory.get("WIDGET-1").await.available, 1000, "nothing was set");

    let allowed = http.put(&url).with_operator_token().json(&body).send().await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    let open = http.get(&url).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK, "reading stock stays open");
    let stock: Value = open.json().await.unwrap();
    assert_eq!(stock["available"], 5);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = http.get(format!("{}{path}", worker.inventory.base_url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path} stays open to probes");
    }
}

#[tokio::test]
async fn without_operator_tokens_the_worker_refuses_to_start_unless_authentication_is_disabled_explicitly() {
    let nats = NatsServer::start().await;
    let db = TestDatabase::new();
    let (nats_url, db_url) = (nats.url(), db.url());
    // An empty value counts as unset.
    let config = Config::from_env(&env(&nats_url, &db_url, &[("OPERATOR_TOKENS", "")])).unwrap();
    let err = Application::build(config, &CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("OPERATOR_TOKENS=name:token"), "says how to set one: {text}");
    assert!(text.contains("OPERATOR_AUTH=disabled"), "{text}");

    let open = spawn_worker(&nats, &db, &[("OPERATOR_TOKENS", ""), ("OPERATOR_AUTH", "disabled")]).await;
    let response = reqwest::Client::new()
        .put(format!("{}/inventory/WIDGET-1", open.inventory.base_url))
        .json(&json!({"available": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "no token needed once disabled");
}
