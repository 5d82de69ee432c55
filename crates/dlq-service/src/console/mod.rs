//! The review console: dead letters reviewed in a browser, under `/console/`.
//!
//! The dead-letter table exists for people to review, and the JSON API is for scripts. This is
//! the page for the people: what failed and why, the order's trace, and replay or discard with a
//! reason, one at a time or for a whole filtered selection. It is server-rendered HTML
//! ([`views`]), with no JavaScript and no front-end build: a form is a form.
//!
//! | route | what |
//! |---|---|
//! | `GET /console/?status=&text=&before=` | the list, newest first, with counts per status |
//! | `GET /console/dead-letters/{id}` | one dead letter: payload, headers, history, links |
//! | `GET`, `POST /console/dead-letters/{id}/replay` | confirm, then replay |
//! | `GET`, `POST /console/dead-letters/{id}/discard` | confirm with a reason, then discard |
//! | `GET /console/bulk?action=&text=`, `POST /console/bulk` | the count, then the bulk action |
//! | `GET`, `POST /console/sign-in`, `POST /console/sign-out` | the session ([`session`]) |
//! | `GET /console/style.css` | the one stylesheet |
//!
//! # Safe by default
//! - Every page but the sign-in and the stylesheet needs a [`Reviewer`]: a signed session cookie
//!   or an operator's bearer token; a page asked for without either is a redirect to the
//!   sign-in. The reviewer recorded is the operator's name, as in the JSON API.
//! - Every POST carries the form's CSRF token ([`CsrfForm`]); a form posted from another site
//!   (`Sec-Fetch-Site: cross-site`) is refused before it is read.
//! - Every answer carries a Content-Security-Policy that allows no script at all and this
//!   origin's stylesheet only, and forbids framing ([`security_headers`]); all output is
//!   escaped by the templates.
//! - Replay and discard go through [`crate::review`], the JSON API's own path: the console
//!   cannot do anything the API would refuse, and a dead letter someone else reviewed first is
//!   a 409 page saying who.
//!
//! # Layout
//! - [`settings`]: `CONSOLE_*` variables.
//! - [`session`]: the signed cookie, bearer tokens, CSRF tokens.
//! - [`pages`]: the handlers.
//! - [`views`]: the HTML.

mod pages;
pub mod session;
pub mod settings;
pub mod views;

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::{Deserialize, de::DeserializeOwned};
use shared::http::Problem;
use uuid::Uuid;

use crate::{AppState, store::Status};
pub use session::Reviewer;
pub use settings::ConsoleSettings;

/// The console's routes, each behind [`security_headers`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(pages::list))
        .route("/console/style.css", get(stylesheet))
        .route("/console/sign-in", get(pages::sign_in_form).post(pages::sign_in))
        .route("/console/sign-out", axum::routing::post(pages::sign_out))
        .route("/console/dead-letters/{id}", get(pages::detail))
        .route("/console/dead-letters/{id}/replay", get(pages::confirm_replay).post(pages::replay))
        .route("/console/dead-letters/{id}/discard", get(pages::confirm_discard).post(pages::discard))
        .route("/console/bulk", get(pages::confirm_bulk).post(pages::bulk))
        .layer(axum::middleware::map_response(security_headers))
}

/// No script from anywhere, styles from this origin only, forms posted to this origin only,
/// never inside a frame (clickjacking a "Discard" button).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers on every console answer, error pages and redirects included.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Pages show customers' orders: no copy in a shared cache or the browser's history store.
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")],
        include_str!("style.css"),
    )
}

/// The console's links, built in one place so that every query string is encoded.
#[derive(Debug, Clone)]
pub struct Links {
    jaeger_url: String,
    order_api_url: String,
}

impl Links {
    pub fn new(settings: &ConsoleSettings) -> Self {
        Self { jaeger_url: settings.jaeger_url.clone(), order_api_url: settings.order_api_url.clone() }
    }

    pub fn detail(id: Uuid) -> String {
        format!("/console/dead-letters/{id}")
    }

