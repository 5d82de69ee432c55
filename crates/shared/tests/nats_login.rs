//! Logging in to NATS the usual ways (`shared::nats::auth`), against a real nats-server: a user
//! and password in `NATS_URL`, an NKey seed file, TLS with a custom CA and a client
//! certificate, and a `.creds` file against a server in operator (JWT) mode, whose operator,
//! account and user JWTs the test issues itself.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{path::Path, process::Command, time::Duration};

use shared::{config::Env, nats::NatsConfig};
use test_support::{NatsServer, NatsUser};
use tokio_util::sync::CancellationToken;

fn config(pairs: &[(&str, &str)]) -> NatsConfig {
    NatsConfig::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap()
}

/// Connects as `shared::nats::connect` does, once, without retrying.
async fn connect_once(config: &NatsConfig) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = config.auth.apply(async_nats::ConnectOptions::new()).await.unwrap();
    options.connect(config.url.as_str()).await
}

#[tokio::test]
async fn a_user_and_password_in_nats_url_log_in_as_that_user() {
    let nats = NatsServer::start().await;
    let config = config(&[("NATS_URL", &nats.url_as(NatsUser::OrderApi))]);
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        shared::nats::connect(&config, "order-api", &CancellationToken::new()),
    )
    .await
    .unwrap();
    let (client, _) = connected.unwrap();
    // Logged in as order_api: `$JS.API.INFO` is allowed, `orders.new` too.
    client.request("$JS.API.INFO", "".into()).await.unwrap();
    client.publish("orders.new", "x".into()).await.unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn a_token_in_nats_url_logs_in_and_another_is_refused() {
    let nats =
        NatsServer::start_with_config("authorization { token: \"a-test-token-of-the-service\" }\n").await;
    let url = |token: &str| nats.address().replacen("nats://", &format!("nats://{token}@"), 1);
    let with_token = config(&[("NATS_URL", &url("a-test-token-of-the-service"))]);
    assert_eq!(with_token.auth.describe(), "a token");
    assert!(!format!("{with_token:?}").contains("a-test-token-of-the-service"), "the token is never shown");
    let client = connect_once(&with_token).await.unwrap();
    client.flush().await.unwrap();

    let err = connect_once(&config(&[("NATS_URL", &url("a-guessed-token"))])).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_as_such_and_not_taken_for_an_outage() {
    let nats = NatsServer::start().await;
    let url = nats.url_as(NatsUser::OrderApi).replace("-test-password", "-wrong");
    let err = connect_once(&config(&[("NATS_URL", &url)])).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
    assert!(err.to_string().contains("authorization violation"), "{err}");
    // Without credentials at all: refused too (there is no anonymous user).
    let err = connect_once(&config(&[("NATS_URL", &nats.address())])).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
}

#[tokio::test]
async fn an_nkey_seed_file_logs_in_as_the_user_of_its_public_key() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ))
    .await;
    let seed_file = nats.dir().join("service.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let config =
        config(&[("NATS_URL", &nats.address()), ("NATS_NKEY_SEED_FILE", seed_file.to_str().unwrap())]);
    assert_eq!(config.auth.describe(), format!("NKey seed file {}", seed_file.display()));
    assert!(!format!("{config:?}").contains(&user.seed().unwrap()), "the seed is never shown");
    let client = connect_once(&config).await.unwrap();
    client.flush().await.unwrap();

    // Another key is refused.
    let stranger = nats.dir().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let err = connect_once(&config_with_seed(&nats, &stranger)).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
}

