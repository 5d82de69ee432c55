//! One order, one trace: spans exported by the real binaries over OTLP to a receiver in the
//! test, and the trace of each order checked from the HTTP request to its outcome.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use serde_json::Value;
use test_support::{
    http::order_body,
    otlp::{CLIENT, CONSUMER, OtlpReceiver, PRODUCER, ReceivedSpan, SERVER, STATUS_ERROR},
    stack::Stack,
    wait_until,
};

const SETTLE: Duration = Duration::from_secs(60);

/// Finds the one span matching `test`, or fails with the trace's span names.
fn one<'a>(trace: &'a [ReceivedSpan], what: &str, test: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<_> = trace.iter().filter(|s| test(s)).collect();
    assert_eq!(found.len(), 1, "{what}: found {} in {:#?}", found.len(), names(trace));
    found[0]
}

fn names(trace: &[ReceivedSpan]) -> Vec<String> {
    trace.iter().map(|s| format!("{} / {} ({})", s.service, s.name, s.span_id)).collect()
}

fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(child.parent_span_id, parent.span_id, "{} should be a child of {}", child.name, parent.name);
}

/// The messaging attributes every publish and process span carries.
fn assert_messaging(span: &ReceivedSpan, operation: &str, destination: &str) {
    assert_eq!(span.attribute("messaging.system"), Some("nats"), "{}", span.name);
    assert_eq!(span.attribute("messaging.operation.type"), Some(operation), "{}", span.name);
    assert_eq!(span.attribute("messaging.destination.name"), Some(destination), "{}", span.name);
    assert!(span.attribute("messaging.message.id").is_some_and(|id| !id.is_empty()), "{}", span.name);
}

