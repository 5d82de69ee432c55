//! The operator API's authentication: named bearer tokens, compared in constant time.
//!
//! Some routes are for the people who run the system, not for customers: setting a SKU's stock,
//! and reading, replaying or discarding dead letters (whose payloads are customers' orders).
//! Anyone who can reach the port must not be able to call them, and the audit trail must say
//! *who* replayed or discarded a message, a name the client cannot choose. So each operator has
//! a token of their own, and a request that proves it holds one is an [`Operator`] with that
//! token's name; the handlers record that name, never one the request body claims.
//!
//! # Settings
//! - `OPERATOR_TOKENS=alice:<token>,bob:<token>`, or
//! - `OPERATOR_TOKENS_FILE=/path`: one `name:token` per line; blank lines and `#` comments are
//!   skipped (a file keeps tokens out of the process list and of `docker inspect`);
//! - `OPERATOR_AUTH=disabled`: no authentication at all, said explicitly (a warning is logged at
//!   start-up). With none of these, a service that serves operator routes refuses to start
//!   ([`OperatorAuth::ensure_configured`]): a safe default, not an open one.
//!
//! Names are what the audit trail records: 1 to 64 letters, digits, `.`, `_`, `-` or `@`, never
//! a `:` (so no token's name can pass for the command line's `cli:<name>`). Tokens are at least
//! [`MIN_TOKEN_LEN`] visible ASCII characters; a name or a token given twice is refused. The
//! errors name the variable (and the entry or line) but never show a token.
//!
//! # On a request
//! [`OperatorAuth::protect`] (a router) and [`OperatorAuth::protect_route`] (one method router)
//! put [`require_operator`] in front of the handlers: it reads `Authorization: Bearer <token>`,
//! compares it with every configured token, and either puts the [`Operator`] in the request's
//! extensions (the handler takes it as an extractor) or answers `401` with a problem document
//! and `WWW-Authenticate: Bearer` (with `error="invalid_token"` when a token was sent but is
//! not one of them). It runs after routing, so an unknown path is still a plain 404.
//!
//! **Why constant time:** `==` on two strings stops at the first differing byte, so how long a
//! refusal takes tells an attacker how much of a guess was right; [`subtle`] compares every
//! byte, and every configured token is compared, whichever matches. (Only a token's length can
//! show; tokens are long and random, so that says nothing useful.)

use std::{fmt, sync::Arc};

use axum::{
    Router,
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::MethodRouter,
};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::Problem;
use crate::config::{ConfigError, Env};

/// `OPERATOR_TOKENS`: `name:token` pairs, comma-separated.
pub const OPERATOR_TOKENS: &str = "OPERATOR_TOKENS";
/// `OPERATOR_TOKENS_FILE`: a file of `name:token` lines.
pub const OPERATOR_TOKENS_FILE: &str = "OPERATOR_TOKENS_FILE";
/// `OPERATOR_AUTH`: `disabled` turns authentication off; `required` (the default) keeps it on.
pub const OPERATOR_AUTH: &str = "OPERATOR_AUTH";

/// The shortest token accepted: 16 random characters are beyond guessing over HTTP.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest operator name (it is recorded with every review).
pub const MAX_NAME_LEN: usize = 64;
/// The name recorded for a request when authentication is disabled.
pub const ANONYMOUS: &str = "anonymous";

/// The operator a request was authenticated as: the name of the token it sent.
///
/// An extractor for handlers behind [`OperatorAuth::protect`]; on a route without it, the
/// request is refused with a 500 (a wiring mistake, logged), never served as nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Operator>().cloned().ok_or_else(|| {
            Problem::internal(anyhow::anyhow!(
                "an Operator was asked for on a route that OperatorAuth does not protect"
            ))
        })
    }
}

/// One configured token. Its `Debug` shows the name only.
struct NamedToken {
    name: String,
    token: Box<[u8]>,
}

#[derive(Clone)]
enum Mode {
    Tokens(Arc<[NamedToken]>),
    Disabled,
    /// Nothing set: refused at start-up by [`OperatorAuth::ensure_configured`], and every
    /// request refused should a router be built anyway (closed, not open).
    Unset,
}

/// Who may call the operator routes: the configured tokens, or nobody checked at all.
#[derive(Clone)]
pub struct OperatorAuth {
    mode: Mode,
}

