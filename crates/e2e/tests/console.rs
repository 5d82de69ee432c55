//! The review console in a real browser (headless Chromium, `test_support::browser`), against
//! the whole system: dead letters made by orders that really failed, reviewed by clicking.
//!
//! Screenshots of the list and the detail view are written to `CONSOLE_SCREENSHOTS` (relative
//! to the repository; the README's are made with `CONSOLE_SCREENSHOTS=docs/images`), else to
//! `target/test-logs/console/`.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use test_support::{
    browser::Browser,
    http::{OPERATOR_NAME, OPERATOR_TOKEN},
    stack::Stack,
    wait_until,
};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);
const LAPTOP: (u32, u32) = (1280, 900);
const PHONE_WIDTH: u32 = 390;

fn screenshot_dir() -> PathBuf {
    match std::env::var("CONSOLE_SCREENSHOTS") {
        Ok(dir) => test_support::workspace_root().join(dir),
        Err(_) => test_support::log_dir().join("console"),
    }
}

/// A message no consumer can read, whose bytes are an attack on whoever displays them.
async fn publish_script_payload(stack: &Stack) {
    let js = stack.nats.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-id", Uuid::now_v7().to_string().as_str());
    headers.insert("ce-type", "orders.placed.v1");
    let payload = b"<script>window.pwned = true; alert('pwned')</script>".to_vec();
    js.publish_with_headers("orders.new", headers, payload.into()).await.unwrap().await.unwrap();
}

fn is_sign_in(url: &str) -> bool {
    url.contains("/console/sign-in?next=")
}

/// The dead letter of `order`, from the JSON API.
fn letter_of<'a>(letters: &'a [Value], order: &str) -> &'a str {
    letters.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_str().unwrap()
}