async fn place(stack: &Stack, sku: &str, traceparent: Option<&str>) -> (String, String) {
    let mut request =
        stack.api.http().post(format!("{}/orders", stack.api.base_url)).json(&order_body("c-1", &[(sku, 1)]));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let body: Value = request.send().await.unwrap().json().await.unwrap();
    (body["order_id"].as_str().unwrap().to_owned(), body["trace_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn each_order_is_one_trace_from_the_http_request_to_its_outcome() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let stack = Stack::start_with_dlq(
        2,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    // A caller's trace continues into order-api.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (ok, ok_trace) =
        place(&stack, "WIDGET-1", Some(&format!("00-{caller_trace}-00f067aa0ba902b7-01"))).await;
    assert_eq!(ok_trace, caller_trace);
    let (flaky, flaky_trace) = place(&stack, "FLAKY-1", None).await;
    let (failing, failing_trace) = place(&stack, "FAIL-1", None).await;
    assert!(ok_trace != flaky_trace && flaky_trace != failing_trace);

    stack.api.wait_for_status(&ok, "reserved", SETTLE).await;
    stack.api.wait_for_status(&flaky, "reserved", SETTLE).await;
    stack.api.wait_for_status(&failing, "dead_lettered", SETTLE).await;
    let (_, shown) = stack.api.get(&ok).await;
    assert_eq!(shown["trace_id"], caller_trace, "GET /orders/{{id}} shows the order's trace");

    // The whole journey of an order, exported by several services, in one trace: waits until
    // every span named has arrived (each service exports on its own schedule).
    let journey = |trace_id: String, attempts: usize, ending: &'static [&'static str]| {
        let receiver = &receiver;
        async move {
            wait_until(
                &format!("trace {trace_id} has {attempts} attempts and {ending:?}"),
                SETTLE,
                || async {
                    let trace = receiver.trace(&trace_id);
                    let tried = trace.iter().filter(|s| s.name == "process orders.new").count() == attempts;
                    (tried && ending.iter().all(|name| trace.iter().any(|s| s.name == *name)))
                        .then_some(trace)
                },
            )
            .await
        }
    };
    const RESERVED: &[&str] =
        &["POST /orders", "publish order_events.reserved", "process order_events.reserved", "UPDATE orders"];

    // --- The ordinary order: HTTP → publish → process → outcome publish → status update.
    let trace = journey(ok_trace.clone(), 1, RESERVED).await;
    let http = one(&trace, "the HTTP server span", |s| s.kind == SERVER && s.name == "POST /orders");
    assert_eq!(http.service, "order-api");
    assert_eq!(http.parent_span_id, "00f067aa0ba902b7", "the caller's span is the parent");
    assert_eq!(http.attribute("http.response.status_code"), Some("202"));
    let publish = one(&trace, "the publish of orders.new", |s| s.name == "publish orders.new");
    assert_eq!((publish.kind, publish.service.as_str()), (PRODUCER, "order-api"));
    assert_child(publish, http);
    assert_messaging(publish, "send", "orders.new");
    let process = one(&trace, "the processing of orders.new", |s| s.name == "process orders.new");
    assert_eq!((process.kind, process.service.as_str()), (CONSUMER, "inventory-worker"));
    assert_child(process, publish);
    assert_messaging(process, "process", "orders.new");
    assert_eq!(process.attribute("messaging.consumer.group.name"), Some("inventory-worker"));
    assert_eq!(process.attribute("messaging.nats.delivery_attempt"), Some("1"));
    assert_eq!(process.attribute("messaging.message.id"), publish.attribute("messaging.message.id"));
    let outcome = one(&trace, "the publish of the outcome", |s| s.name == "publish order_events.reserved");
    assert_eq!((outcome.kind, outcome.service.as_str()), (PRODUCER, "inventory-worker"));
    assert_child(outcome, process);
    let projection = one(&trace, "the projection", |s| s.name == "process order_events.reserved");
    assert_eq!((projection.kind, projection.service.as_str()), (CONSUMER, "order-api"));
    assert_child(projection, outcome);
    assert_eq!(projection.attribute("messaging.consumer.group.name"), Some("order-api-projection"));
    let update = one(&trace, "the status update", |s| s.name == "UPDATE orders");
    assert_eq!(update.kind, CLIENT);
    assert_child(update, projection);
    assert_eq!(update.attribute("db.system.name"), Some("postgresql"));
    let insert = one(&trace, "the order's transaction", |s| s.name == "place order");
    assert_eq!(insert.attribute("db.system.name"), Some("postgresql"));
    assert_child(insert, http);

    // The worker's batch transaction is a span of its own batch, linked to each message.
    let (batch, transaction) = wait_until("the batch and its transaction are exported", SETTLE, || async {
        let spans = receiver.spans();
        let batch = spans.iter().find(|s| {
            s.name == "process batch" && s.links.iter().any(|l| l.0 == ok_trace && l.1 == publish.span_id)
        })?;
        let transaction =
            spans.iter().find(|s| s.name == "transaction" && s.parent_span_id == batch.span_id)?;
        Some((batch.clone(), transaction.clone()))
    })
    .await;
    assert_eq!(batch.service, "inventory-worker");
    assert_eq!(transaction.attribute("db.system.name"), Some("postgresql"));

    // --- The flaky order: a failed attempt, then a successful one, both in the trace.
    let trace = journey(flaky_trace, 2, RESERVED).await;
    let attempts: Vec<_> = trace.iter().filter(|s| s.name == "process orders.new").collect();
    assert_eq!(attempts.len(), 2, "{:#?}", names(&trace));
    let failed =
        attempts.iter().find(|s| s.attribute("messaging.nats.delivery_attempt") == Some("1")).unwrap();
    let succeeded =
        attempts.iter().find(|s| s.attribute("messaging.nats.delivery_attempt") == Some("2")).unwrap();
    assert_eq!(failed.status_code, STATUS_ERROR);
    assert_eq!(failed.attribute("error.type"), Some("attempt_failed"));
    assert_ne!(succeeded.status_code, STATUS_ERROR);
    assert_eq!(failed.parent_span_id, succeeded.parent_span_id, "both attempts under the one publish");

    // --- The failing order: every attempt failed, then the dead-letter capture, in the trace.
    let trace = journey(
        failing_trace.clone(),
        5,
        &[
            "capture dead letter",
            "publish order_events.dead_lettered",
            "process order_events.dead_lettered",
            "UPDATE orders",
        ],
    )
    .await;
    let attempts: Vec<_> = trace.iter().filter(|s| s.name == "process orders.new").collect();
    assert_eq!(attempts.len(), 5);
    assert!(attempts.iter().all(|s| s.status_code == STATUS_ERROR));
    let publish = one(&trace, "the publish of orders.new", |s| s.name == "publish orders.new");
    let capture = one(&trace, "the dead-letter capture", |s| s.name == "capture dead letter");
    assert_eq!((capture.kind, capture.service.as_str()), (CONSUMER, "dlq-service"));
    assert_child(capture, publish);
    let announced =
        one(&trace, "the dead-lettered event", |s| s.name == "publish order_events.dead_lettered");
    assert_child(announced, capture);
    let letters = stack.dlq.as_ref().unwrap().api().list().await;
    assert_eq!(letters[0]["trace_id"], failing_trace.as_str(), "the dead letter keeps its trace");

    // --- A replay: a span of the reviewer's request, linked to the order's trace; the replayed
    // message is processed in the order's own trace again.
    let dead_letter = letters[0]["id"].as_str().unwrap();
    let (status, _) = stack.dlq.as_ref().unwrap().api().review(dead_letter, "replay", None).await;
    assert!(status.is_success());
    let replay = wait_until("the replay span is exported", SETTLE, || async {
        receiver.spans().into_iter().find(|s| s.name == "replay dead letter")
    })
    .await;
    assert_eq!(replay.service, "dlq-service");
    assert_ne!(replay.trace_id, failing_trace, "the reviewer's own trace");
    assert!(replay.links.contains(&(failing_trace.clone(), publish.span_id.clone())), "{:?}", replay.links);
    let again = wait_until("the replayed message is processed in the order's trace", SETTLE, || async {
        let trace = receiver.trace(&failing_trace);
        let republished =
            trace.iter().find(|s| s.name == "publish orders.new" && s.service == "dlq-service")?.clone();
        trace
            .iter()
            .any(|s| s.name == "process orders.new" && s.parent_span_id == republished.span_id)
            .then_some(republished)
    })
    .await;
    assert_child(&again, publish);

    // Probes and scrapes (every start-up above waited on /readyz) leave no traces behind: they
    // would bury the orders' traces in Jaeger under thousands of one-span ones.
    test_support::metrics::scrape(&stack.api.base_url).await;
    stack.api.http().get(format!("{}/healthz", stack.api.base_url)).send().await.unwrap();
    // order-api exports spans in the order they end: once a later request's span is in, the
    // probes' spans would be too.
    let (_, later) = place(&stack, "WIDGET-1", None).await;
    wait_until("a later request's span is exported", SETTLE, || async {
        receiver.trace(&later).into_iter().find(|s| s.name == "POST /orders")
    })
    .await;
    let probes: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| ["GET /readyz", "GET /healthz", "GET /metrics"].contains(&s.name.as_str()))
        .map(|s| format!("{} from {}", s.name, s.service))
        .collect();
    assert!(probes.is_empty(), "{probes:?}");
}

