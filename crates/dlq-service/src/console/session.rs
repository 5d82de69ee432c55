//! Who is reviewing: a signed session cookie (or a bearer token), and the CSRF token of every form.
//!
//! # The session cookie holds no secret
//! Signing in proves an operator token once (compared in constant time by
//! [`OperatorAuth::authenticate`], the same check as the JSON API's). The cookie then holds
//! `operator name, expiry, random session id`, signed with HMAC-SHA256 under the console's
//! session key; never the token. A stolen cookie is worth one operator for at most
//! `CONSOLE_SESSION_TTL`, not their token for as long as it is configured. Nothing is stored on
//! the server: a session ends when it expires, when its operator is removed from
//! `OPERATOR_TOKENS`, or when the key changes (a key generated at start-up changes with every
//! restart). Signing out deletes the cookie in the browser.
//!
//! The cookie is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (no other site can make
//! the browser send it), `Path=/console` (the JSON API never sees it), and `Secure` when the
//! console is served over TLS (`X-Forwarded-Proto: https` from the proxy that ends TLS) or
//! `CONSOLE_SECURE_COOKIE=true` says so.
//!
//! # CSRF
//! `SameSite=Strict` already keeps other sites' forms from carrying the cookie; the CSRF token is
//! the second lock, for browsers or proxies that get SameSite wrong. Every form carries a token
//! derived from the session (HMAC of its random id), and every POST is refused without the right
//! one ([`Reviewer::check_csrf`]). Bearer requests get one too (derived from the operator's name),
//! so the rule has no exception: every POST to the console carries its form's token.

use std::{fmt, sync::Arc, time::Duration};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL};
use chrono::Utc;
use hmac::{KeyInit, Mac};
use shared::http::{Operator, OperatorAuth, auth::Refusal};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "dlq_console_session";

/// The key that signs sessions and CSRF tokens. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SessionKey(Arc<[u8]>);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

impl SessionKey {
    /// The shortest key accepted from `CONSOLE_SESSION_KEY`: 32 characters.
    pub const MIN_LEN: usize = 32;

    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// A random key, for a console whose sessions may end when the process does.
    pub fn random() -> Self {
        Self::new(&rand::random::<[u8; 32]>())
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") sign differently.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.mac(parts).finalize().into_bytes().to_vec()
    }

    /// Whether `signature` is `parts`' signature, compared in constant time.
    fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        self.mac(parts).verify_slice(signature).is_ok()
    }
}

/// A signed-in operator's session, as its cookie carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub operator: String,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
    /// Random, per sign-in: what the CSRF token is derived from.
    pub id: String,
}

impl Session {
    pub fn start(operator: &str, ttl: Duration) -> Self {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Self {
            operator: operator.to_owned(),
            expires_at: Utc::now().timestamp().saturating_add(ttl),
            id: BASE64URL.encode(rand::random::<[u8; 16]>()),
        }
    }

    fn fields(&self) -> String {
        format!("{}\n{}\n{}", self.operator, self.expires_at, self.id)
    }

    /// The cookie's value: `base64url(fields).base64url(signature)`.
    pub fn to_cookie_value(&self, key: &SessionKey) -> String {
        let fields = self.fields();
        let signature = key.sign(&[b"session", fields.as_bytes()]);
        format!("{}.{}", BASE64URL.encode(&fields), BASE64URL.encode(signature))
    }

    /// The session in a cookie value, if `key` signed it and it has not expired.
    pub fn from_cookie_value(value: &str, key: &SessionKey) -> Option<Self> {
        let (fields, signature) = value.split_once('.')?;
        let (fields, signature) = (BASE64URL.decode(fields).ok()?, BASE64URL.decode(signature).ok()?);
        if !key.verify(&[b"session", &fields], &signature) {
            return None;
        }
        let fields = String::from_utf8(fields).ok()?;
        let mut parts = fields.splitn(3, '\n');
        let session = Self {
            operator: parts.next()?.to_owned(),
            expires_at: parts.next()?.parse().ok()?,
            id: parts.next()?.to_owned(),
        };
        (session.expires_at > Utc::now().timestamp()).then_some(session)
    }
}

/// The operator behind a console request, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Reviewer {
    pub operator: Operator,
    /// The value of every form's hidden `csrf` field.
    pub csrf: String,
}

