//! What a client sends, refused in the application's own format: path and query parameters, and
//! bodies over their limit.
//!
//! axum's own extractors answer a malformed parameter (`GET /orders/%FF`, a repeated query
//! parameter) with a plain-text body. [`PathParam`] and [`QueryParams`] wrap them and answer
//! with a [`Problem`] that names the parameter. [`body_limit`] refuses a body whose declared
//! `Content-Length` is over the limit at once, rather than waiting for bytes that may never come.

use std::time::Duration;

use axum::{
    Router,
    extract::{
        DefaultBodyLimit, FromRequestParts, Path, Query, Request,
        rejection::{PathRejection, QueryRejection},
    },
    http::{StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::{FieldError, Problem};

/// A path parameter (`Path<T>`), or a 400 problem naming it.
#[derive(Debug, Clone)]
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    use axum::extract::path::ErrorKind;
    let (name, detail) = match rejection {
        PathRejection::FailedToDeserializePathParams(err) => match err.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => (key.clone(), "is not valid UTF-8".to_owned()),
            ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
                (key.clone(), format!("cannot be read as {expected_type}"))
            }
            _ => ("path".to_owned(), err.body_text()),
        },
        other => ("path".to_owned(), other.body_text()),
    };
    Problem::bad_request(FieldError::parameter(&name, detail))
}

/// Query parameters (`Query<T>`), or a 400 problem saying what is wrong with them.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => {
                // serde_urlencoded names the field in its message ("duplicate field `status`").
                let detail =
                    std::error::Error::source(&err).map_or_else(|| err.body_text(), |e| e.to_string());
                Err(Problem::bad_request(FieldError::parameter("query", detail)))
            }
            Err(other) => Err(Problem::bad_request(FieldError::parameter("query", other.body_text()))),
        }
    }
}

/// Bodies up to this size, declared too large, are still read before the 413 is sent: a
/// simple client writes its whole body before it reads, and a server that answers and closes
/// with unread bytes makes the kernel reset the connection, losing the answer.
const DRAINED_AT_MOST: u64 = 4 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Limits `router`'s request bodies to `max` bytes: a declared `Content-Length` over it is
/// answered 413 at once (no waiting for a body that may never come); a body with no declared
/// length is cut off at `max` by axum's own limit, answered 413 by the JSON extractor.
pub fn body_limit<S: Clone + Send + Sync + 'static>(router: Router<S>, max: usize) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(max))
        .layer(middleware::from_fn(move |request, next| refuse_declared_oversize(max as u64, request, next)))
}

async fn refuse_declared_oversize(max: u64, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(length) = declared.filter(|length| *length > max) else {
        return next.run(request).await;
    };
    let mut refusal = too_large(max).into_response();
    if length <= DRAINED_AT_MOST {
        let drained = axum::body::to_bytes(request.into_body(), DRAINED_AT_MOST as usize);
        if tokio::time::timeout(DRAIN_TIME, drained).await.is_ok() {
            return refusal;
        }
    }
    // Too much to read (or it does not come): answer, and close the connection.
    refusal.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    refusal
}

/// 413 Content Too Large, with the limit.
pub fn too_large(max: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "about:blank",
        "Content Too Large",
        format!("The request body is larger than this endpoint accepts ({max} bytes at most)."),
    )
}