#[tokio::test]
async fn spans_still_buffered_are_exported_when_a_service_stops_gracefully() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    // A minute between exports: only the flush on shutdown can deliver the span in time.
    let mut stack = Stack::start(
        0,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    )
    .await;
    let (_, trace_id) = place(&stack, "WIDGET-1", None).await;
    assert!(receiver.trace(&trace_id).is_empty(), "nothing exported yet");

    assert!(stack.order_api.terminate().await.success());

    let trace = receiver.trace(&trace_id);
    one(&trace, "the HTTP span, flushed on SIGTERM", |s| s.name == "POST /orders");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_nothing_complains_and_logs_carry_the_trace_id() {
    let mut stack = Stack::start(1, &[]).await;
    let (id, trace_id) = place(&stack, "FLAKY-1", None).await;
    stack.api.wait_for_status(&id, "reserved", SETTLE).await;
    assert_eq!(trace_id.len(), 32, "trace IDs exist without an exporter");

    let worker = &mut stack.workers[0].process;
    assert!(worker.terminate().await.success());
    let log = worker.log_text();
    let retry = log.lines().find(|l| l.contains("attempt failed")).expect("the failed attempt is logged");
    assert!(retry.contains(&format!("trace_id={trace_id}")), "{retry}");
    assert!(retry.contains(" span_id="), "{retry}");
    for line in log.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            !matches!(level, "ERROR" | "WARN") && !line.to_lowercase().contains("otlp"),
            "unexpected: {line}"
        );
    }
}

/// The `baggage` header of the `orders.new` message of an order placed with `baggage`.
async fn baggage_carried(stack: &Stack, baggage: &str) -> Option<String> {
    let response = stack
        .api
        .http()
        .post(format!("{}/orders", stack.api.base_url))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("baggage", baggage)
        .json(&order_body("c-1", &[("WIDGET-1", 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap();
    let stream = stack.nats.jetstream().await.get_stream("orders_stream").await.unwrap();
    // No worker runs: the message stays in the stream.
    let message = wait_until(&format!("order {order_id} is in orders_stream"), SETTLE, || async {
        let last = stream.direct_get_last_for_subject("orders.new").await.ok()?;
        String::from_utf8_lossy(&last.payload).contains(order_id).then_some(last)
    })
    .await;
    message.headers.get("baggage").map(|value| value.as_str().to_owned())
}

#[tokio::test]
async fn a_clients_baggage_is_carried_only_when_configured_and_then_within_w3c_limits() {
    let stack = Stack::start(0, &[]).await;
    assert_eq!(baggage_carried(&stack, "plan=gold").await, None, "client baggage was taken by default");

    let stack = Stack::start(0, &[("ACCEPT_CLIENT_BAGGAGE", "true")]).await;
    assert_eq!(baggage_carried(&stack, "plan=gold").await.as_deref(), Some("plan=gold"));
    let huge: Vec<String> = (0..10).map(|n| format!("k{n}={}", "v".repeat(2_000))).collect();
    assert_eq!(baggage_carried(&stack, &huge.join(",")).await, None, "a header over 8,192 bytes is dropped");
    let many: Vec<String> = (0..100).map(|n| format!("k{n}=v")).collect();
    let carried = baggage_carried(&stack, &many.join(",")).await.unwrap();
    assert_eq!(carried.split(',').count(), 64, "{carried}");
}
