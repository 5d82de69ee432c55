//! The review console over plain HTTP: sign-in, sessions, CSRF, escaping, paging, bulk actions,
//! and an HTML page (never a 500) for bad input. The browser test is in
//! `crates/e2e/tests/console.rs`.

use reqwest::{StatusCode, header, redirect};
use serde_json::json;
use test_support::http::{OPERATOR_NAME, OPERATOR_TOKEN};
use uuid::Uuid;

use crate::helpers::{TestDlq, order_letter, spawn_dlq};

/// A client of the console that keeps its session cookie and follows no redirect (so a test
/// sees each one).
struct Console {
    base_url: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

/// One answer: status, headers, body.
struct Page {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The value of the first form's hidden `csrf` field.
    fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form with a CSRF token") + 19;
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

impl Console {
    fn new(dlq: &TestDlq) -> Self {
        let http = reqwest::Client::builder().redirect(redirect::Policy::none()).build().unwrap();
        Self { base_url: dlq.base_url.clone(), http, cookie: None }
    }

    async fn signed_in(dlq: &TestDlq) -> Self {
        let mut console = Self::new(dlq);
        let page =
            console.post("/console/sign-in", &[("token", OPERATOR_TOKEN), ("next", "/console/")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let set_cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
        console.cookie = Some(set_cookie.split(';').next().unwrap().to_owned());
        console
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header(header::COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        Page { status, headers, body: response.text().await.unwrap() }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base_url))).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(form_post(self.http.post(format!("{}{path}", self.base_url)), form)).await
    }
}

/// The request with `form` as its body, as a browser sends a form.
fn form_post(request: reqwest::RequestBuilder, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    request
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
}

async fn status_of(dlq: &TestDlq, id: Uuid) -> (String, Option<String>, Option<String>) {
    sqlx::query_as("SELECT status, status_changed_by, status_reason FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(&dlq.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_page_asked_for_without_a_session_goes_to_the_sign_in_and_a_token_opens_a_strict_session() {
    let dlq = spawn_dlq().await;
    let mut console = Console::new(&dlq);

    let page = console.get("/console/?status=pending").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/console/sign-in?next=%2Fconsole%2F%3Fstatus%3Dpending");
    let form = console.get(page.location()).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"name="next" value="/console/?status=pending""#), "{}", form.body);

    let wrong = console.post("/console/sign-in", &[("token", "not-an-operator-token-at-all")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    assert!(wrong.body.contains("That is not an operator token."), "{}", wrong.body);

    let next = "/console/?status=pending";
    let signed_in = console.post("/console/sign-in", &[("token", OPERATOR_TOKEN), ("next", next)]).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), next);
    let cookie = signed_in.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains(OPERATOR_TOKEN), "the cookie never holds the token");
    console.cookie = Some(cookie.split(';').next().unwrap().to_owned());
    let list = console.get(next).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains(&format!("Signed in as <strong>{OPERATOR_NAME}</strong>")), "{}", list.body);