impl fmt::Debug for OperatorAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Tokens(tokens) => {
                f.debug_struct("OperatorAuth").field("operators", &names(tokens)).finish_non_exhaustive()
            }
            Mode::Disabled => f.write_str("OperatorAuth::Disabled"),
            Mode::Unset => f.write_str("OperatorAuth::Unset"),
        }
    }
}

fn names(tokens: &[NamedToken]) -> Vec<&str> {
    tokens.iter().map(|t| t.name.as_str()).collect()
}

impl OperatorAuth {
    /// Reads `OPERATOR_TOKENS`, `OPERATOR_TOKENS_FILE` and `OPERATOR_AUTH` (reading the file now,
    /// so a bad one stops the service at start-up). Having none of them is not an error here:
    /// a tool that serves no operator route (the dead-letter CLI) needs none.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let auth = env.raw(OPERATOR_AUTH);
        let listed = env.raw(OPERATOR_TOKENS);
        let file = env.raw(OPERATOR_TOKENS_FILE);
        let disabled = match auth.as_deref().map(str::trim) {
            None | Some("required") => false,
            Some("disabled") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    OPERATOR_AUTH,
                    other,
                    "expected \"disabled\" (or \"required\", the default)",
                ));
            }
        };
        if let (Some(_), Some(path)) = (&listed, &file) {
            return Err(ConfigError::new(
                OPERATOR_TOKENS_FILE,
                path,
                "OPERATOR_TOKENS is set too: set one of them, not both",
            ));
        }
        if disabled {
            if let Some(set) = [(OPERATOR_TOKENS, &listed), (OPERATOR_TOKENS_FILE, &file)]
                .into_iter()
                .find_map(|(name, value)| value.as_ref().map(|_| name))
            {
                return Err(ConfigError::new(
                    OPERATOR_AUTH,
                    "disabled",
                    format!("{set} is set too: unset one of them (authentication is either off or on)"),
                ));
            }
            return Ok(Self { mode: Mode::Disabled });
        }
        let tokens = match (listed, file) {
            (Some(list), None) => parse_list(&list)?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|err| {
                    ConfigError::new(OPERATOR_TOKENS_FILE, &path, format!("cannot read it: {err}"))
                })?;
                parse_file(&text).map_err(|problem| ConfigError::new(OPERATOR_TOKENS_FILE, &path, problem))?
            }
            _ => return Ok(Self { mode: Mode::Unset }),
        };
        Ok(Self { mode: Mode::Tokens(tokens.into()) })
    }

    /// Authentication switched off (`OPERATOR_AUTH=disabled`).
    pub fn disabled() -> Self {
        Self { mode: Mode::Disabled }
    }

    /// Fails, naming `OPERATOR_TOKENS` and saying how to set it, when no token is configured and
    /// authentication was not disabled explicitly. Every service that serves operator routes
    /// calls it before it connects to anything.
    pub fn ensure_configured(&self) -> Result<(), ConfigError> {
        match self.mode {
            Mode::Unset => Err(ConfigError::new(
                OPERATOR_TOKENS,
                "",
                "no operator tokens are configured, and this service serves operator routes: set \
                 OPERATOR_TOKENS=name:token[,name:token…] (or OPERATOR_TOKENS_FILE=/path with one \
                 name:token per line; make a token with `openssl rand -hex 32`), or set \
                 OPERATOR_AUTH=disabled to serve them without authentication",
            )),
            _ => Ok(()),
        }
    }

    /// Whether authentication was switched off.
    pub fn is_disabled(&self) -> bool {
        matches!(self.mode, Mode::Disabled)
    }

    /// The operators' names (never their tokens).
    pub fn operators(&self) -> Vec<&str> {
        match &self.mode {
            Mode::Tokens(tokens) => names(tokens),
            _ => Vec::new(),
        }
    }

    /// Says at start-up how the operator routes are protected: the names at info, a warning
    /// when they are not protected at all.
    pub fn log_at_start_up(&self, routes: &str) {
        match &self.mode {
            Mode::Tokens(tokens) => {
                tracing::info!(
                    operators = names(tokens).join(","),
                    routes,
                    "operator routes require a bearer token"
                )
            }
            Mode::Disabled => tracing::warn!(
                routes,
                "OPERATOR_AUTH=disabled: the operator routes are open to anyone who can reach this port"
            ),
            Mode::Unset => tracing::warn!(routes, "no operator tokens: every operator request is refused"),
        }
    }

    /// Requires an operator token on every route of `router` (added before this call).
    pub fn protect<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.route_layer(axum::middleware::from_fn_with_state(self.clone(), require_operator))
    }

    /// Requires an operator token on the methods of one route, e.g. `put(set_stock)`, leaving the
    /// path's other methods (added separately) open.
    pub fn protect_route<S: Clone + Send + Sync + 'static>(&self, route: MethodRouter<S>) -> MethodRouter<S> {
        route.route_layer(axum::middleware::from_fn_with_state(self.clone(), require_operator))
    }

    /// Who the request's headers authenticate, or why they do not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Operator, Refusal> {
        let tokens = match &self.mode {
            Mode::Disabled => return Ok(Operator { name: ANONYMOUS.to_owned() }),
            Mode::Unset => return Err(Refusal::NotConfigured),
            Mode::Tokens(tokens) => tokens,
        };
        let presented = bearer_token(headers)?;
        // Every token is compared, and the match is selected without a branch on it: the time
        // taken does not depend on which token matched, or on how much of one did.
        let mut found: u32 = 0; // index + 1; 0 is none
        for (index, named) in tokens.iter().enumerate() {
            let equal = named.token.ct_eq(presented);
            found.conditional_assign(&(index as u32 + 1), equal);
        }
        match found.checked_sub(1).and_then(|index| tokens.get(index as usize)) {
            Some(named) => Ok(Operator { name: named.name.clone() }),
            None => Err(Refusal::WrongToken),
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not one `Bearer <token>`.
    Malformed,
    /// A bearer token that is none of the operators'.
    WrongToken,
    /// No tokens configured (and authentication not disabled).
    NotConfigured,
}

