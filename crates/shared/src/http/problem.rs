//! The one error format: an RFC 9457 problem-details document (see the [module docs](super)).

use std::{sync::Arc, time::Duration};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// An RFC 9457 problem-details response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members specific to one kind of problem.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The internal error behind a 5xx, for the log, never for the client.
    #[serde(skip)]
    pub cause: Option<Arc<anyhow::Error>>,
}

/// The `type` of the problem a response carries, for middleware (metrics by refusal reason).
#[derive(Debug, Clone, Copy)]
pub struct ProblemType(pub &'static str);

/// One thing wrong with a request, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A JSON Pointer (as a URI fragment) into the request body, e.g. `#/items/0/sku`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// A request header, e.g. `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A path or query parameter, e.g. `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn pointer(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: Some(pointer.into()), header: None, parameter: None, detail: detail.into() }
    }
    pub fn header(name: &str, detail: impl Into<String>) -> Self {
        Self { pointer: None, header: Some(name.to_owned()), parameter: None, detail: detail.into() }
    }
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        Self { pointer: None, header: None, parameter: Some(name.to_owned()), detail: detail.into() }
    }
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(
        status: StatusCode,
        problem_type: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            problem_type,
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            extra: None,
            retry_after: None,
            cause: None,
        }
    }

    /// 422: the request is well-formed but breaks a rule; `errors` says which fields and why.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => "1 field is not valid".to_owned(),
            n => format!("{n} fields are not valid"),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation-error",
                "Request is not valid",
                detail,
            )
        }
    }

    /// 400: a path parameter or header that cannot be parsed.
    pub fn bad_request(error: FieldError) -> Self {
        let detail = error.detail.clone();
        Self {
            errors: vec![error],
            ..Self::new(StatusCode::BAD_REQUEST, "about:blank", "Bad Request", detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "about:blank", "Not Found", detail)
    }

    /// 503 with `Retry-After`: try again later (overload, or a dependency that is down).
    pub fn unavailable(problem_type: &'static str, detail: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, problem_type, "Service Unavailable", detail)
        }
    }

    /// 500. The cause is logged; the client learns nothing of it.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            cause: Some(Arc::new(cause.into())),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "Internal Server Error",
                "The server could not complete the request. It has been logged.",
            )
        }
    }

    /// A database error: 503 with `Retry-After` when retrying can succeed, 500 otherwise.
    /// Retrying can succeed when Postgres is unreachable or refuses work for now
    /// ([`crate::db::is_unavailable`]: down, read-only after a failover, out of disk or
    /// connections, a statement timeout), and when a lock was not granted in time (55P03) or
    /// the transaction lost to another one ([`crate::db::is_retryable_conflict`]).
    pub fn database(err: sqlx::Error) -> Self {
        let busy = crate::db::has_code(&err, &["55P03"]) || crate::db::is_retryable_conflict(&err);
        if crate::db::is_unavailable(&err) || busy {
            Self {
                cause: Some(Arc::new(err.into())),
                ..Self::unavailable(
                    "/problems/database-unavailable",
                    "The database is unavailable; retry shortly.",
                    Duration::from_secs(2),
                )
            }
        } else {
            Self::internal(err)
        }
    }

    pub fn with_extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.get_or_insert_with(Default::default).insert(key.to_owned(), value);
        self
    }
}

/// A handler's database error is [`Problem::database`]'s answer, so handlers can use `?`.
impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        Self::database(err)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response.extensions_mut().insert(ProblemType(self.problem_type));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_serialises_as_rfc_9457() {
        let json =
            serde_json::to_value(Problem::validation(vec![FieldError::pointer("#/a", "required")])).unwrap();
        assert_eq!(json["status"], 422);
        assert_eq!(json["type"], "/problems/validation-error");
        assert_eq!(json["errors"][0]["pointer"], "#/a");
        assert!(json["errors"][0].get("header").is_none());
    }
}
