//! The operator API from the outside, against the real binaries: operators need their token,
//! customers do not, a service with no token configured does not start, and no token is ever
//! written to a log.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{
    ServiceProcess, free_port,
    http::{AsOperator, OPERATOR_TOKEN},
    stack::Stack,
    wait_until,
};

/// A guess that looks like a token, to check that refused ones are not logged either.
const GUESS: &str = "a-guessed-token-that-must-not-be-logged";

#[tokio::test]
async fn operators_need_their_token_customers_do_not_and_no_token_is_ever_logged() {
    let stack = Stack::start_with_dlq(1, &[]).await;
    let order = stack.api.place_ok("c-1", &[("WIDGET-1", 1)], None).await;
    assert_eq!(stack.api.get(&order).await.0, StatusCode::OK, "the customer-facing API stays open");

    let http = reqwest::Client::new();
    let dlq = &stack.dlq.as_ref().unwrap().base_url;
    let worker = &stack.workers[0].inventory.base_url;
    let operator_routes =
        [(Method::GET, format!("{dlq}/dead-letters")), (Method::PUT, format!("{worker}/inventory/WIDGET-1"))];
    for (method, url) in &operator_routes {
        let request = || http.request(method.clone(), url).json(&json!({"available": 500}));
        let missing = request().send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED, "{method} {url}");
        assert!(missing.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        assert_eq!(missing.headers()["content-type"], "application/problem+json");
        let wrong = request().bearer_auth(GUESS).send().await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {url}");
        assert!(wrong.headers()["www-authenticate"].to_str().unwrap().contains(r#"error="invalid_token""#));
        let allowed = request().with_operator_token().send().await.unwrap();
        assert_eq!(allowed.status(), StatusCode::OK, "{method} {url}");
    }
    let stock = http.get(format!("{worker}/inventory/WIDGET-1")).send().await.unwrap();
    assert_eq!(stock.status(), StatusCode::OK, "reading stock stays open");

    for process in [&stack.dlq.as_ref().unwrap().process, &stack.workers[0].process] {
        let log = process.log_text();
        assert!(log.contains("operator routes require a bearer token"), "{}:\n{log}", process.name);
        assert!(log.contains("operator request refused"), "{}:\n{log}", process.name);
        for secret in [OPERATOR_TOKEN, GUESS] {
            assert!(!log.contains(secret), "{} logged a token:\n{log}", process.name);
        }
    }
}

#[tokio::test]
async fn a_service_with_operator_routes_and_no_token_refuses_to_start_unless_told_they_are_open() {
    // Nothing listens on these: a service that got past its configuration would keep waiting.
    let unreachable = [
        ("NATS_URL", format!("nats://127.0.0.1:{}", free_port())),
        ("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{}/orders", free_port())),
        ("HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
    ];
    for binary in ["dlq-service", "inventory-worker"] {
        let mut refused = ServiceProcess::spawn(binary, &format!("{binary}-no-tokens"), &unreachable);
        let status = wait_until(&format!("{binary} exits"), Duration::from_secs(30), || {
            std::future::ready(refused.exited())
        })
        .await;
        assert!(!status.success(), "{binary}");
        let log = refused.log_text();
        assert!(log.contains("OPERATOR_TOKENS=name:token"), "{binary} says how to set a token:\n{log}");
        assert!(log.contains("OPERATOR_AUTH=disabled"), "{binary}:\n{log}");

        let mut env = unreachable.to_vec();
        env.push(("OPERATOR_AUTH", "disabled".to_owned()));
        let open = ServiceProcess::spawn(binary, &format!("{binary}-auth-disabled"), &env);
        wait_until(
            &format!("{binary} warns that its operator routes are open"),
            Duration::from_secs(30),
            || {
                std::future::ready(
                    open.log_text().contains("operator routes are open to anyone").then_some(()),
                )
            },
        )
        .await;
        let log = open.log_text();
        assert!(log.contains("WARN"), "at warn level:\n{log}");
        // It goes on to connect (and, with nothing listening, fails at that, not at its settings).
        assert!(!log.contains("no operator tokens"), "{binary}:\n{log}");
    }
}