impl Refusal {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::WrongToken => "wrong-token",
            Self::NotConfigured => "not-configured",
        }
    }
}

impl IntoResponse for Refusal {
    /// 401 with `WWW-Authenticate: Bearer` (RFC 6750), and a problem document saying what to send.
    fn into_response(self) -> Response {
        let (detail, challenge) = match self {
            Self::Missing => (
                "This route is for operators: send Authorization: Bearer <operator token>.",
                r#"Bearer realm="operator""#,
            ),
            Self::Malformed => (
                "The Authorization header must be exactly: Bearer <operator token>.",
                r#"Bearer realm="operator", error="invalid_request""#,
            ),
            Self::WrongToken => (
                "The bearer token is not an operator token.",
                r#"Bearer realm="operator", error="invalid_token""#,
            ),
            Self::NotConfigured => (
                "This service has no operator tokens configured, so it accepts none.",
                r#"Bearer realm="operator""#,
            ),
        };
        let mut response =
            Problem::new(StatusCode::UNAUTHORIZED, "/problems/unauthorized", "Unauthorized", detail)
                .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// Middleware: the request goes on with its [`Operator`] in its extensions, or is answered 401.
/// A refusal is logged with its reason; the token is never logged.
pub async fn require_operator(
    State(auth): State<OperatorAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authenticate(request.headers()) {
        Ok(operator) => {
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        Err(refusal) => {
            let route =
                request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
            tracing::info!(
                method = %request.method(),
                route = route.as_deref().unwrap_or(""),
                reason = refusal.as_str(),
                "operator request refused"
            );
            refusal.into_response()
        }
    }
}

/// The token of the one `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::Missing)?;
    if values.next().is_some() {
        return Err(Refusal::Malformed);
    }
    let text = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Refusal::Malformed);
    }
    Ok(token.as_bytes())
}

