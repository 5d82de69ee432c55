//! The whole system as real processes: order-api and inventory-workers, started together
//! against a nats-server and a database of the test's own. More replicas of any service can be
//! added ([`Stack::add_worker`], [`Stack::add_order_api`], [`Stack::add_dlq`]): they share the
//! same database and durable consumers, as replicas in production do.
//!
//! Each service runs as it would be deployed: logged in to Postgres as its own role
//! (`scripts/provision-db` runs first) and to NATS as its own user (the repository's
//! `deploy/nats/nats-server.conf`). So every end-to-end test also proves that those rights are
//! enough. The test itself reaches both as the administrator.

use crate::{
    NatsCluster, NatsServer, NatsUser, PgRole, ServiceProcess, TestDatabase, free_port,
    http::{DeadLetterApi, InventoryApi, OrderApi},
};

/// What the services connect to: one nats-server ([`NatsServer`], the default) or a cluster
/// of them ([`NatsCluster`]).
pub trait Broker {
    /// `NATS_URL` for `user`.
    fn url_as(&self, user: NatsUser) -> String;
    /// The client addresses, without credentials.
    fn addresses(&self) -> Vec<String>;
}

impl Broker for NatsServer {
    fn url_as(&self, user: NatsUser) -> String {
        NatsServer::url_as(self, user)
    }

    fn addresses(&self) -> Vec<String> {
        vec![self.address()]
    }
}

impl Broker for NatsCluster {
    fn url_as(&self, user: NatsUser) -> String {
        NatsCluster::url_as(self, user)
    }

    fn addresses(&self) -> Vec<String> {
        NatsCluster::addresses(self)
    }
}

/// Settings that keep end-to-end runs quick: short retry pauses and polls.
pub const QUICK_SETTINGS: [(&str, &str); 6] = [
    ("WORKER_MAX_DELIVER", "5"),
    ("WORKER_BACKOFF", "200ms,400ms,600ms,800ms"),
    ("PROJECTION_BACKOFF", "200ms,400ms"),
    ("OUTBOX_POLL_INTERVAL", "200ms"),
    ("OUTBOX_RETRY_MAX", "500ms"),
    ("DATABASE_ACQUIRE_TIMEOUT", "2s"),
];

/// A running inventory-worker process and its stock API.
#[derive(Debug)]
pub struct Worker {
    pub instance: String,
    pub process: ServiceProcess,
    pub inventory: InventoryApi,
}

/// One more running order-api process and its HTTP API (see [`Stack::add_order_api`]).
#[derive(Debug)]
pub struct OrderApiReplica {
    pub process: ServiceProcess,
    pub api: OrderApi,
}

#[derive(Debug)]
pub struct Stack<B: Broker = NatsServer> {
    pub nats: B,
    pub db: TestDatabase,
    pub api: OrderApi,
    pub order_api: ServiceProcess,
    /// order-apis added with [`Stack::add_order_api`], beside the first.
    pub more_order_apis: Vec<OrderApiReplica>,
    pub workers: Vec<Worker>,
    /// dlq-service, when started with [`Stack::start_with_dlq`].
    pub dlq: Option<Dlq>,
    /// dlq-services added with [`Stack::add_dlq`], beside the first.
    pub more_dlqs: Vec<Dlq>,
    env: Vec<(String, String)>,
}

/// A running dlq-service and its review API's base URL.
#[derive(Debug)]
pub struct Dlq {
    pub process: ServiceProcess,
    pub base_url: String,
}

impl Dlq {
    /// Its review API, as the test operator.
    pub fn api(&self) -> DeadLetterApi {
        DeadLetterApi::new(self.base_url.clone())
    }
}

impl Stack {
    /// Starts order-api and `workers` inventory-workers at the same moment (they create the
    /// database, migrate and declare the topology concurrently) and waits until all are ready.
    pub async fn start(workers: usize, extra_env: &[(&str, &str)]) -> Self {
        Self::start_services(NatsServer::start().await, TestDatabase::new(), workers, false, extra_env).await
    }

    /// Like [`Stack::start`], with dlq-service too.
    pub async fn start_with_dlq(workers: usize, extra_env: &[(&str, &str)]) -> Self {
        Self::start_services(NatsServer::start().await, TestDatabase::new(), workers, true, extra_env).await
    }

    /// Like [`Stack::start_with_dlq`], on a database of the caller's, e.g. one on a
    /// [`PostgresServer`](crate::PostgresServer) that the caller stops and starts.
    pub async fn start_with_dlq_on(db: TestDatabase, workers: usize, extra_env: &[(&str, &str)]) -> Self {
        Self::start_services(NatsServer::start().await, db, workers, true, extra_env).await
    }
}

