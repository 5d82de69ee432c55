//! The HTTP server's limits against real sockets: a client that stalls halfway through its
//! request is cut off, and connections past the cap are closed without disturbing the others.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::time::Duration;

use axum::{Router, routing::get};
use shared::http::{ServerLimits, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

async fn start(limits: ServerLimits) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "ok" }));
    tokio::spawn(serve(listener, router, limits, stop.clone()));
    (address, stop)
}

/// Reads until the server closes the connection (or answers); `None` if it does neither in time.
async fn closed_or_answered(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

async fn get_root(address: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
    closed_or_answered(&mut stream, Duration::from_secs(3)).await.expect("an answer")
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_its_request_line_is_cut_off() {
    let limits = ServerLimits { header_read_timeout: Duration::from_millis(300), max_connections: 8 };
    let (address, _stop) = start(limits).await;
    let mut stalled = TcpStream::connect(&address).await.unwrap();
    stalled.write_all(b"GET /orders/123 HT").await.unwrap();

    let ended = closed_or_answered(&mut stalled, Duration::from_secs(5)).await;
    assert!(ended.is_some(), "the server closed the stalled connection");
    assert!(get_root(&address).await.ends_with("ok"), "and serves others as before");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_the_open_ones_keep_working() {
    let limits = ServerLimits { header_read_timeout: Duration::from_secs(30), max_connections: 2 };
    let (address, _stop) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(&address).await.unwrap();
        held.push(stream);
    }
    // A request on each proves both are accepted and served.
    for stream in &mut held {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut buffer = [0; 256];
        let read =
            tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    }

    let mut third = TcpStream::connect(&address).await.unwrap();
    third.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await.ok();
    let answer = closed_or_answered(&mut third, Duration::from_secs(3)).await;
    assert_eq!(answer.as_deref(), Some(""), "closed on arrival, unanswered");

    drop(held);
    // Once they are gone, there is room again.
    test_support::wait_until("a connection is served again", Duration::from_secs(5), || async {
        let mut stream = TcpStream::connect(&address).await.ok()?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.ok()?;
        let answer = closed_or_answered(&mut stream, Duration::from_secs(1)).await?;
        answer.ends_with("ok").then_some(())
    })
    .await;
}
