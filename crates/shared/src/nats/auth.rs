//! Who a service is to NATS, and how it checks the server: credentials and TLS from settings.
//!
//! The nats-server configuration in `deploy/nats/nats-server.conf` gives each service a user of
//! its own, allowed only the subjects and JetStream calls that service makes. This module turns
//! the usual ways of proving who one is into [`async_nats::ConnectOptions`]:
//!
//! | setting | meaning |
//! |---|---|
//! | `NATS_URL=nats://user:password@host:4222` | user and password (percent-encoded in the URL) |
//! | `NATS_URL=nats://token@host:4222` | a token |
//! | `NATS_CREDS` | a `.creds` file (a user JWT and its NKey seed; decentralised/operator mode) |
//! | `NATS_NKEY_SEED_FILE` | a file holding a user NKey seed (`SU…`) |
//! | `NATS_TLS_CA` | PEM file of the CA that signed the server's certificate (TLS is then required) |
//! | `NATS_TLS_CERT`, `NATS_TLS_KEY` | PEM client certificate and key, for servers that verify clients |
//!
//! async-nats **ignores** a user and password written in the URL unless they are handed to it
//! explicitly, so they are parsed out here. Everything is checked at start-up: a file must
//! exist and parse, a certificate comes with its key, and only one way of logging in is given,
//! each error naming its variable. Secrets are never shown: `Debug` prints `***`, errors name
//! the variable and the file, never the content.

use std::{fmt, path::PathBuf};

use async_nats::ConnectOptions;
use percent_encoding::percent_decode_str;

use crate::config::{ConfigError, Env};

/// How to log in to NATS and how to check its certificate. See the module docs.
#[derive(Clone, Default)]
pub struct NatsAuth {
    login: Login,
    /// `NATS_TLS_CA`.
    pub tls_ca: Option<PathBuf>,
    /// `NATS_TLS_CERT` and `NATS_TLS_KEY`.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// One way of logging in (the server accepts one per connection).
#[derive(Clone, Default, PartialEq, Eq)]
enum Login {
    #[default]
    Anonymous,
    UserPassword(String, String),
    Token(String),
    CredsFile(PathBuf),
    /// The seed itself, read from `NATS_NKEY_SEED_FILE` at start-up.
    NKey {
        file: PathBuf,
        seed: String,
    },
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAuth")
            .field("login", &self.describe())
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

impl NatsAuth {
    /// Reads the settings of the module docs. `url` is `NATS_URL`: one or more URLs, separated
    /// by commas (the nodes of a cluster). One service logs in as one user everywhere, so the
    /// URLs that hold credentials must hold the same ones, and they apply to every server of
    /// the list (a URL without any, `nats://b:4222`, is logged in to with them too).
    pub fn from_env(env: &Env, url: &str) -> Result<Self, ConfigError> {
        let from_url = credentials_in_url(url)?;
        let creds = env.raw("NATS_CREDS").map(PathBuf::from);
        let nkey_file = env.raw("NATS_NKEY_SEED_FILE").map(PathBuf::from);

        let login = match (from_url, creds, nkey_file) {
            (_, Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "NATS_NKEY_SEED_FILE",
                    &env.string("NATS_NKEY_SEED_FILE", ""),
                    "set NATS_CREDS or NATS_NKEY_SEED_FILE, not both (a .creds file holds its own NKey seed)",
                ));
            }
            (Some(_), Some(_), None) | (Some(_), None, Some(_)) => {
                let variable =
                    if env.raw("NATS_CREDS").is_some() { "NATS_CREDS" } else { "NATS_NKEY_SEED_FILE" };
                return Err(ConfigError::new(
                    variable,
                    &env.string(variable, ""),
                    "NATS_URL already holds credentials: log in one way only",
                ));
            }
            (Some(login), None, None) => login,
            (None, Some(file), None) => {
                let text = read("NATS_CREDS", &file)?;
                ConnectOptions::new().credentials(&text).map_err(|_| {
                    ConfigError::new(
                        "NATS_CREDS",
                        &file.display().to_string(),
                        "not a NATS credentials file (expected a user JWT and an NKey seed, as `nsc` writes them)",
                    )
                })?;
                Login::CredsFile(file)
            }
            (None, None, Some(file)) => {
                let seed = read("NATS_NKEY_SEED_FILE", &file)?.trim().to_owned();
                let is_user_seed = seed.starts_with("SU") && nkeys::KeyPair::from_seed(&seed).is_ok();
                if !is_user_seed {
                    return Err(ConfigError::new(
                        "NATS_NKEY_SEED_FILE",
                        &file.display().to_string(),
                        "expected a file holding one user NKey seed (it starts with SU)",
                    ));
                }
                Login::NKey { file, seed }
            }
            (None, None, None) => Login::Anonymous,
        };