fn config_with_seed(nats: &NatsServer, seed: &Path) -> NatsConfig {
    config(&[("NATS_URL", &nats.address()), ("NATS_NKEY_SEED_FILE", seed.to_str().unwrap())])
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl
/// command in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let key = |name: &str| {
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name])
    };
    key("ca.key");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-out",
        "ca.pem",
    ]);
    for (name, extension) in
        [("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]
    {
        key(&format!("{name}.key"));
        openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), extension).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // The server verifies clients: no client certificate, no connection.
    let nats = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem"),
    ))
    .await;
    let with_client_certificate = config(&[
        ("NATS_URL", &nats.address()),
        ("NATS_TLS_CA", &path("ca.pem")),
        ("NATS_TLS_CERT", &path("client.pem")),
        ("NATS_TLS_KEY", &path("client.key")),
    ]);
    let client = connect_once(&with_client_certificate).await.unwrap();
    client.flush().await.unwrap();

    let without = config(&[("NATS_URL", &nats.address()), ("NATS_TLS_CA", &path("ca.pem"))]);
    assert!(connect_once(&without).await.is_err(), "a client without a certificate was let in");
    // A client that does not trust the CA refuses the server.
    let untrusting = config(&[
        ("NATS_URL", &nats.address()),
        ("NATS_TLS_CA", &path("client.pem")),
        ("NATS_TLS_CERT", &path("client.pem")),
        ("NATS_TLS_KEY", &path("client.key")),
    ]);
    assert!(connect_once(&untrusting).await.is_err(), "a server signed by an unknown CA was trusted");
}

#[tokio::test]
async fn a_creds_file_is_read_and_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    // The layout `nsc generate creds` writes (the JWT is not checked on this side).
    let creds = dir.path().join("service.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let config = config(&[("NATS_CREDS", creds.to_str().unwrap())]);
    assert_eq!(config.auth.describe(), format!("creds file {}", creds.display()));
    assert!(config.auth.apply(async_nats::ConnectOptions::new()).await.is_ok());

    let broken = dir.path().join("broken.creds");
    std::fs::write(&broken, format!("just a seed: {seed}")).unwrap();
    let err = NatsConfig::from_env(&Env::from_pairs([("NATS_CREDS", broken.to_str().unwrap())])).unwrap_err();
    assert_eq!(err.variable, "NATS_CREDS");
    assert!(!err.to_string().contains(&seed), "{err}");
}

/// A JWT of the NATS ecosystem (nats-io/jwt v2), as `nsc` issues them: `claims` about `subject`,
/// signed by `issuer`'s key.
fn issue_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

#[tokio::test]
async fn a_creds_file_logs_in_to_a_server_in_operator_mode() {
    // The chain of trust `nsc` would set up: an operator, who signs an account, which signs
    // the service's user. The server knows the operator and the account; the user's JWT and
    // seed are in the `.creds` file only.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = issue_jwt(
        &operator,
        &operator.public_key(),
        "test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = issue_jwt(
        &operator,
        &account.public_key(),
        "orders",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "type": "account", "version": 2,
        }),
    );
    let user_claims =
        serde_json::json!({"subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
    let user_jwt = issue_jwt(&account, &user.public_key(), "order_api", user_claims);
    let nats = NatsServer::start_with_config(&format!(
        "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt} }}\n",
        account.public_key()
    ))
    .await;

    let creds = nats.dir().join("order_api.creds");
    let write_creds = |path: &Path, seed: &str| {
        std::fs::write(
            path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
    };
    write_creds(&creds, &user.seed().unwrap());
    let logged_in = config(&[("NATS_URL", &nats.address()), ("NATS_CREDS", creds.to_str().unwrap())]);
    let client = connect_once(&logged_in).await.unwrap();
    // Logged in: a round trip through the server works.
    let mut inbox = client.subscribe("orders.new").await.unwrap();
    client.publish("orders.new", "x".into()).await.unwrap();
    let got =
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut inbox)).await.unwrap();
    assert_eq!(got.unwrap().payload, "x");

    // The same JWT with a seed that is not its user's cannot answer the server's challenge.
    let forged_creds = nats.dir().join("forged.creds");
    write_creds(&forged_creds, &nkeys::KeyPair::new_user().seed().unwrap());
    let forged = config(&[("NATS_URL", &nats.address()), ("NATS_CREDS", forged_creds.to_str().unwrap())]);
    let err = connect_once(&forged).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
    // And with no credentials at all, nobody gets in.
    let err = connect_once(&config(&[("NATS_URL", &nats.address())])).await.unwrap_err();
    assert!(shared::nats::is_refused_login(&err), "{err:?}");
}