/// `alice:<token>,bob:<token>` (empty entries, as after a trailing comma, are skipped). Errors
/// show the names, with each token masked.
fn parse_list(list: &str) -> Result<Vec<NamedToken>, ConfigError> {
    let masked = list
        .split(',')
        .map(|entry| match entry.trim().split_once(':') {
            Some((name, _)) => format!("{name}:***"),
            None if entry.trim().is_empty() => String::new(),
            None => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let entries = list.split(',').enumerate().map(|(i, entry)| (format!("entry {}", i + 1), entry));
    parse_entries(entries).map_err(|problem| ConfigError::new(OPERATOR_TOKENS, &masked, problem))
}

/// The file form: one `name:token` per line; blank lines and `#` comments are skipped.
fn parse_file(text: &str) -> Result<Vec<NamedToken>, String> {
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with('#'))
        .map(|(i, line)| (format!("line {}", i + 1), line));
    parse_entries(lines)
}

fn parse_entries<'a>(entries: impl Iterator<Item = (String, &'a str)>) -> Result<Vec<NamedToken>, String> {
    let mut tokens: Vec<NamedToken> = Vec::new();
    for (place, entry) in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, token) = entry.split_once(':').ok_or_else(|| format!("{place}: expected name:token"))?;
        let (name, token) = (name.trim(), token.trim());
        check_name(name).map_err(|rule| format!("{place}: {rule}"))?;
        check_token(token).map_err(|rule| format!("{place}: the token of {name:?} {rule}"))?;
        if tokens.iter().any(|t| t.name == name) {
            return Err(format!("{place}: {name:?} is named twice: each operator has one token"));
        }
        if let Some(other) = tokens.iter().find(|t| *t.token == *token.as_bytes()) {
            return Err(format!(
                "{place}: the token of {name:?} is also {:?}'s: each token names one operator",
                other.name
            ));
        }
        tokens.push(NamedToken { name: name.to_owned(), token: token.as_bytes().into() });
    }
    if tokens.is_empty() {
        return Err("has no name:token entries".to_owned());
    }
    Ok(tokens)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name before ':' is empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        return Err(format!(
            "the name {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("is empty".to_owned());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters, with no spaces".to_owned());
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "is shorter than {MIN_TOKEN_LEN} characters: use a long random one (`openssl rand -hex 32`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789ab";

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn from(pairs: &[(&str, &str)]) -> Result<OperatorAuth, ConfigError> {
        OperatorAuth::from_env(&env(pairs))
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    fn two_operators() -> OperatorAuth {
        from(&[(OPERATOR_TOKENS, &format!("alice:{ALICE}, bob:{BOB},"))]).unwrap()
    }

    #[test]
    fn named_tokens_are_read_from_the_list() {
        let auth = two_operators();
        assert_eq!(auth.operators(), ["alice", "bob"]);
        assert!(!format!("{auth:?}").contains(ALICE), "Debug shows names, not tokens");
        auth.ensure_configured().unwrap();
    }

    #[test]
    fn the_right_token_names_its_operator_and_any_other_is_refused() {
        let auth = two_operators();
        let bob = auth.authenticate(&headers(&format!("Bearer {BOB}"))).unwrap();
        assert_eq!(bob.name, "bob");
        assert_eq!(auth.authenticate(&headers(&format!("bearer {ALICE}"))).unwrap().name, "alice");
        for wrong in [&ALICE[..ALICE.len() - 1], &format!("{ALICE}x"), "x"] {
            let refused = auth.authenticate(&headers(&format!("Bearer {wrong}")));
            assert_eq!(refused, Err(Refusal::WrongToken), "{wrong}");
        }
        assert_eq!(auth.authenticate(&HeaderMap::new()), Err(Refusal::Missing));
        for malformed in [ALICE, &format!("Basic {ALICE}"), "Bearer ", &format!("Bearer {ALICE} {BOB}")] {
            assert_eq!(auth.authenticate(&headers(malformed)), Err(Refusal::Malformed), "{malformed}");
        }
        let mut twice = headers(&format!("Bearer {ALICE}"));
        twice.append(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {BOB}")).unwrap());
        assert_eq!(auth.authenticate(&twice), Err(Refusal::Malformed));
    }

    #[test]
    fn nothing_configured_is_refused_at_start_up_with_how_to_set_a_token() {
        let auth = from(&[]).unwrap();
        let err = auth.ensure_configured().unwrap_err();
        assert_eq!(err.variable, OPERATOR_TOKENS);
        let text = err.to_string();
        for hint in ["OPERATOR_TOKENS=name:token", "OPERATOR_TOKENS_FILE", "OPERATOR_AUTH=disabled"] {
            assert!(text.contains(hint), "{text}");
        }
        assert_eq!(auth.authenticate(&headers("Bearer anything-at-all-long")), Err(Refusal::NotConfigured));
    }

    #[test]
    fn authentication_is_off_only_when_disabled_explicitly() {
        let auth = from(&[(OPERATOR_AUTH, "disabled")]).unwrap();
        assert!(auth.is_disabled());
        auth.ensure_configured().unwrap();
        assert_eq!(auth.authenticate(&HeaderMap::new()).unwrap().name, ANONYMOUS);
        assert!(
            !from(&[(OPERATOR_AUTH, "required"), (OPERATOR_TOKENS, &format!("a:{ALICE}"))])
                .unwrap()
                .is_disabled()
        );
        let err = from(&[(OPERATOR_AUTH, "off")]).unwrap_err();
        assert_eq!(err.variable, OPERATOR_AUTH);
        let err = from(&[(OPERATOR_AUTH, "disabled"), (OPERATOR_TOKENS, &format!("a:{ALICE}"))]).unwrap_err();
        assert_eq!(err.variable, OPERATOR_AUTH);
        assert!(err.to_string().contains("OPERATOR_TOKENS is set too"), "{err}");
        assert!(!err.to_string().contains(ALICE), "{err}");
    }

    #[test]
    fn list_errors_name_the_variable_and_entry_and_never_show_a_token() {
        for (list, expected) in [
            (format!(":{ALICE}"), "entry 1: the name before ':' is empty"),
            (format!("alice:{ALICE},bob:"), "entry 2: the token of \"bob\" is empty"),
            ("alice:short-secret".to_owned(), "entry 1: the token of \"alice\" is shorter than 16"),
            (format!("alice:{ALICE},alice:{BOB}"), "entry 2: \"alice\" is named twice"),
            (format!("alice:{ALICE},bob:{ALICE}"), "entry 2: the token of \"bob\" is also \"alice\"'s"),
            (format!("alice:{ALICE},{BOB}"), "entry 2: expected name:token"),
            (format!("al ice:{ALICE}"), "entry 1: the name \"al ice\" must be"),
            ("alice:has a space in it!".to_owned(), "must be visible ASCII"),
            (",,".to_owned(), "has no name:token entries"),
        ] {
            let err = from(&[(OPERATOR_TOKENS, &list)]).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.variable, OPERATOR_TOKENS, "{text}");
            assert!(text.contains(expected), "{list}: {text}");
            for secret in [ALICE, BOB, "short-secret", "has a space"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }

    #[test]
    fn the_file_form_skips_blank_lines_and_comments_and_names_the_line_of_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator-tokens");
        std::fs::write(&path, format!("# operators\n\nalice:{ALICE}\n  # bob joined\r\nbob:{BOB}\r\n"))
            .unwrap();
        let path_text = path.to_str().unwrap();
        let auth = from(&[(OPERATOR_TOKENS_FILE, path_text)]).unwrap();
        assert_eq!(auth.operators(), ["alice", "bob"]);
        assert_eq!(auth.authenticate(&headers(&format!("Bearer {BOB}"))).unwrap().name, "bob");

        std::fs::write(&path, format!("alice:{ALICE}\n\n{BOB}\n")).unwrap();
        let err = from(&[(OPERATOR_TOKENS_FILE, path_text)]).unwrap_err();
        assert_eq!(err.variable, OPERATOR_TOKENS_FILE);
        assert!(err.to_string().contains("line 3: expected name:token"), "{err}");
        assert!(!err.to_string().contains(BOB), "{err}");

        std::fs::write(&path, "# nobody yet\n").unwrap();
        let err = from(&[(OPERATOR_TOKENS_FILE, path_text)]).unwrap_err();
        assert!(err.to_string().contains("has no name:token entries"), "{err}");

        let missing = dir.path().join("nope");
        let err = from(&[(OPERATOR_TOKENS_FILE, missing.to_str().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("cannot read it"), "{err}");
    }

    #[test]
    fn the_list_and_the_file_are_not_both_set() {
        let err =
            from(&[(OPERATOR_TOKENS, &format!("a:{ALICE}")), (OPERATOR_TOKENS_FILE, "/tmp/x")]).unwrap_err();
        assert_eq!(err.variable, OPERATOR_TOKENS_FILE);
        assert!(!err.to_string().contains(ALICE), "{err}");
    }

    #[tokio::test]
    async fn a_refusal_is_a_401_problem_with_a_bearer_challenge() {
        let response = Refusal::WrongToken.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="operator", error="invalid_token""#
        );
        let missing = Refusal::Missing.into_response();
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="operator""#);
        let body = axum::body::to_bytes(missing.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 401);
        assert_eq!(problem["type"], "/problems/unauthorized");
    }
}