        let tls_ca = env.raw("NATS_TLS_CA").map(PathBuf::from);
        if let Some(ca) = &tls_ca {
            read("NATS_TLS_CA", ca)?;
        }
        let tls_client = match (env.raw("NATS_TLS_CERT"), env.raw("NATS_TLS_KEY")) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
                read("NATS_TLS_CERT", &cert)?;
                read("NATS_TLS_KEY", &key)?;
                Some((cert, key))
            }
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    "NATS_TLS_CERT",
                    &cert,
                    "set NATS_TLS_KEY too: a certificate needs its key",
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    "NATS_TLS_KEY",
                    &key,
                    "set NATS_TLS_CERT too: a key needs its certificate",
                ));
            }
        };
        Ok(Self { login, tls_ca, tls_client })
    }

    /// Adds these credentials and TLS settings to `options`.
    pub async fn apply(&self, mut options: ConnectOptions) -> std::io::Result<ConnectOptions> {
        options = match &self.login {
            Login::Anonymous => options,
            Login::UserPassword(user, password) => options.user_and_password(user.clone(), password.clone()),
            Login::Token(token) => options.token(token.clone()),
            Login::CredsFile(file) => options.credentials_file(file).await?,
            Login::NKey { seed, .. } => options.nkey(seed.clone()),
        };
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        Ok(options)
    }

    /// How this service logs in, fit for a log line: `user order_api`, `token`, `creds file
    /// /run/secrets/x.creds`, … (never a secret).
    pub fn describe(&self) -> String {
        match &self.login {
            Login::Anonymous => "no credentials".to_owned(),
            Login::UserPassword(user, _) => format!("user {user}"),
            Login::Token(_) => "a token".to_owned(),
            Login::CredsFile(file) => format!("creds file {}", file.display()),
            Login::NKey { file, .. } => format!("NKey seed file {}", file.display()),
        }
    }
}

/// The user and password, or the token, written in the URLs of the list; an error if two URLs
/// hold different ones.
fn credentials_in_url(urls: &str) -> Result<Option<Login>, ConfigError> {
    let mut found: Option<Login> = None;
    for login in urls.split(',').filter_map(credentials_in_one_url) {
        match &found {
            None => found = Some(login),
            Some(first) if *first == login => {}
            Some(_) => {
                return Err(ConfigError::new(
                    "NATS_URL",
                    urls,
                    "its servers hold different credentials: a service logs in as one user, give the same in every URL (or in the first only)",
                ));
            }
        }
    }
    Ok(found)
}

fn credentials_in_one_url(url: &str) -> Option<Login> {
    let (_scheme, rest) = url.trim().split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _host) = authority.rsplit_once('@')?;
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    Some(match userinfo.split_once(':') {
        Some((user, password)) => Login::UserPassword(decode(user), decode(password)),
        None => Login::Token(decode(userinfo)),
    })
}

/// The file's text; an error naming `variable` if it cannot be read.
fn read(variable: &str, path: &PathBuf) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(variable, &path.display().to_string(), format!("cannot read it: {err}"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn auth(pairs: &[(&str, &str)]) -> Result<NatsAuth, ConfigError> {
        let env = Env::from_pairs(pairs.iter().copied());
        let url = env.string("NATS_URL", "nats://127.0.0.1:4222");
        NatsAuth::from_env(&env, &url)
    }

    #[test]
    fn a_user_and_password_are_taken_from_the_url_decoded_and_never_shown() {
        let auth = auth(&[("NATS_URL", "nats://order_api:p%40ss%3Aword@nats:4222")]).unwrap();
        assert!(matches!(&auth.login, Login::UserPassword(u, p) if u == "order_api" && p == "p@ss:word"));
        assert_eq!(auth.describe(), "user order_api");
        assert!(!format!("{auth:?}").contains("p@ss"));
    }

    #[test]
    fn a_lone_name_in_the_url_is_a_token() {
        let auth = auth(&[("NATS_URL", "nats://127.0.0.1:4222,nats://s3cret@nats:4222")]).unwrap();
        assert!(matches!(&auth.login, Login::Token(t) if t == "s3cret"));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn every_server_of_a_list_is_logged_in_to_with_the_same_credentials() {
        let same = "nats://order_api:pw@a:4222,nats://order_api:pw@b:4222,nats://c:4222";
        let auth = auth(&[("NATS_URL", same)]).unwrap();
        assert!(matches!(&auth.login, Login::UserPassword(u, p) if u == "order_api" && p == "pw"));

        let different = "nats://order_api:s3cret@a:4222,nats://other:s3cret2@b:4222";
        let err = super::NatsAuth::from_env(&Env::from_pairs([]), different).unwrap_err();
        assert_eq!(err.variable, "NATS_URL");
        assert!(err.to_string().contains("different credentials"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named_with_its_variable() {
        for variable in ["NATS_CREDS", "NATS_NKEY_SEED_FILE", "NATS_TLS_CA"] {
            let err = auth(&[(variable, "/nonexistent/file")]).unwrap_err();
            assert_eq!(err.variable, variable);
            assert!(err.to_string().contains("cannot read it"), "{err}");
        }
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_other_way_round() {
        assert_eq!(auth(&[("NATS_TLS_CERT", "/etc/hostname")]).unwrap_err().variable, "NATS_TLS_CERT");
        assert_eq!(auth(&[("NATS_TLS_KEY", "/etc/hostname")]).unwrap_err().variable, "NATS_TLS_KEY");
    }

    #[test]
    fn one_way_of_logging_in_only() {
        let both = auth(&[("NATS_CREDS", "/a"), ("NATS_NKEY_SEED_FILE", "/b")]).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let url_and_file = auth(&[("NATS_URL", "nats://u:p@h:4222"), ("NATS_CREDS", "/a")]).unwrap_err();
        assert_eq!(url_and_file.variable, "NATS_CREDS");
        assert!(!url_and_file.to_string().contains(":p@"), "{url_and_file}");
    }

    #[test]
    fn a_file_that_is_not_a_seed_is_refused_without_showing_it() {
        let dir = tempfile_dir();
        let file = dir.join("seed");
        std::fs::write(&file, "SECRET-BUT-NOT-A-SEED").unwrap();
        let err = auth(&[("NATS_NKEY_SEED_FILE", file.to_str().unwrap())]).unwrap_err();
        assert_eq!(err.variable, "NATS_NKEY_SEED_FILE");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nats-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
