//! Small clients for the services' HTTP APIs, so tests read as what they do.

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

macro_rules! operator_token {
    () => {
        "test-operator-token-5f0c2a9e17d4"
    };
}

/// The operator token the services a test starts accept, as the operator `test`: what tests
/// send to the operator routes (`PUT /inventory/{sku}`, `/dead-letters`).
pub const OPERATOR_TOKEN: &str = operator_token!();

/// The setting that makes a service accept [`OPERATOR_TOKEN`]: the [`Stack`](crate::stack::Stack)
/// and the service crates' spawners pass it to every service they start.
pub const OPERATOR_TOKENS: (&str, &str) = ("OPERATOR_TOKENS", concat!("test:", operator_token!()));

/// The name the services record for a request that sends [`OPERATOR_TOKEN`].
pub const OPERATOR_NAME: &str = "test";

/// `request.with_operator_token()`: the request carries `Authorization: Bearer` [`OPERATOR_TOKEN`].
pub trait AsOperator {
    fn with_operator_token(self) -> Self;
}

impl AsOperator for RequestBuilder {
    fn with_operator_token(self) -> Self {
        self.bearer_auth(OPERATOR_TOKEN)
    }
}

/// order-api.
#[derive(Debug, Clone)]
pub struct OrderApi {
    pub base_url: String,
    http: reqwest::Client,
}

impl OrderApi {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), http: reqwest::Client::new() }
    }

    /// `POST /orders` with a JSON body and an optional `Idempotency-Key`.
    pub async fn place(&self, body: &Value, idempotency_key: Option<&str>) -> Response {
        let mut request = self.http.post(format!("{}/orders", self.base_url)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST /orders")
    }

    /// Places an order that must be accepted, and returns its ID.
    pub async fn place_ok(
        &self,
        customer: &str,
        items: &[(&str, u32)],
        idempotency_key: Option<&str>,
    ) -> String {
        let response = self.place(&order_body(customer, items), idempotency_key).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap_or_default());
        let body: Value = response.json().await.expect("JSON body");
        body["order_id"].as_str().expect("order_id").to_owned()
    }

    /// `GET /orders/{id}` → (status code, body).
    pub async fn get(&self, id: &str) -> (StatusCode, Value) {
        let response =
            self.http.get(format!("{}/orders/{id}", self.base_url)).send().await.expect("GET /orders/{id}");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The order's `status` field.
    pub async fn status_of(&self, id: &str) -> Option<String> {
        let (code, body) = self.get(id).await;
        (code == StatusCode::OK).then(|| body["status"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits up to `within` until the order has `status`, and returns its body then.
    pub async fn wait_for_status(&self, id: &str, status: &str, within: std::time::Duration) -> Value {
        crate::wait_until(&format!("order {id} is {status}"), within, || async {
            let (_, body) = self.get(id).await;
            (body["status"] == status).then_some(body)
        })
        .await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// An order request body.
pub fn order_body(customer: &str, items: &[(&str, u32)]) -> Value {
    json!({
        "customer_id": customer,
        "items": items.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
    })
}

/// inventory-worker's stock API.
#[derive(Debug, Clone)]
pub struct InventoryApi {
    pub base_url: String,
    http: reqwest::Client,
}

/// Stock of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub available: i64,
    pub reserved: i64,
}

impl InventoryApi {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), http: reqwest::Client::new() }
    }

    pub async fn get(&self, sku: &str) -> Stock {
        let response =
            self.http.get(format!("{}/inventory/{sku}", self.base_url)).send().await.expect("GET /inventory");
        assert_eq!(response.status(), StatusCode::OK, "GET /inventory/{sku}");
        let body: Value = response.json().await.expect("JSON");
        Stock {
            available: body["available"].as_i64().expect("available"),
            reserved: body["reserved"].as_i64().expect("reserved"),
        }
    }

    /// Like [`InventoryApi::get`], but `None` while the service cannot answer (e.g. its database
    /// is down).
    pub async fn get_opt(&self, sku: &str) -> Option<Stock> {
        let response = self.http.get(format!("{}/inventory/{sku}", self.base_url)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        Some(Stock { available: body["available"].as_i64()?, reserved: body["reserved"].as_i64()? })
    }

    /// `PUT /inventory/{sku}` as the test operator; the stock must be set.
    pub async fn set(&self, sku: &str, available: i64) {
        let response = self
            .http
            .put(format!("{}/inventory/{sku}", self.base_url))
            .with_operator_token()
            .json(&json!({ "available": available }))
            .send()
            .await
            .expect("PUT /inventory");
        assert!(response.status().is_success(), "PUT /inventory/{sku}: {}", response.status());
    }
}

/// dlq-service's review API, called as the test operator.
#[derive(Debug, Clone)]
pub struct DeadLetterApi {
    pub base_url: String,
    http: reqwest::Client,
}

impl DeadLetterApi {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), http: reqwest::Client::new() }
    }

    /// `GET /dead-letters?limit=200`: the newest 200 dead letters.
    pub async fn list(&self) -> Vec<Value> {
        let url = format!("{}/dead-letters?limit=200", self.base_url);
        let response = self.http.get(url).with_operator_token().send().await.expect("GET /dead-letters");
        assert_eq!(response.status(), StatusCode::OK, "GET /dead-letters");
        let page: Value = response.json().await.expect("JSON");
        page["items"].as_array().cloned().unwrap_or_default()
    }

    /// `POST /dead-letters/{id}/{action}` (`replay` or `discard`), with an optional JSON body
    /// → (status code, body).
    pub async fn review(&self, id: &str, action: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}/dead-letters/{id}/{action}", self.base_url);
        let mut request = self.http.post(url).with_operator_token();
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("POST /dead-letters/{id}/{action}");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Sends a raw HTTP/1.1 request to `base_url` (the head, then the whole body, as a simple client
/// does, and with the path exactly as given: no client normalises `/..` away) and returns the
/// first bytes of the answer. Panics if no answer comes within 3 s or the connection is reset.
pub async fn raw_exchange(base_url: &str, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send the head");
    stream.write_all(body).await.expect("the server reads the body it is sent");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer, not a reset connection");
    String::from_utf8_lossy(&answer[..read]).into_owned()
}
