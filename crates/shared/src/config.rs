//! Configuration from environment variables, with local defaults.
//!
//! Every service builds its `Config` at start-up through an [`Env`], so a bad value stops the
//! service before it touches NATS or Postgres, with an error that names the variable:
//!
//! ```text
//! invalid configuration: WORKER_MAX_DELIVER="zero": expected a whole number
//! ```
//!
//! [`Env`] reads through a lookup function rather than `std::env` directly, so tests can build a
//! configuration from a map without touching the process environment.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Display,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use contract::duration::parse_duration;

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub problem: String,
}

impl ConfigError {
    /// The value is shown [`redact`]ed: an error message ends up in logs, a password must not.
    pub fn new(variable: &str, value: &str, problem: impl Display) -> Self {
        Self { variable: variable.to_owned(), value: redact(value), problem: problem.to_string() }
    }
}

/// A URL (or a comma-separated list of them) fit for a log line: the password before `@`
/// becomes `***`, the user name kept (`postgres://app:s3cret@db/orders` →
/// `postgres://app:***@db/orders`; a NATS token, `nats://t0ken@host`, → `nats://***@host`).
/// Anything else is returned as it is.
pub fn redact(value: &str) -> String {
    value.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let masked = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // In a NATS URL a lone name is a token; elsewhere (Postgres) it is a user name.
        None if scheme.starts_with("nats") || scheme.starts_with("tls") => "***".to_owned(),
        None => return url.to_owned(),
    };
    format!("{scheme}://{masked}{}", &rest[at..])
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where configuration values come from: the process environment, or a map in tests.
pub struct Env {
    lookup: Lookup,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Env")
    }
}

impl Env {
    /// The process environment. Empty values count as unset, as in most shells' `${VAR:-default}`.
    pub fn from_process() -> Self {
        Self { lookup: Box::new(|name| std::env::var(name).ok()) }
    }

    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self { lookup: Box::new(move |name| map.get(name).cloned()) }
    }

    /// An environment from a map that remembers every variable the code asks for: a way to
    /// check that a deployment (compose.yaml) sets only variables the services read.
    pub fn recording(map: HashMap<String, String>) -> (Self, Arc<Mutex<BTreeSet<String>>>) {
        let asked = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = asked.clone();
        let env = Self {
            lookup: Box::new(move |name| {
                if let Ok(mut seen) = seen.lock() {
                    seen.insert(name.to_owned());
                }
                map.get(name).cloned()
            }),
        };
        (env, asked)
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// The raw value, if set and not empty.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// Any type with a `FromStr` (numbers, addresses, …).
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|err| ConfigError::new(name, &value, err)),
        }
    }

    /// A whole number within `range`.
    pub fn number<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let value = match self.raw(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        let number: T =
            value.trim().parse().map_err(|_| ConfigError::new(name, &value, "expected a whole number"))?;
        if !range.contains(&number) {
            return Err(ConfigError::new(
                name,
                &value,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(number)
    }

    /// A fraction between 0.0 and 1.0, e.g. a failure rate.
    pub fn fraction(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        let value = match self.raw(name) {
            None => return Ok(default),
            Some(value) => value,
        };
        match value.trim().parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err(ConfigError::new(name, &value, "expected a number between 0.0 and 1.0")),
        }
    }

    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let value = self.string(name, default);
        value
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(name, &value, "expected host:port, e.g. 127.0.0.1:8080"))
    }

    /// A duration such as `500ms`, `2s`, `5m`, `1h` or `7d`.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_duration(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }

    /// A comma-separated list of durations, e.g. `1s,2s,4s`.
    pub fn durations(&self, name: &str, default: &[Duration]) -> Result<Vec<Duration>, ConfigError> {
        match self.raw(name) {
            None => Ok(default.to_vec()),
            Some(value) => value
                .split(',')
                .map(|part| parse_duration(part).map_err(|p| ConfigError::new(name, &value, p)))
                .collect(),
        }
    }

    /// A size in bytes: `1048576`, `512KiB`, `256MiB`, `1GiB`.
    /// A duration that must be longer than zero (Postgres reads a zero timeout as "none").
    pub fn positive_duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let value = self.duration(name, default)?;
        if value < Duration::from_millis(1) {
            return Err(ConfigError::new(name, &self.string(name, ""), "must be at least 1ms"));
        }
        Ok(value)
    }

    pub fn bytes(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_bytes(&value).map_err(|problem| ConfigError::new(name, &value, problem)),
        }
    }
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| "expected a size such as 1048576, 512KiB or 256MiB".to_owned())?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    Ok(number.saturating_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert!(parse_bytes("12 parsecs").is_err());
    }

    #[test]
    fn passwords_and_tokens_are_redacted_and_the_rest_kept() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/orders"), "postgres://app:***@db:5432/orders");
        assert_eq!(redact("nats://t0ken@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("nats://u:p@a:4222,nats://u:p@b:4222"), "nats://u:***@a:4222,nats://u:***@b:4222");
        assert_eq!(redact("postgres://app@db/orders"), "postgres://app@db/orders");
        assert_eq!(redact("http://host/path?q=a@b"), "http://host/path?q=a@b");
        assert_eq!(redact("5s"), "5s");
    }
}