impl Stack<NatsCluster> {
    /// order-api, `workers` inventory-workers and dlq-service on a three-node [`NatsCluster`]:
    /// each service is given every node in `NATS_URL`, and `STREAM_REPLICAS=3`.
    pub async fn start_on_cluster(workers: usize, extra_env: &[(&str, &str)]) -> Self {
        let mut env = vec![("STREAM_REPLICAS", "3")];
        env.extend_from_slice(extra_env);
        Self::start_services(NatsCluster::start().await, TestDatabase::new(), workers, true, &env).await
    }
}

impl<B: Broker> Stack<B> {
    async fn start_services(
        nats: B,
        db: TestDatabase,
        workers: usize,
        dlq: bool,
        extra_env: &[(&str, &str)],
    ) -> Self {
        crate::init_logging();
        db.provision().await;
        let (tokens, operator_tokens) = crate::http::OPERATOR_TOKENS;
        // The operator routes accept `http::OPERATOR_TOKEN` (a test may unset it in `extra_env`).
        let mut env: Vec<(String, String)> = vec![(tokens.into(), operator_tokens.into())];
        env.extend(QUICK_SETTINGS.iter().chain(extra_env).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));

        let api_port = free_port();
        let order_api = spawn_on_port("order-api", "order-api", (&nats, &db), &env, api_port);
        let mut stack = Self {
            nats,
            db,
            api: OrderApi::new(format!("http://127.0.0.1:{api_port}")),
            order_api,
            more_order_apis: Vec::new(),
            workers: Vec::new(),
            dlq: None,
            more_dlqs: Vec::new(),
            env,
        };
        for n in 1..=workers {
            stack.spawn_worker_process(&format!("worker-{n}"));
        }
        if dlq {
            stack.spawn_dlq_process();
        }
        let api_url = stack.api.base_url.clone();
        stack.order_api.wait_ready(&api_url).await;
        for worker in &mut stack.workers {
            let url = worker.inventory.base_url.clone();
            worker.process.wait_ready(&url).await;
        }
        stack.wait_dlq_ready().await;
        stack
    }

    fn spawn_dlq_process(&mut self) {
        self.dlq = Some(self.spawn_dlq("dlq-service", free_port()));
    }

    fn spawn_dlq(&self, name: &str, port: u16) -> Dlq {
        let process = spawn_on_port("dlq-service", name, (&self.nats, &self.db), &self.env, port);
        Dlq { process, base_url: format!("http://127.0.0.1:{port}") }
    }

    /// Starts one more dlq-service, sharing the capture consumer and the database with the
    /// first, and waits until it is ready.
    pub async fn add_dlq(&mut self) -> &Dlq {
        let name = format!("dlq-service-{}", self.more_dlqs.len() + 2);
        let mut dlq = self.spawn_dlq(&name, free_port());
        let url = dlq.base_url.clone();
        dlq.process.wait_ready(&url).await;
        self.more_dlqs.push(dlq);
        self.more_dlqs.last().expect("just added")
    }

    /// Starts one more order-api, sharing the outbox, the projection's durable consumer and the
    /// database with the first, and waits until it is ready. Returns its API.
    pub async fn add_order_api(&mut self) -> OrderApi {
        let port = free_port();
        let name = format!("order-api-{}", self.more_order_apis.len() + 2);
        let mut process = spawn_on_port("order-api", &name, (&self.nats, &self.db), &self.env, port);
        let api = OrderApi::new(format!("http://127.0.0.1:{port}"));
        process.wait_ready(&api.base_url).await;
        self.more_order_apis.push(OrderApiReplica { process, api: api.clone() });
        api
    }

    /// Every order-api's API: the first, then those added.
    pub fn order_apis(&self) -> Vec<OrderApi> {
        std::iter::once(&self.api).chain(self.more_order_apis.iter().map(|r| &r.api)).cloned().collect()
    }

    /// Every dlq-service: the first, then those added.
    pub fn dlqs(&self) -> impl Iterator<Item = &Dlq> {
        self.dlq.iter().chain(&self.more_dlqs)
    }

    async fn wait_dlq_ready(&mut self) {
        if let Some(dlq) = &mut self.dlq {
            let url = dlq.base_url.clone();
            dlq.process.wait_ready(&url).await;
        }
    }

    /// Starts dlq-service again (after its process was stopped or killed), same port.
    pub async fn restart_dlq(&mut self) {
        let dlq = self.dlq.take().expect("dlq-service was started");
        let url = dlq.base_url.clone();
        drop(dlq);
        self.dlq = Some(self.spawn_dlq("dlq-service", port_of(&url)));
        self.wait_dlq_ready().await;
    }

    /// Kills order-api (SIGKILL, like a crash), starts it again on the same port, and waits
    /// until it is ready.
    pub async fn restart_order_api(&mut self) {
        self.order_api.kill().await;
        let port = port_of(&self.api.base_url);
        self.order_api = spawn_on_port("order-api", "order-api", (&self.nats, &self.db), &self.env, port);
        let url = self.api.base_url.clone();
        self.order_api.wait_ready(&url).await;
    }

    /// Kills worker `index` (SIGKILL), starts it again with the same instance name, and waits
    /// until it is ready.
    pub async fn restart_worker(&mut self, index: usize) {
        let mut old = self.workers.remove(index);
        old.process.kill().await;
        let new = self.spawn_worker_process(&old.instance);
        let worker = self.workers.remove(new);
        self.workers.insert(index, worker);
        let worker = &mut self.workers[index];
        let url = worker.inventory.base_url.clone();
        worker.process.wait_ready(&url).await;
    }

    fn spawn_worker_process(&mut self, instance: &str) -> usize {
        self.spawn_worker_process_with(instance, &[])
    }

    fn spawn_worker_process_with(&mut self, instance: &str, extra_env: &[(&str, &str)]) -> usize {
        let port = free_port();
        let mut own = vec![("HTTP_ADDR", format!("127.0.0.1:{port}")), ("INSTANCE_ID", instance.to_owned())];
        own.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let process = spawn("inventory-worker", instance, (&self.nats, &self.db), &self.env, &own);
        self.workers.push(Worker {
            instance: instance.to_owned(),
            process,
            inventory: InventoryApi::new(format!("http://127.0.0.1:{port}")),
        });
        self.workers.len() - 1
    }

    /// Starts one more worker and waits until it is ready.
    pub async fn add_worker(&mut self, instance: &str) -> &Worker {
        self.add_worker_with(instance, &[]).await
    }

    /// Starts one more worker with settings of its own (e.g. `INVENTORY_FAILURE_RATE`).
    pub async fn add_worker_with(&mut self, instance: &str, extra_env: &[(&str, &str)]) -> &Worker {
        let index = self.spawn_worker_process_with(instance, extra_env);
        let worker = &mut self.workers[index];
        let url = worker.inventory.base_url.clone();
        worker.process.wait_ready(&url).await;
        &self.workers[index]
    }

    /// The stock API of the last worker started (any worker answers for the shared stock).
    pub fn inventory(&self) -> &InventoryApi {
        &self.workers.last().expect("a worker").inventory
    }

    /// A pool on the test database whose connections see every service's schema.
    pub async fn pool(&self) -> sqlx::PgPool {
        self.db.pool("order_api, inventory, dlq").await
    }

    /// Waits until no order is `pending` any more (each reached a final status).
    pub async fn wait_until_no_order_pending(&self, timeout: std::time::Duration) {
        let pool = self.pool().await;
        crate::wait_until("every order reaches a final status", timeout, || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM order_api.orders WHERE status = 'pending'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (pending == 0).then_some(())
        })
        .await;
    }

    /// JetStream on the stack's broker, as the administrator (any node of a cluster).
    pub async fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        let client = crate::nats::connect_as(self.nats.addresses(), NatsUser::Admin).await.ok()?;
        Some(async_nats::jetstream::new(client))
    }

    /// The shared worker consumer as JetStream reports it: (pending, ack pending).
    pub async fn worker_consumer_backlog(&self) -> Option<(u64, usize)> {
        let js = self.jetstream().await?;
        let stream = js.get_stream(contract::streams::ORDERS_STREAM).await.ok()?;
        let info = stream.consumer_info("inventory-worker").await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }
}