impl Reviewer {
    fn new(operator: &str, csrf_basis: &[u8], key: &SessionKey) -> Self {
        let csrf = BASE64URL.encode(key.sign(&[b"csrf", csrf_basis]));
        Self { operator: Operator { name: operator.to_owned() }, csrf }
    }

    /// Whether a form's `csrf` field is this reviewer's token (constant-time).
    pub fn check_csrf(&self, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

/// Why a console request has no reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSignedIn {
    /// No session and no `Authorization`: send the browser to the sign-in page.
    Anonymous,
    /// An `Authorization` header that names no operator.
    Refused(Refusal),
}

/// Who a request is: a valid session cookie first, else `Authorization: Bearer` (checked like the
/// JSON API's), else nobody. A session whose operator is no longer configured is ignored.
pub fn reviewer(headers: &HeaderMap, auth: &OperatorAuth, key: &SessionKey) -> Result<Reviewer, NotSignedIn> {
    let session = cookie(headers, COOKIE).and_then(|value| Session::from_cookie_value(value, key));
    if let Some(session) = session.filter(|s| auth.operators().contains(&s.operator.as_str())) {
        return Ok(Reviewer::new(&session.operator, session.id.as_bytes(), key));
    }
    match auth.authenticate(headers) {
        Ok(operator) => {
            Ok(Reviewer::new(&operator.name, format!("bearer\n{}", operator.name).as_bytes(), key))
        }
        Err(Refusal::Missing) => Err(NotSignedIn::Anonymous),
        Err(refusal) => Err(NotSignedIn::Refused(refusal)),
    }
}

/// The operator whose token was typed into the sign-in form, checked as a bearer token is.
pub fn operator_of_token(token: &str, auth: &OperatorAuth) -> Option<Operator> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
    headers.insert(header::AUTHORIZATION, value);
    auth.authenticate(&headers).ok()
}

/// The value of the first cookie called `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(n, value)| (n == name).then_some(value))
}

/// Whether the request reached us over TLS, as the proxy that ended it says.
pub fn arrived_over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(session: &Session, key: &SessionKey, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        session.to_cookie_value(key),
        ttl.as_secs()
    )
}

/// `Set-Cookie` that deletes the session.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::new(b"a test key that is long enough to sign")
    }

    #[test]
    fn a_session_survives_its_cookie_and_a_tampered_or_foreign_one_does_not() {
        let session = Session::start("alice", Duration::from_secs(60));
        let value = session.to_cookie_value(&key());
        assert_eq!(Session::from_cookie_value(&value, &key()), Some(session.clone()));
        assert!(!value.contains("alice"), "the name is encoded, not a readable claim");

        let forged = Session { operator: "bob".into(), ..session.clone() };
        let (_, signature) = value.split_once('.').unwrap();
        let swapped = format!("{}.{signature}", BASE64URL.encode(forged.fields()));
        assert_eq!(Session::from_cookie_value(&swapped, &key()), None, "another name, same signature");
        assert_eq!(Session::from_cookie_value(&value, &SessionKey::random()), None, "another key");
        for garbage in ["", ".", "abc", "a.b.c", "%%%.%%%"] {
            assert_eq!(Session::from_cookie_value(garbage, &key()), None, "{garbage}");
        }
    }

    #[test]
    fn an_expired_session_is_no_session() {
        let expired =
            Session { expires_at: Utc::now().timestamp() - 1, ..Session::start("alice", Duration::ZERO) };
        assert_eq!(Session::from_cookie_value(&expired.to_cookie_value(&key()), &key()), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let one = Reviewer::new("alice", b"session-1", &key());
        let other = Reviewer::new("alice", b"session-2", &key());
        assert!(one.check_csrf(Some(&one.csrf)));
        assert!(!one.check_csrf(Some(&other.csrf)));
        assert!(!one.check_csrf(None));
        assert!(!one.check_csrf(Some("")));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_console() {
        let session = Session::start("alice", Duration::from_secs(60));
        let set = set_cookie(&session, &key(), Duration::from_secs(60), true);
        for attribute in ["Path=/console", "HttpOnly", "SameSite=Strict", "Secure", "Max-Age=60"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set_cookie(&session, &key(), Duration::from_secs(60), false).contains("Secure"));
    }
}
