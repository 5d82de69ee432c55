//! Least privilege: each service reaches only what it needs.
//!
//! The whole suite already runs every service as its own Postgres role and NATS user (see
//! `test_support::stack`), which proves the rights are enough. These tests prove they are no
//! more: a role cannot read another service's tables, and a NATS user cannot publish what its
//! service has no business publishing (`deploy/nats/nats-server.conf`).
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{sync::Arc, time::Duration};

use async_nats::{Event, jetstream};
use sqlx::{Connection, PgConnection};
use test_support::{NatsServer, NatsUser, PgRole, TestDatabase, stack::Stack};
use tokio::sync::Mutex;

/// One table of each service's schema.
const TABLES: [(PgRole, &str); 3] = [
    (PgRole::OrderApi, "order_api.orders"),
    (PgRole::InventoryWorker, "inventory.inventory"),
    (PgRole::DlqService, "dlq.dead_letters"),
];

#[tokio::test]
async fn a_services_role_can_read_its_own_tables_and_no_one_elses() {
    // The services create their tables, each as its role: the stack runs them that way.
    let stack = Stack::start_with_dlq(1, &[]).await;
    for role in PgRole::ALL {
        let mut conn = PgConnection::connect(&stack.db.url_as(role)).await.unwrap();
        for (owner, table) in TABLES {
            let read = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .execute(&mut conn)
                .await;
            if owner == role {
                assert!(read.is_ok(), "{} cannot read its own {table}: {read:?}", role.name());
            } else {
                let code = read.as_ref().err().and_then(|e| e.as_database_error()).and_then(|e| e.code());
                assert_eq!(
                    code.as_deref(),
                    Some("42501"),
                    "{} must get permission denied on {table}, got {read:?}",
                    role.name()
                );
            }
        }
        // Nor can it make room for itself elsewhere: no tables in `public`, no new schemas.
        for ddl in ["CREATE TABLE public.intruder (id int)", "CREATE SCHEMA intruder"] {
            let result = sqlx::query(ddl).execute(&mut conn).await;
            let code = result.as_ref().err().and_then(|e| e.as_database_error()).and_then(|e| e.code());
            assert_eq!(code.as_deref(), Some("42501"), "{}: {ddl}: {result:?}", role.name());
        }
    }
    // And each service says who it is to Postgres.
    let pool = stack.pool().await;
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT usename::text, application_name FROM pg_stat_activity
         WHERE datname = current_database() AND usename <> current_user ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        names,
        [
            ("dlq_service".to_owned(), "dlq-service".to_owned()),
            ("inventory_worker".to_owned(), "inventory-worker".to_owned()),
            ("order_api".to_owned(), "order-api".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_service_given_a_superuser_still_works_and_says_it_should_not() {
    let stack = Stack::start(1, &[]).await;
    let db = TestDatabase::on(&test_support::postgres::admin_url());
    let service = test_support::ServiceProcess::spawn(
        "inventory-worker",
        "worker-as-superuser",
        &[
            ("DATABASE_URL", db.url()),
            ("NATS_URL", stack.nats.url_as(NatsUser::InventoryWorker)),
            ("HTTP_ADDR", format!("127.0.0.1:{}", test_support::free_port())),
            (test_support::http::OPERATOR_TOKENS.0, test_support::http::OPERATOR_TOKENS.1.to_owned()),
        ],
    );
    test_support::wait_until("the worker warns about its superuser", Duration::from_secs(30), || async {
        service.log_text().contains("connected to Postgres as a superuser").then_some(())
    })
    .await;
    assert!(service.log_text().contains("scripts/provision-db"), "{}", service.log_text());
}

/// A client as `user` that records the errors the server sends it (a refused publish is
/// answered with `-ERR 'Permissions Violation …'`, and the message is dropped).
async fn client_recording_errors(
    nats: &NatsServer,
    user: NatsUser,
) -> (jetstream::Context, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.name().to_owned(), user.password())
        .custom_inbox_prefix(user.inbox_prefix())
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(err) = event {
                    seen.lock().await.push(err.to_string());
                }
            }
        })
        .connect(nats.address())
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    // A refused request gets no answer: do not wait the default 5 s for it.
    js.set_timeout(Duration::from_secs(1));
    (js, errors)
}

