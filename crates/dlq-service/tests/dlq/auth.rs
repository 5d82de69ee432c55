//! The review API is for operators: a named bearer token, whose name is the reviewer recorded.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::http::OPERATOR_TOKEN;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const ALICE: &str = "alice-token-6c1e9b03f2a4";
const BOB: &str = "bob-token-0d7a4f5e8c21";

async fn send(dlq: &TestDlq, method: Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = dlq.http.request(method, format!("{}{path}", dlq.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_dead_letter_route_answers_401_without_the_right_token_and_serves_with_it() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;
    let routes = [
        (Method::GET, "/dead-letters".to_owned()),
        (Method::GET, format!("/dead-letters/{id}")),
        (Method::POST, format!("/dead-letters/{id}/replay")),
        (Method::POST, format!("/dead-letters/{id}/discard")),
    ];
    for (method, path) in &routes {
        let missing = send(&dlq, method.clone(), path, None).await;
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(missing.headers()["www-authenticate"], r#"Bearer realm="operator""#, "{method} {path}");
        assert_eq!(missing.headers()["content-type"], "application/problem+json");
        let problem: Value = missing.json().await.unwrap();
        assert_eq!(
            (problem["status"].as_u64(), problem["type"].as_str()),
            (Some(401), Some("/problems/unauthorized"))
        );

        let wrong = send(&dlq, method.clone(), path, Some("an-operator-token-it-is-not")).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let challenge = wrong.headers()["www-authenticate"].to_str().unwrap();
        assert_eq!(challenge, r#"Bearer realm="operator", error="invalid_token""#);

        let malformed = dlq
            .http
            .request(method.clone(), format!("{}{path}", dlq.base_url))
            .header("authorization", format!("Basic {OPERATOR_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(malformed.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let (_, row) = dlq.get(&format!("/dead-letters/{id}")).await;
    assert_eq!(row["status"], "pending", "no refused request changed anything");

    // With the token: served (a GET), or refused for what the body lacks, not for who sent it.
    assert_eq!(send(&dlq, Method::GET, "/dead-letters", Some(OPERATOR_TOKEN)).await.status(), StatusCode::OK);
    let (status, _) = dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = dlq.post(&format!("/dead-letters/{id}/replay"), None).await;
    assert_eq!(status, StatusCode::OK);

    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(send(&dlq, Method::GET, path, None).await.status(), StatusCode::OK, "{path} stays open");
    }
    let unknown = send(&dlq, Method::GET, "/nowhere", None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_reviewer_recorded_is_the_token_s_name_and_a_by_in_the_body_is_refused() {
    let tokens = format!("alice:{ALICE},bob:{BOB}");
    let dlq = spawn_dlq_on(Servers::start().await, &[("OPERATOR_TOKENS", &tokens)]).await;
    let (replayed, discarded) = (dlq.seed(order_letter(1)).await, dlq.seed(order_letter(2)).await);

    for (path, body) in [
        (format!("/dead-letters/{replayed}/replay"), json!({"by": "mallory"})),
        (format!("/dead-letters/{discarded}/discard"), json!({"reason": "dup", "by": "alice"})),
        (format!("/dead-letters/{discarded}/discard"), json!({"reason": "dup", "by": null})),
    ] {
        let (status, problem) = dlq.post_with_token(&path, Some(BOB), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], "#/by");
        assert!(problem["errors"][0]["detail"].as_str().unwrap().contains("token"), "{problem}");
    }
    let (status, _) =
        dlq.post_with_token(&format!("/dead-letters/{replayed}/replay"), Some(OPERATOR_TOKEN), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "this service knows alice and bob only");

    let (status, row) =
        dlq.post_with_token(&format!("/dead-letters/{replayed}/replay"), Some(ALICE), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["status_changed_by"], "alice");
    let (status, row) = dlq
        .post_with_token(
            &format!("/dead-letters/{discarded}/discard"),
            Some(BOB),
            Some(json!({"reason": "dup"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (row["status_changed_by"].as_str(), row["status_reason"].as_str()),
        (Some("bob"), Some("dup"))
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT status_changed_by FROM dead_letters ORDER BY source_sequence")
            .fetch_all(&dlq.pool)
            .await
            .unwrap();
    assert_eq!(stored, ["alice", "bob"]);
}

#[tokio::test]
async fn the_service_refuses_to_start_without_tokens_unless_authentication_is_disabled_explicitly() {
    let servers = Servers::start().await;
    let config = servers.config(&[("OPERATOR_TOKENS", "")]);
    let err = dlq_service::Application::build(config, &CancellationToken::new()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("OPERATOR_TOKENS=name:token"), "says how to set one: {text}");
    assert!(text.contains("OPERATOR_TOKENS_FILE") && text.contains("OPERATOR_AUTH=disabled"), "{text}");

    let dlq = spawn_dlq_on(servers, &[("OPERATOR_TOKENS", ""), ("OPERATOR_AUTH", "disabled")]).await;
    let id = dlq.seed(order_letter(1)).await;
    let (status, row) = dlq
        .post_with_token(&format!("/dead-letters/{id}/discard"), None, Some(json!({"reason": "test"})))
        .await;
    assert_eq!(status, StatusCode::OK, "no token needed once disabled");
    assert_eq!(row["status_changed_by"], "anonymous");
}

#[tokio::test]
async fn tokens_can_be_read_from_a_file_of_name_token_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operator-tokens");
    std::fs::write(&file, format!("# on call this week\nalice:{ALICE}\n\nbob:{BOB}\n")).unwrap();
    let path = file.to_str().unwrap();
    let dlq =
        spawn_dlq_on(Servers::start().await, &[("OPERATOR_TOKENS", ""), ("OPERATOR_TOKENS_FILE", path)])
            .await;
    let id = dlq.seed(order_letter(1)).await;
    let (status, row) = dlq
        .post_with_token(&format!("/dead-letters/{id}/discard"), Some(BOB), Some(json!({"reason": "r"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["status_changed_by"], "bob");
}

/// The command line needs no token (it has the service's database rights already) and records
/// its reviewer as `cli:<name>`, which no token's name can be.
#[tokio::test]
async fn the_command_line_records_its_reviewer_as_cli_and_the_name() {
    use dlq_service::cli::{Command, run};
    let dlq = spawn_dlq().await;
    let (replayed, discarded) = (dlq.seed(order_letter(1)).await, dlq.seed(order_letter(2)).await);
    // The command line's own configuration: no operator token at all.
    let cli_config = dlq_service::Config::from_env(&shared::config::Env::from_pairs([(
        "DATABASE_URL",
        dlq.database_url.as_str(),
    )]))
    .unwrap();
    assert!(cli_config.operator_auth.ensure_configured().is_err(), "no token configured");
    run(Command::Replay { id: replayed, by: "alice".into(), reason: None }, &cli_config).await.unwrap();
    let discard = Command::Discard { id: discarded, reason: "duplicate".into(), by: "bob".into() };
    run(discard, &cli_config).await.unwrap();
    let (_, row) = dlq.get(&format!("/dead-letters/{replayed}")).await;
    assert_eq!(
        (row["status"].as_str(), row["status_changed_by"].as_str()),
        (Some("replayed"), Some("cli:alice"))
    );
    let (_, row) = dlq.get(&format!("/dead-letters/{discarded}")).await;
    assert_eq!(row["status_changed_by"], "cli:bob");
}