/// [`spawn`] with `HTTP_ADDR` on 127.0.0.1:`port` and nothing else of its own.
fn spawn_on_port(
    binary: &str,
    name: &str,
    servers: (&impl Broker, &TestDatabase),
    common: &[(String, String)],
    port: u16,
) -> ServiceProcess {
    spawn(binary, name, servers, common, &[("HTTP_ADDR", format!("127.0.0.1:{port}"))])
}

/// The port of `http://127.0.0.1:PORT`.
fn port_of(base_url: &str) -> u16 {
    base_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a base URL ending in a port")
}

/// Starts `binary` logged in as its own NATS user and Postgres role, with the stack's settings
/// and then its own.
fn spawn(
    binary: &str,
    name: &str,
    (nats, db): (&impl Broker, &TestDatabase),
    common: &[(String, String)],
    own: &[(&str, String)],
) -> ServiceProcess {
    let mut env: Vec<(&str, String)> = vec![
        ("NATS_URL", nats.url_as(NatsUser::of_service(binary))),
        ("DATABASE_URL", db.url_as(PgRole::of_service(binary))),
    ];
    env.extend(common.iter().map(|(k, v)| (k.as_str(), v.clone())));
    env.extend(own.iter().map(|(k, v)| (*k, v.clone())));
    ServiceProcess::spawn(binary, name, &env)
}