async fn wait_for_violation(errors: &Mutex<Vec<String>>, subject: &str) {
    test_support::wait_until(&format!("the server refuses {subject}"), Duration::from_secs(10), || async {
        let errors = errors.lock().await;
        errors.iter().any(|e| e.contains("Permissions Violation") && e.contains(subject)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_worker_cannot_place_orders_or_read_others_replies_and_order_api_cannot_delete_messages() {
    // Streams and consumers as the services declare them.
    let mut stack = Stack::start(1, &[]).await;
    let admin = stack.nats.jetstream().await;
    let stream = admin.get_stream("orders_stream").await.unwrap();
    let before = stream.get_info().await.unwrap().state.messages;

    // inventory-worker publishing a new order: refused, nothing stored.
    let (worker, errors) = client_recording_errors(&stack.nats, NatsUser::InventoryWorker).await;
    let publish = worker.publish("orders.new", "forged order".into()).await.unwrap().await;
    assert!(publish.is_err(), "the worker's publish to orders.new was acknowledged: {publish:?}");
    wait_for_violation(&errors, "orders.new").await;
    // Nor may it read another service's replies (order-api's pulled events, its acks).
    let _sub = worker.client().subscribe("_INBOX_order_api.>").await.unwrap();
    wait_for_violation(&errors, "_INBOX_order_api.>").await;
    let mut stream = admin.get_stream("orders_stream").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, before, "nothing was stored");

    // order-api deleting a stored message: refused, the message stays. (Workers are stopped
    // first, so that the message is not consumed in the meantime.)
    for worker in &mut stack.workers {
        worker.process.terminate().await;
    }
    let ack = admin.publish("orders.new", "an order to keep".into()).await.unwrap().await.unwrap();
    let (order_api, errors) = client_recording_errors(&stack.nats, NatsUser::OrderApi).await;
    let stream_as_order_api = order_api.get_stream("orders_stream").await.unwrap();
    let deleted = stream_as_order_api.delete_message(ack.sequence).await;
    assert!(deleted.is_err(), "order-api deleted a message: {deleted:?}");
    wait_for_violation(&errors, "$JS.API.STREAM.MSG.DELETE.orders_stream").await;
    assert!(stream.get_raw_message(ack.sequence).await.is_ok(), "the message is still there");

    // What each may do, it can: order-api places orders, the worker publishes outcomes.
    order_api.publish("orders.new", "allowed".into()).await.unwrap().await.unwrap();
    worker.publish("order_events.reserved", "allowed".into()).await.unwrap().await.unwrap();

    // dlq-service may delete (it removes a message once dead-lettered), but not purge.
    let (dlq, errors) = client_recording_errors(&stack.nats, NatsUser::DlqService).await;
    let stream_as_dlq = dlq.get_stream("orders_stream").await.unwrap();
    assert!(stream_as_dlq.delete_message(ack.sequence).await.unwrap());
    assert!(stream_as_dlq.purge().await.is_err(), "dlq-service purged the work queue");
    wait_for_violation(&errors, "$JS.API.STREAM.PURGE.orders_stream").await;
}

#[tokio::test]
async fn no_one_gets_in_without_a_password() {
    let nats = NatsServer::start().await;
    let anonymous = async_nats::ConnectOptions::new().connect(nats.address()).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    let wrong = async_nats::ConnectOptions::with_user_and_password("order_api".into(), "guess".into())
        .connect(nats.address())
        .await
        .unwrap_err();
    assert!(shared::nats::is_refused_login(&wrong), "{wrong:?}");
}

/// An upgrade: a database whose schema a service created as the superuser (before roles) is
/// handed to the service's role by `scripts/provision-db`, and the service then runs as it.
#[tokio::test]
async fn tables_made_as_the_superuser_are_handed_to_the_role_on_provisioning() {
    let db = TestDatabase::new();
    let config = |url: String| {
        shared::db::DatabaseConfig::from_env(&shared::config::Env::from_pairs([(
            "DATABASE_URL",
            url.as_str(),
        )]))
        .unwrap()
    };
    inventory_worker::SERVICE.connect_database(&config(db.url())).await.unwrap().close().await;
    db.provision().await;
    let as_role = inventory_worker::SERVICE
        .connect_database(&config(db.url_as(PgRole::InventoryWorker)))
        .await
        .unwrap();
    sqlx::query("INSERT INTO inventory (sku, available) VALUES ('HANDED-OVER', 1)")
        .execute(&as_role)
        .await
        .unwrap();
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'inventory'")
            .fetch_all(&as_role)
            .await
            .unwrap();
    assert_eq!(owners, ["inventory_worker"]);
}

/// The dead-letter sweep's question "did you apply this message?": dlq-service may ask the
/// workers, and a worker may answer (a reply to the asker's own inbox); order-api may not ask.
#[tokio::test]
async fn only_the_dlq_service_may_ask_the_workers_what_they_applied() {
    use shared::messaging::consumer::applied::{Asked, ask};
    let stack = Stack::start(1, &[]).await;
    let question = |client: async_nats::Client| async move {
        ask(&client, "orders_stream", "inventory-worker", uuid::Uuid::now_v7(), Duration::from_secs(2)).await
    };
    let (dlq, _) = client_recording_errors(&stack.nats, NatsUser::DlqService).await;
    test_support::wait_until("a worker answers dlq-service", Duration::from_secs(10), || async {
        (question(dlq.client()).await == Asked::Applied(false)).then_some(())
    })
    .await;

    let (order_api, errors) = client_recording_errors(&stack.nats, NatsUser::OrderApi).await;
    let asked = question(order_api.client()).await;
    assert!(matches!(asked, Asked::NoAnswer(_)), "order-api's question was answered: {asked:?}");
    wait_for_violation(&errors, "dead_letter.applied.orders_stream.inventory-worker").await;
}
