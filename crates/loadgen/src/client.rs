//! The HTTP client for order-api: placing an order (honouring `Retry-After`) and reading one.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{StatusCode, Url, header::RETRY_AFTER};
use serde_json::Value;
use uuid::Uuid;

use crate::{orders::OrderView, report::ErrorKind};

/// How long one request may take. order-api answers 503 itself after 10 s, so this is only
/// reached when the service or the network hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times one request is sent again after a 503 before loadgen gives up on it. With
/// order-api's `Retry-After: 5` that is over a minute and a half of overload.
pub const MAX_RETRIES_AFTER_503: u32 = 20;
/// The wait after a 503 that carries no usable `Retry-After` (loadgen reads only the seconds
/// form, which is what order-api sends).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A ceiling on a server's `Retry-After`, so a wrong header cannot stall a run for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// order-api's answer to a `POST /orders` that was accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order: OrderView,
    /// `Idempotent-Replayed: true`: the key was known, and this is the order it made before.
    pub replayed: bool,
}

/// The outcome of placing one order, including the 503s on the way.
#[derive(Debug)]
pub struct Placement {
    pub result: Result<Accepted, ErrorKind>,
    /// How many times the request was sent again after a 503 and its `Retry-After`.
    pub retries_after_503: u32,
}

#[derive(Debug, Clone)]
pub struct OrderApiClient {
    http: reqwest::Client,
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
}

impl OrderApiClient {
    pub fn new(base_url: &Url) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base: base_url.as_str().trim_end_matches('/').to_owned() })
    }

    /// `GET /healthz`, once, before the run: a wrong URL or a stopped service is an error that
    /// names the URL, not a summary full of network errors.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach order-api at {}", self.base))?;
        if !response.status().is_success() {
            bail!(
                "order-api at {} answered GET /healthz with {}: is it order-api?",
                self.base,
                response.status()
            );
        }
        Ok(())
    }

    /// `POST /orders` with `key` as its `Idempotency-Key`.
    ///
    /// A 503 means "overloaded, come back later", and `Retry-After` says when. Loadgen waits
    /// that long and sends the *same* request with the *same* key: if the first one was in fact
    /// stored (the answer lost on the way), order-api answers with that order rather than
    /// making a second one. That is what makes a retry safe.
    pub async fn place(&self, body: &Value, key: &str) -> Placement {
        let url = format!("{}/orders", self.base);
        let mut retries_after_503 = 0;
        loop {
            let sent = self.http.post(&url).header("Idempotency-Key", key).json(body).send().await;
            let response = match sent {
                Ok(response) => response,
                Err(err) => return Placement { result: Err(ErrorKind::from(&err)), retries_after_503 },
            };
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE && retries_after_503 < MAX_RETRIES_AFTER_503 {
                let wait = retry_after(&response);
                retries_after_503 += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            let result = if status == StatusCode::ACCEPTED {
                let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
                match response.json::<OrderView>().await {
                    Ok(order) => Ok(Accepted { order, replayed }),
                    Err(err) => Err(ErrorKind::from(&err)),
                }
            } else {
                Err(ErrorKind::Status(status.as_u16()))
            };
            return Placement { result, retries_after_503 };
        }
    }

    /// `GET /orders/{id}`.
    pub async fn order(&self, id: Uuid) -> Result<OrderView, ErrorKind> {
        let response = self
            .http
            .get(format!("{}/orders/{id}", self.base))
            .send()
            .await
            .map_err(|err| ErrorKind::from(&err))?;
        if response.status() != StatusCode::OK {
            return Err(ErrorKind::Status(response.status().as_u16()));
        }
        response.json().await.map_err(|err| ErrorKind::from(&err))
    }
}

/// The wait a 503 asks for: `Retry-After` in seconds, at least 1 s, at most [`MAX_RETRY_AFTER`].
fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |secs| Duration::from_secs(secs.max(1)))
        .min(MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use axum::{Router, http::HeaderMap, response::IntoResponse, routing::post};

    use super::*;

    /// A stand-in order-api that answers the first `POST /orders` with 503 and `Retry-After: 1`,
    /// and every later one with 202. It records when each request arrived, and with which key.
    async fn overloaded_once() -> (Url, Arc<Mutex<Vec<(Instant, String)>>>) {
        let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let record = Arc::clone(&seen);
        let app = Router::new().route(
            "/orders",
            post(move |headers: HeaderMap| async move {
                let key = headers["idempotency-key"].to_str().unwrap_or_default().to_owned();
                let mut seen = record.lock().expect("not poisoned");
                seen.push((Instant::now(), key));
                if seen.len() == 1 {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response()
                } else {
                    let order = serde_json::json!({
                        "order_id": "01a20327-659e-7378-829a-83c67b06f8ee", "status": "pending",
                        "created_at": "2026-11-22T12:00:00Z", "updated_at": "2026-11-22T12:00:00Z",
                    });
                    (axum::http::StatusCode::ACCEPTED, axum::Json(order)).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = Url::parse(&format!("http://{}", listener.local_addr().expect("bound"))).expect("a URL");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn a_503_is_sent_again_with_the_same_key_no_sooner_than_its_retry_after() {
        let (url, seen) = overloaded_once().await;
        let client = OrderApiClient::new(&url).expect("a client");

        let placement = client.place(&serde_json::json!({"customer_id": "c-1"}), "key-1").await;

        assert!(placement.result.is_ok(), "{:?}", placement.result);
        assert_eq!(placement.retries_after_503, 1);
        let seen = seen.lock().expect("not poisoned");
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].1.as_str(), seen[1].1.as_str()), ("key-1", "key-1"), "the same key again");
        let waited = seen[1].0 - seen[0].0;
        assert!(waited >= Duration::from_secs(1), "sent again after {waited:?}, before Retry-After: 1");
    }
}
