//! Bad input gets a clear RFC 9457 problem, never a 500.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use test_support::http::raw_exchange;

use crate::helpers::spawn_app;

/// Sends a raw body to `POST /orders` and returns the status and the problem document.
async fn post_raw(
    app: &crate::helpers::TestApp,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = app.api.http().post(format!("{}/orders", app.api.base_url)).body(body);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json", "for {status}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
    assert!(problem["title"].is_string() && problem["type"].is_string() && problem["detail"].is_string());
    (status, problem)
}

fn pointers(problem: &Value) -> Vec<&str> {
    problem["errors"].as_array().unwrap().iter().filter_map(|e| e["pointer"].as_str()).collect()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let (status, problem) =
        post_raw(&app, Some("application/json"), br#"{"customer_id": "c-1", "#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "/problems/malformed-json");
}

#[tokio::test]
async fn a_wrong_type_is_422_naming_the_field() {
    let app = spawn_app().await;
    let body = json!({"customer_id": "c-1", "items": [{"sku": "A", "quantity": "two"}]});
    let (status, problem) = post_raw(&app, Some("application/json"), body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers(&problem), ["#/items/0/quantity"]);
}

#[tokio::test]
async fn missing_and_invalid_fields_are_422_naming_each_field() {
    let app = spawn_app().await;
    let body = json!({"items": [{"sku": "A", "quantity": 0}, {"sku": "A", "quantity": 1}]});
    let (status, problem) = post_raw(&app, Some("application/json"), body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers(&problem), ["#/customer_id", "#/items/0/quantity", "#/items/1/sku"]);
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = spawn_app().await;
    let padding = "x".repeat(70 * 1024);
    let body = json!({"customer_id": "c-1", "items": [], "padding": padding});
    let (status, _) = post_raw(&app, Some("application/json"), body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let (status, _) = post_raw(&app, Some("text/plain"), b"customer_id=c-1".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = post_raw(&app, None, b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_bad_idempotency_key_is_400_naming_the_header() {
    let app = spawn_app().await;
    let response = app
        .api
        .http()
        .post(format!("{}/orders", app.api.base_url))
        .header("Idempotency-Key", "x".repeat(300))
        .json(&json!({"customer_id": "c-1", "items": [{"sku": "A", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["header"], "Idempotency-Key");
    assert_eq!(app.orders_count().await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_same_format() {
    let app = spawn_app().await;
    let http = app.api.http();
    let response = http.get(format!("{}/nowhere", app.api.base_url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let response = http.delete(format!("{}/orders", app.api.base_url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
}

#[tokio::test]
async fn garbage_never_causes_a_500() {
    let app = spawn_app().await;
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"null",
        b"[]",
        b"\"text\"",
        b"42",
        b"{\"customer_id\": null, \"items\": null}",
        b"{\"customer_id\": {}, \"items\": {}}",
        b"{\"items\": [null]}",
        b"\xff\xfe\x00",
        b"{\"customer_id\": \"c\", \"items\": [{\"sku\": \"A\", \"quantity\": 1e309}]}",
        b"{\"customer_id\": \"c\", \"items\": [{\"sku\": \"A\", \"quantity\": 99999999999999999999}]}",
    ];
    for body in bodies {
        let (status, _) = post_raw(&app, Some("application/json"), body.to_vec()).await;
        assert!(status.is_client_error(), "{status} for {:?}", String::from_utf8_lossy(body));
    }
}

#[tokio::test]
async fn an_array_is_not_an_order_even_where_serde_would_read_one() {
    let app = spawn_app().await;
    let body = json!(["c-arr", [["WIDGET-1", 1]]]).to_string().into_bytes();
    let (status, problem) = post_raw(&app, Some("application/json"), body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers(&problem), ["#"]);
    assert_eq!(app.orders_count().await, 0);
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_problem_naming_it() {
    let app = spawn_app().await;
    let response = app.api.http().get(format!("{}/orders/%FF", app.api.base_url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["parameter"], "id", "{problem}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_at_once() {
    let app = spawn_app().await;
    let head = "POST /orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                Content-Length: 1000000000000\r\n\r\n";
    let answer = raw_exchange(&app.api.base_url, head, b"{\"customer_id\"").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn a_simple_client_that_sends_a_whole_oversized_body_can_read_the_413() {
    let app = spawn_app().await;
    let body = vec![b' '; 1024 * 1024];
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = raw_exchange(&app.api.base_url, &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
