//! `GET /readyz`: ready means every dependency answered a round trip just now.

use std::time::Duration;

use bytes::Bytes;

use super::Problem;

/// How long each readiness check may take. A probe must answer quickly, and a dependency that
/// cannot answer within this is not ready, whatever its connection state says.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz` for every service: 200 when Postgres and NATS both answer a round trip within
/// [`READINESS_TIMEOUT`], else 503 with the state of each.
///
/// **Why a round trip:** a frozen broker (`kill -STOP`, a stalled VM, a half-open TCP
/// connection) keeps the client "connected" while nothing gets through; only an answer proves
/// the path works. For NATS the probe is a JetStream API request (`$JS.API.INFO`), so a server
/// that is up without JetStream is not ready either. Both checks run at once, so a probe takes
/// at most one timeout.
pub async fn readiness(
    pool: &sqlx::PgPool,
    nats: &async_nats::Client,
) -> Result<axum::Json<serde_json::Value>, Problem> {
    let (postgres, nats) = tokio::join!(crate::db::ping(pool), nats_answers(nats));
    let checks = serde_json::json!({
        "postgres": if postgres { "ok" } else { "unreachable" },
        "nats": if nats { "ok" } else { "unreachable" },
    });
    if postgres && nats {
        Ok(axum::Json(serde_json::json!({"status": "ready", "checks": checks})))
    } else {
        Err(Problem::unavailable(
            "/problems/not-ready",
            "A dependency is unreachable.",
            Duration::from_secs(1),
        )
        .with_extra("checks", checks))
    }
}

/// Whether JetStream answers a request within [`READINESS_TIMEOUT`].
async fn nats_answers(client: &async_nats::Client) -> bool {
    let request = client.request("$JS.API.INFO", Bytes::new());
    matches!(tokio::time::timeout(READINESS_TIMEOUT, request).await, Ok(Ok(_)))
}
