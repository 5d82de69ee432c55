//! The console's settings: `CONSOLE_*` environment variables, checked at start-up.

use std::time::Duration;

use shared::config::{ConfigError, Env};

use super::session::SessionKey;

/// `CONSOLE_SESSION_KEY`: the key that signs session cookies and CSRF tokens.
pub const SESSION_KEY: &str = "CONSOLE_SESSION_KEY";
/// `CONSOLE_JAEGER_URL`: where the reviewer's browser opens Jaeger.
pub const JAEGER_URL: &str = "CONSOLE_JAEGER_URL";
/// `CONSOLE_ORDER_API_URL`: where the reviewer's browser reaches order-api.
pub const ORDER_API_URL: &str = "CONSOLE_ORDER_API_URL";

#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// `CONSOLE_SESSION_KEY` (at least 32 characters). Unset: a random key per start, so
    /// sessions end when the process does. Set it (the same on every replica) to keep them.
    pub session_key: SessionKey,
    /// Whether the key was generated (for the start-up log).
    pub session_key_generated: bool,
    /// `CONSOLE_SESSION_TTL` (default `8h`): how long a sign-in lasts.
    pub session_ttl: Duration,
    /// `CONSOLE_SECURE_COOKIE` (default `false`): mark the cookie `Secure` on every answer,
    /// not only on requests that arrive with `X-Forwarded-Proto: https`.
    pub secure_cookie: bool,
    /// `CONSOLE_JAEGER_URL` (default `http://localhost:16686`): a trace is `{this}/trace/{id}`.
    pub jaeger_url: String,
    /// `CONSOLE_ORDER_API_URL` (default `http://localhost:8080`): an order's status is
    /// `{this}/orders/{id}`.
    pub order_api_url: String,
}

impl ConsoleSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let (session_key, session_key_generated) = match env.raw(SESSION_KEY) {
            Some(key) if key.trim().len() >= SessionKey::MIN_LEN => {
                (SessionKey::new(key.trim().as_bytes()), false)
            }
            Some(_) => {
                return Err(ConfigError::new(
                    SESSION_KEY,
                    "***",
                    format!(
                        "must be at least {} characters: use a long random one (`openssl rand -hex 32`)",
                        SessionKey::MIN_LEN
                    ),
                ));
            }
            None => (SessionKey::random(), true),
        };
        let session_ttl = env.duration("CONSOLE_SESSION_TTL", Duration::from_secs(8 * 3600))?;
        if session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "CONSOLE_SESSION_TTL",
                &env.string("CONSOLE_SESSION_TTL", ""),
                "must be at least 1m",
            ));
        }
        Ok(Self {
            session_key,
            session_key_generated,
            session_ttl,
            secure_cookie: env.parse("CONSOLE_SECURE_COOKIE", false)?,
            jaeger_url: link_base(env, JAEGER_URL, "http://localhost:16686")?,
            order_api_url: link_base(env, ORDER_API_URL, "http://localhost:8080")?,
        })
    }
}

/// A URL the console puts in links: `http(s)://` and a host, no query or fragment, and none of
/// the characters that could break out of an attribute. Returned without a trailing `/`.
fn link_base(env: &Env, name: &str, default: &str) -> Result<String, ConfigError> {
    let value = env.string(name, default);
    let url = value.trim().trim_end_matches('/');
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or(""));
    let unsafe_char = |c: char| c.is_whitespace() || c.is_control() || "\"'<>`?#\\".contains(c);
    match host {
        None => Err(ConfigError::new(name, &value, "must start with http:// or https://")),
        Some("") => Err(ConfigError::new(name, &value, "has no host")),
        Some(_) if url.contains(unsafe_char) || url.contains('@') => Err(ConfigError::new(
            name,
            &value,
            "must be a plain base URL: no query, fragment, credentials, spaces or quotes",
        )),
        Some(_) => Ok(url.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<ConsoleSettings, ConfigError> {
        ConsoleSettings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn the_defaults_suit_a_local_run() {
        let settings = from(&[]).unwrap();
        assert!(settings.session_key_generated);
        assert_eq!(settings.jaeger_url, "http://localhost:16686");
        assert_eq!(settings.order_api_url, "http://localhost:8080");
        assert!(!settings.secure_cookie);
    }

    #[test]
    fn a_link_base_must_be_a_plain_http_url_and_the_error_names_the_variable() {
        assert_eq!(
            from(&[(JAEGER_URL, "https://jaeger.example/")]).unwrap().jaeger_url,
            "https://jaeger.example"
        );
        for bad in
            ["jaeger:16686", "http://", "http://x/\"onmouseover=", "http://x/?q=1", "javascript:alert(1)"]
        {
            let err = from(&[(JAEGER_URL, bad)]).unwrap_err();
            assert_eq!(err.variable, JAEGER_URL, "{bad}");
        }
        assert_eq!(from(&[(ORDER_API_URL, "ftp://x")]).unwrap_err().variable, ORDER_API_URL);
    }

    #[test]
    fn a_short_session_key_is_refused_without_being_shown() {
        let err = from(&[(SESSION_KEY, "short-key")]).unwrap_err();
        assert_eq!(err.variable, SESSION_KEY);
        assert!(!err.to_string().contains("short-key"), "{err}");
        assert!(!from(&[(SESSION_KEY, &"k".repeat(32))]).unwrap().session_key_generated);
    }
}