    // Signing out deletes the cookie; a session cookie whose signature is wrong is no session.
    let out = console.post("/console/sign-out", &[("csrf", &list.csrf())]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    console.cookie = Some(format!("{}x", console.cookie.unwrap()));
    assert_eq!(console.get("/console/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_sign_in_sends_nobody_to_another_site_afterwards() {
    let dlq = spawn_dlq().await;
    let console = Console::new(&dlq);
    for next in
        ["https://evil.example/", "//evil.example/console/", "/console/\\\\evil.example", "/dead-letters"]
    {
        let page = console.post("/console/sign-in", &[("token", OPERATOR_TOKEN), ("next", next)]).await;
        assert_eq!(page.location(), "/console/", "{next}");
    }
}

#[tokio::test]
async fn a_form_posted_without_this_sessions_csrf_token_is_refused_and_changes_nothing() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;
    let console = Console::signed_in(&dlq).await;
    let other = Console::signed_in(&dlq).await;
    let other_token = other.get("/console/").await.csrf();
    let discard = format!("/console/dead-letters/{id}/discard");

    for form in [
        vec![("reason", "spam")],
        vec![("reason", "spam"), ("csrf", "")],
        vec![("reason", "spam"), ("csrf", other_token.as_str())],
    ] {
        let page = console.post(&discard, &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(page.body.contains("CSRF"), "{}", page.body);
    }
    let cross_site = console
        .send(form_post(
            console
                .http
                .post(format!("{}{discard}", console.base_url))
                .header("Sec-Fetch-Site", "cross-site"),
            &[("reason", "spam"), ("csrf", &console.get(&discard).await.csrf())],
        ))
        .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    assert_eq!(status_of(&dlq, id).await.0, "pending");

    let csrf = console.get(&discard).await.csrf();
    let done = console.post(&discard, &[("reason", "  customer cancelled "), ("csrf", &csrf)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), format!("/console/dead-letters/{id}?done=discarded"));
    assert_eq!(
        status_of(&dlq, id).await,
        ("discarded".into(), Some(OPERATOR_NAME.into()), Some("customer cancelled".into())),
        "the reviewer recorded is the signed-in operator"
    );
}

#[tokio::test]
async fn a_discard_without_a_reason_is_asked_again_and_a_review_someone_took_first_is_a_409_naming_them() {
    let dlq = spawn_dlq().await;
    let id = dlq.seed(order_letter(1)).await;
    let console = Console::signed_in(&dlq).await;
    let csrf = console.get("/console/").await.csrf();

    let page = console
        .post(&format!("/console/dead-letters/{id}/discard"), &[("reason", "   "), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("The reason is required: say why."), "{}", page.body);

    let (status, _) =
        dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({"reason": "duplicate"}))).await;
    assert_eq!(status, StatusCode::OK, "someone else discards it through the JSON API");
    let page = console.post(&format!("/console/dead-letters/{id}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("Someone acted first"), "{}", page.body);
    assert!(page.body.contains(&format!("<strong>{OPERATOR_NAME}</strong> (duplicate)")), "{}", page.body);
    assert_eq!(status_of(&dlq, id).await.0, "discarded");
}

#[tokio::test]
async fn payloads_headers_and_reasons_are_shown_escaped_under_a_policy_that_allows_no_script() {
    let dlq = spawn_dlq().await;
    let mut letter = order_letter(1);
    letter.payload = Some(b"<script>alert('payload')</script>\x00\xff".to_vec());
    letter.headers.insert("x-evil".into(), r#""><img src=x onerror=alert(1)>"#.into());
    letter.reason = "unprocessable message: <b>bold</b>".into();
    letter.trace_id = Some(r#""><script>alert(2)</script>"#.into());
    let id = dlq.seed(letter).await;
    let console = Console::signed_in(&dlq).await;

    for path in [format!("/console/dead-letters/{id}"), "/console/".to_owned()] {
        let page = console.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("<script"), "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}");
        assert!(!page.body.contains("<b>"), "{path}");
        assert!(page.body.contains("unprocessable message: &lt;b&gt;bold&lt;/b&gt;"), "{path}");
        let csp = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("script-src"), "no script source at all: {csp}");
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    }
    let detail = console.get(&format!("/console/dead-letters/{id}")).await.body;
    assert!(detail.contains(r"&lt;script&gt;alert('payload')&lt;/script&gt;\u{0}\xff"), "{detail}");
    assert!(detail.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"), "{detail}");
    assert!(!detail.contains("/trace/"), "a trace ID that is not one makes no Jaeger link");
}

#[tokio::test]
async fn the_detail_links_the_trace_in_jaeger_and_the_order_status_and_shows_the_history() {
    let dlq = spawn_dlq().await;
    let mut letter = order_letter(1);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    letter.trace_id = Some(trace.into());
    let order = letter.order_id.unwrap();
    let id = dlq.seed(letter).await;
    let (status, _) =
        dlq.post(&format!("/dead-letters/{id}/discard"), Some(json!({"reason": "test order"}))).await;
    assert_eq!(status, StatusCode::OK);

    let page = Console::signed_in(&dlq).await.get(&format!("/console/dead-letters/{id}")).await.body;
    assert!(page.contains(&format!(r#"href="http://localhost:16686/trace/{trace}""#)), "{page}");
    assert!(page.contains(&format!(r#"href="http://localhost:8080/orders/{order}""#)), "{page}");
    assert!(page.contains("captured by <strong>dlq-service</strong>"), "{page}");
    assert!(page.contains(&format!("discarded by <strong>{OPERATOR_NAME}</strong>: test order")), "{page}");
    assert!(page.contains("&quot;sku&quot;: &quot;WIDGET-1&quot;"), "the payload, pretty JSON: {page}");
}

#[tokio::test]
async fn the_list_pages_newest_first_and_filters_by_status_and_text_with_counts_per_status() {
    let dlq = spawn_dlq().await;
    let mut ids = Vec::new();
    for sequence in 1..=27 {
        let mut letter = order_letter(sequence);
        if sequence % 9 == 0 {
            letter.last_error = Some("stock service timed out".into());
        }
        ids.push(dlq.seed(letter).await);
    }
    let (status, _) =
        dlq.post(&format!("/dead-letters/{}/discard", ids[0]), Some(json!({"reason": "x"}))).await;
    assert_eq!(status, StatusCode::OK);
    let console = Console::signed_in(&dlq).await;

    let first = console.get("/console/").await.body;
    assert!(first.contains(r#"All <span class="count">27</span>"#), "{first}");
    assert!(first.contains(r#"pending <span class="count">26</span>"#), "{first}");
    assert!(first.contains(r#"discarded <span class="count">1</span>"#), "{first}");
    assert_eq!(first.matches("<tr>").count(), 1 + 25, "a header row and a page of 25");
    let newest = first.find(&ids[26].to_string()).unwrap();
    assert!(newest < first.find(&ids[25].to_string()).unwrap(), "newest first");
    let older = format!("/console/?before={}", ids[2]);
    assert!(first.contains(&format!(r#"href="{older}""#)), "{first}");
    let second = console.get(&older).await.body;
    assert_eq!(second.matches("<tr>").count(), 1 + 2);
    assert!(second.contains("← Newest"));

    let pending = console.get("/console/?status=pending").await.body;
    assert!(!pending.contains(&ids[0].to_string()), "the discarded one is not pending");
    let timed_out = console.get("/console/?text=timed+out").await.body;
    assert_eq!(timed_out.matches("<tr>").count(), 1 + 3, "{timed_out}");
}

#[tokio::test]
async fn a_bulk_discard_shows_its_count_first_and_leaves_dead_letters_recorded_after_it_alone() {
    let dlq = spawn_dlq().await;
    let mut matching = Vec::new();
    for sequence in 1..=3 {
        let mut letter = order_letter(sequence);
        letter.last_error = Some("card declined".into());
        matching.push(dlq.seed(letter).await);
    }
    let unrelated = dlq.seed(order_letter(4)).await;
    let console = Console::signed_in(&dlq).await;

    let confirm = console.get("/console/bulk?action=discard&text=card+declined").await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.body.contains(r#"<strong class="count">3</strong> pending dead letters match"#),
        "{}",
        confirm.body
    );
    let upto =
        confirm.body.split(r#"name="upto" value=""#).nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut late = order_letter(5);
    late.last_error = Some("card declined".into());
    let late = dlq.seed(late).await;

    let form = [
        ("csrf", confirm.csrf()),
        ("action", "discard".into()),
        ("text", "card declined".into()),
        ("upto", upto),
    ];
    let without_reason =
        console.post("/console/bulk", &form.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    assert_eq!(without_reason.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut with_reason: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    with_reason.push(("reason", "fraud ring"));
    let done = console.post("/console/bulk", &with_reason).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("3 dead letters discarded."), "{}", done.body);
    for id in matching {
        assert_eq!(
            status_of(&dlq, id).await,
            ("discarded".into(), Some(OPERATOR_NAME.into()), Some("fraud ring".into()))
        );
    }
    assert_eq!(status_of(&dlq, unrelated).await.0, "pending", "did not match");
    assert_eq!(status_of(&dlq, late).await.0, "pending", "recorded after the count was shown");
}

#[tokio::test]
async fn bad_input_is_an_html_page_naming_the_parameter_never_a_500() {
    let dlq = spawn_dlq().await;
    let console = Console::signed_in(&dlq).await;
    let csrf = console.get("/console/").await.csrf();
    let long = "x".repeat(201);
    for (path, status, named) in [
        ("/console/dead-letters/not-a-uuid".to_owned(), StatusCode::BAD_REQUEST, "id"),
        ("/console/?status=lost".to_owned(), StatusCode::BAD_REQUEST, "status"),
        ("/console/?before=yesterday".to_owned(), StatusCode::BAD_REQUEST, "before"),
        (format!("/console/?text={long}"), StatusCode::BAD_REQUEST, "text"),
        ("/console/?text=%00".to_owned(), StatusCode::OK, ""),
        ("/console/bulk?action=explode".to_owned(), StatusCode::BAD_REQUEST, "action"),
        (format!("/console/dead-letters/{}", Uuid::now_v7()), StatusCode::NOT_FOUND, "no dead letter"),
    ] {
        let page = console.get(&path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(page.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "{path}");
        assert!(page.body.contains(named), "{path}: {}", page.body);
    }
    let id = dlq.seed(order_letter(1)).await;
    for form in [
        vec![("csrf", csrf.as_str()), ("reason", "nul \u{0} inside")],
        vec![("csrf", csrf.as_str()), ("reason", &"r".repeat(501))],
    ] {
        let page = console.post(&format!("/console/dead-letters/{id}/discard"), &form).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.body);
    }
    let page =
        console.post("/console/bulk", &[("csrf", &csrf), ("action", "replay"), ("upto", "soon")]).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("upto"), "{}", page.body);
    let stranger = Console::new(&dlq);
    let refused = stranger
        .send(stranger.http.get(format!("{}/console/", dlq.base_url)).bearer_auth("wrong-token-wrong-token"))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let bearer = stranger
        .send(stranger.http.get(format!("{}/console/", dlq.base_url)).bearer_auth(OPERATOR_TOKEN))
        .await;
    assert_eq!(bearer.status, StatusCode::OK, "a bearer token works as it does on the JSON API");
    assert_eq!(status_of(&dlq, id).await.0, "pending");
}
