//! HTTP plumbing every service shares: one error format and a JSON extractor that uses it.
//!
//! Every error any service returns is an RFC 9457 problem-details document
//! (`application/problem+json`):
//!
//! ```json
//! {"type": "/problems/validation-error", "title": "Request is not valid", "status": 422,
//!  "detail": "1 field is not valid",
//!  "errors": [{"pointer": "#/items/0/quantity", "detail": "must be between 1 and 1000"}]}
//! ```
//!
//! `errors[].pointer` is a JSON Pointer into the request body; a bad header or path parameter is
//! named by `header` or `parameter` instead. Internal errors never reach the client: they are
//! logged (with their cause chain) by [`log_server_errors`], and the client sees a generic 500.
//!
//! # Layout
//! - [`auth`]: the operator routes' bearer tokens, and the [`Operator`] a request proves it is.
//! - `input`: path and query parameters and body limits, refused as problems.
//! - `server`: the accept loop, with a header-read timeout and a connection cap.
//! - `problem`: the [`Problem`] document itself.
//! - `json`: [`JsonBody`], the request body extractor that answers with problems.
//! - `routes`: what every router has ([`service_routes`]): health, metrics, fallbacks, spans.
//! - `readiness`: `GET /readyz`, a round trip to each dependency.

pub mod auth;
mod input;
mod json;
mod problem;
mod readiness;
mod routes;
mod server;

pub use auth::{Operator, OperatorAuth};
pub use input::{PathParam, QueryParams, body_limit, too_large};
pub use json::{JsonBody, parse_json};
pub use problem::{FieldError, Problem, ProblemType};
pub use readiness::{READINESS_TIMEOUT, readiness};
pub use routes::{log_server_errors, method_not_allowed_fallback, not_found_fallback, service_routes};
pub use server::{CONNECTIONS_REFUSED, ServerLimits, serve};
