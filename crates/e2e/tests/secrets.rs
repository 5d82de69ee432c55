//! Secrets never leave the process: passwords and tokens in `DATABASE_URL` and `NATS_URL` are
//! redacted in every log line and error message a service writes.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use test_support::{ServiceProcess, TestDatabase, free_port, http::OPERATOR_TOKENS, wait_until};

const SECRET: &str = "s3cret-do-not-log";

#[tokio::test]
async fn passwords_in_connection_urls_are_never_logged() {
    let db = TestDatabase::new();
    // The test server trusts every connection, so the password is accepted and ignored.
    let database_url = db.url().replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
    // Nothing listens there: the service keeps saying it cannot reach NATS, naming the URL.
    let nats_url = format!("nats://orders:{SECRET}@127.0.0.1:{}", free_port());
    let service = ServiceProcess::spawn(
        "inventory-worker",
        "worker-secrets",
        &[
            ("DATABASE_URL", database_url),
            ("NATS_URL", nats_url),
            ("HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            (OPERATOR_TOKENS.0, OPERATOR_TOKENS.1.to_owned()),
        ],
    );
    wait_until("the worker reports that NATS is unreachable", Duration::from_secs(30), || async {
        service.log_text().contains("cannot reach NATS yet").then_some(())
    })
    .await;
    let log = service.log_text();
    assert!(log.contains("nats://orders:***@127.0.0.1"), "the URL is named, redacted:\n{log}");
    assert!(!log.contains(SECRET), "a password was logged:\n{log}");

    let bad = ServiceProcess::spawn(
        "inventory-worker",
        "worker-bad-url",
        &[("DATABASE_URL", format!("mysql://app:{SECRET}@db/orders"))],
    );
    wait_until("the bad configuration is refused", Duration::from_secs(30), || async {
        bad.log_text().contains("invalid configuration").then_some(())
    })
    .await;
    assert!(!bad.log_text().contains(SECRET), "a password was logged:\n{}", bad.log_text());
}

/// The review CLI talks to a person at a terminal: an error is one plain line, each cause named
/// once, no log formatting, no password.
#[tokio::test]
async fn the_review_cli_reports_an_error_as_one_plain_line() {
    let closed_port = free_port();
    let output = std::process::Command::new(test_support::process::binary_path("dlq-service"))
        .args(["list"])
        .env_clear()
        .env("DATABASE_URL", format!("postgres://review:{SECRET}@127.0.0.1:{closed_port}/orders"))
        .env("DATABASE_ACQUIRE_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: could not connect to Postgres: "), "{stderr}");
    let refused = "Connection refused (os error 111)";
    assert_eq!(lines[0].matches(refused).count(), 1, "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