    /// The list, filtered; `before` pages back from that ID.
    pub fn list_page(status: Option<Status>, text: Option<&str>, before: Option<Uuid>) -> String {
        let status = status.map(|s| s.to_string());
        let before = before.map(|b| b.to_string());
        let pairs: Vec<(&str, &str)> = [
            ("status", status.as_deref()),
            ("text", text.filter(|t| !t.is_empty())),
            ("before", before.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect();
        let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
        if query.is_empty() { "/console/".to_owned() } else { format!("/console/?{query}") }
    }

    pub fn list(status: Option<Status>, text: Option<&str>) -> String {
        Self::list_page(status, text, None)
    }

    /// The order's status in order-api.
    pub fn order(&self, order: Uuid) -> String {
        format!("{}/orders/{order}", self.order_api_url)
    }

    /// The trace in Jaeger, when `trace_id` is one (32 hex digits; it came from a message header,
    /// so it is checked before it goes into a link).
    pub fn trace(&self, trace_id: &str) -> Option<String> {
        let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| format!("{}/trace/{trace_id}", self.jaeger_url))
    }
}

/// Why a console request failed, shown as an HTML page with its status code.
#[derive(Debug)]
pub enum ConsoleError {
    /// 400: a parameter the console cannot use, named.
    BadInput { field: &'static str, rule: String },
    /// 401: a bearer token that is not an operator's.
    Unauthorized,
    /// 403: a POST without this session's CSRF token, or from another site.
    Forbidden(&'static str),
    /// 404.
    NotFound(Uuid),
    /// 5xx: answered as [`Problem::database`] (503 and `Retry-After` when retrying can help),
    /// its cause logged, never shown.
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err)
    }
}

impl ConsoleError {
    pub fn bad_input(field: &'static str, rule: impl Into<String>) -> Self {
        Self::BadInput { field, rule: rule.into() }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            Self::BadInput { field, rule } => {
                (StatusCode::BAD_REQUEST, "Bad request", format!("The parameter {field} {rule}."))
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "That bearer token is not an operator token.".to_owned(),
            ),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, "Refused", why.to_owned()),
            Self::NotFound(id) => {
                (StatusCode::NOT_FOUND, "Not found", format!("There is no dead letter {id}."))
            }
            Self::Database(err) => return Problem::database(err).into_response(),
        };
        (status, views::error(title, &detail)).into_response()
    }
}

/// The dead letter's ID from the path.
pub fn parse_id(id: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(id).map_err(|_| ConsoleError::bad_input("id", "must be a dead letter's ID (a UUID)"))
}

/// A query string read as `T`; anything unreadable is a 400 page naming the problem.
pub fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ConsoleError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|err| ConsoleError::bad_input("query", err.to_string()))
}

/// `?status=` as a filter: empty is "any".
pub fn parse_status(status: Option<&str>) -> Result<Option<Status>, ConsoleError> {
    status
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .transpose()
        .map_err(|rule: String| ConsoleError::bad_input("status", rule))
}

impl FromRequestParts<AppState> for Reviewer {
    type Rejection = Response;

    /// The signed-in operator; a page asked for by nobody goes to the sign-in (and comes back).
    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let key = &app.console.session_key;
        match session::reviewer(&parts.headers, &app.operator_auth, key) {
            Ok(reviewer) => Ok(reviewer),
            Err(session::NotSignedIn::Anonymous) if parts.method == Method::GET => {
                let next = parts.uri.path_and_query().map_or("/console/", |p| p.as_str());
                let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
                Err(Redirect::to(&format!("/console/sign-in?{query}")).into_response())
            }
            Err(session::NotSignedIn::Anonymous) => {
                Err(ConsoleError::Forbidden("Sign in first: this form needs a session.").into_response())
            }
            Err(session::NotSignedIn::Refused(refusal)) => {
                tracing::info!(reason = refusal.as_str(), "console request refused");
                Err(ConsoleError::Unauthorized.into_response())
            }
        }
    }
}

/// A POSTed form of a signed-in reviewer, accepted only with their CSRF token.
#[derive(Debug)]
pub struct CsrfForm<T> {
    pub reviewer: Reviewer,
    pub form: T,
}

#[derive(Debug, Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

impl<T: DeserializeOwned> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        refuse_cross_site(&parts).map_err(IntoResponse::into_response)?;
        let reviewer = Reviewer::from_request_parts(&mut parts, app).await?;
        let bytes =
            Bytes::from_request(Request::from_parts(parts, body), app).await.map_err(|rejection| {
                (rejection.status(), views::error("Bad request", "The form could not be read."))
                    .into_response()
            })?;
        let CsrfField { csrf } = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField { csrf: None });
        if !reviewer.check_csrf(csrf.as_deref()) {
            tracing::info!(operator = %reviewer.operator.name, "console form refused: missing or wrong CSRF token");
            return Err(ConsoleError::Forbidden(
                "This form did not carry this session's CSRF token (it may come from another site, or from \
                 before you signed in again): reload the page and try again.",
            )
            .into_response());
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|err| ConsoleError::bad_input("form", err.to_string()).into_response())?;
        Ok(Self { reviewer, form })
    }
}

/// Refuses a POST that the browser says another site started (`Sec-Fetch-Site`), before its
/// body is read: defence in depth beside SameSite cookies and CSRF tokens.
pub fn refuse_cross_site(parts: &Parts) -> Result<(), ConsoleError> {
    let site = parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match site {
        Some("cross-site" | "same-site") => {
            Err(ConsoleError::Forbidden("Forms from other sites are refused."))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_links_encode_the_filter() {
        assert_eq!(Links::list(None, None), "/console/");
        assert_eq!(
            Links::list(Some(Status::Pending), Some("a&b=<c>")),
            "/console/?status=pending&text=a%26b%3D%3Cc%3E"
        );
    }

    #[test]
    fn a_trace_link_is_made_only_from_a_trace_id() {
        let links = Links { jaeger_url: "http://j".into(), order_api_url: "http://o".into() };
        let id = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(links.trace(id).as_deref(), Some("http://j/trace/0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(links.trace("\"><script>alert(1)</script>0000000"), None);
        assert_eq!(links.trace("abc"), None);
    }
}