#[tokio::test]
async fn a_reviewer_signs_in_replays_a_dead_order_until_it_is_reserved_discards_another_and_sees_a_script_payload_as_text()
 {
    let mut stack = Stack::start_with_dlq(0, &[]).await;
    // A worker with a bug: every delivery fails, and the orders end as dead letters.
    stack.add_worker_with("broken", &[("INVENTORY_FAILURE_RATE", "1.0")]).await;
    let replayed = stack.api.place_ok("c-1", &[("WIDGET-1", 3)], None).await;
    let discarded = stack.api.place_ok("c-2", &[("WIDGET-1", 4)], None).await;
    publish_script_payload(&stack).await;
    stack.api.wait_for_status(&replayed, "dead_lettered", SETTLE).await;
    stack.api.wait_for_status(&discarded, "dead_lettered", SETTLE).await;
    let dlq = stack.dlq.as_ref().unwrap();
    let letters = wait_until("three dead letters", SETTLE, || async {
        let letters = dlq.api().list().await;
        (letters.len() == 3).then_some(letters)
    })
    .await;
    let script_letter =
        letters.iter().find(|l| l["order_id"].is_null()).unwrap()["id"].as_str().unwrap().to_owned();
    let (replay_id, discard_id) =
        (letter_of(&letters, &replayed).to_owned(), letter_of(&letters, &discarded).to_owned());
    // The fix is deployed.
    assert!(stack.workers[0].process.terminate().await.success());
    stack.add_worker("fixed").await;
    let console = format!("{}/console/", stack.dlq.as_ref().unwrap().base_url);

    let browser = Browser::start(LAPTOP.0, LAPTOP.1).await;
    browser.goto(&console).await;
    browser.wait_for_url("is the sign-in", is_sign_in).await;
    browser.type_into("#token", OPERATOR_TOKEN).await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_for_url("is the list, where it was going", |url| url == console).await;
    let cookie = browser.cookies().await.into_iter().find(|c| c["name"] == "dlq_console_session").unwrap();
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()), (Some(true), Some("Strict")));
    assert_eq!(cookie["path"], "/console");
    assert!(browser.text(".who").await.contains(OPERATOR_NAME));
    let counts = browser.text(".counts").await.to_lowercase();
    assert!(counts.contains("pending 3"), "{counts}");
    let table = browser.text("table.letters").await;
    assert!(table.contains(&replayed) && table.contains(&discarded), "{table}");
    browser.screenshot(&screenshot_dir().join("console-list.png"), LAPTOP.0).await;
    browser.screenshot(&screenshot_dir().join("console-list-phone.png"), PHONE_WIDTH).await;

    // Open the first order's dead letter and replay it.
    browser.click(&format!("a[href='/console/dead-letters/{replay_id}']")).await;
    let facts = browser.text("dl.facts").await;
    assert!(facts.contains("injected random failure"), "its last error: {facts}");
    let traced = letters.iter().find(|l| l["id"] == replay_id.as_str()).unwrap()["trace_id"].is_string();
    assert_eq!(browser.try_find("a[href*='/trace/']").await.is_some(), traced, "a Jaeger link to its trace");
    assert!(
        browser.try_find(&format!("a[href$='/orders/{replayed}']")).await.is_some(),
        "a link to its status"
    );
    assert!(browser.text("pre.payload").await.contains("\"WIDGET-1\""));
    browser.screenshot(&screenshot_dir().join("console-detail.png"), LAPTOP.0).await;
    browser.click("a.button[href$='/replay']").await;
    browser.type_into("#reason", "worker fixed").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_for_url("says it was replayed", |url| url.ends_with("?done=replayed")).await;
    assert!(browser.text(".notice").await.contains("replayed"));
    stack.api.wait_for_status(&replayed, "reserved", SETTLE).await;
    browser.goto(&format!("{}/orders/{replayed}", stack.api.base_url)).await;
    assert!(browser.text("body").await.contains("\"reserved\""), "the order, as its status link shows it");

    // A form that reaches the server without this session's CSRF token (as one forged on another
    // site would: it cannot read the token) is refused, and changes nothing.
    browser.goto(&format!("{console}dead-letters/{discard_id}/discard")).await;
    let forge = "document.querySelector('form.card input[name=csrf]').value = 'forged'; return null";
    browser.execute(forge).await;
    browser.type_into("#reason", "forged").await;
    browser.click("form.card button[type=submit]").await;
    let refusal = wait_until("the refusal page", SETTLE, || async {
        browser.try_find("p.error[role=alert]").await?;
        Some(browser.text("p.error").await)
    })
    .await;
    assert!(refusal.contains("CSRF"), "the page names the refusal: {refusal}");
    let letters = stack.dlq.as_ref().unwrap().api().list().await;
    let still = letters.iter().find(|l| l["id"] == discard_id.as_str()).unwrap();
    assert_eq!(still["status"], "pending", "nothing was discarded");

    // Discard it for real: the browser will not send the form without a reason.
    browser.goto(&format!("{console}dead-letters/{discard_id}/discard")).await;
    browser.click("form.card button[type=submit]").await;
    assert!(browser.current_url().await.ends_with("/discard"), "a required reason: nothing was sent");
    browser.type_into("#reason", "customer cancelled").await;
    browser.click("form.card button[type=submit]").await;
    browser.wait_for_url("says it was discarded", |url| url.ends_with("?done=discarded")).await;
    let history = browser.text("ol.history").await;
    assert!(history.contains(&format!("discarded by {OPERATOR_NAME}: customer cancelled")), "{history}");
    assert_eq!(stack.api.status_of(&discarded).await.as_deref(), Some("dead_lettered"));

    // The payload that is a script is shown as text, and nothing ran.
    browser.goto(&format!("{console}dead-letters/{script_letter}")).await;
    let payload = browser.text("pre.payload").await;
    assert!(payload.contains("<script>window.pwned = true; alert('pwned')</script>"), "{payload}");
    assert_eq!(browser.alert_text().await, None, "no alert was opened");
    assert_eq!(browser.execute("return document.scripts.length").await, 0);
    assert_eq!(browser.execute("return window.pwned === undefined").await, true);

    // Signed out (no cookie), a page is the sign-in again.
    browser.delete_cookies().await;
    browser.goto(&format!("{console}dead-letters/{replay_id}")).await;
    browser.wait_for_url("is the sign-in", is_sign_in).await;
}
