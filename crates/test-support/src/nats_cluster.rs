//! Three nats-servers of the pinned version routed into one cluster on loopback, JetStream on,
//! with the repository's users: each node is started with `-c deploy/nats/nats-server.conf`
//! (the file compose and run-local use, unchanged) plus flags for what makes it a node of a
//! cluster: its name (`-n`), the cluster's name, its route port and the routes to the others.
//! Nodes can be killed (SIGKILL) and started again on the same ports and store, to prove what
//! a replicated stream survives.

use std::{path::PathBuf, process::Child, time::Duration};

use async_nats::jetstream::{self, stream};
use tempfile::TempDir;

use crate::{
    NatsUser, free_port, log_dir,
    nats::{config_file, spawn_server},
    wait_until,
};

/// The name nodes give their cluster.
const CLUSTER_NAME: &str = "orders-test";

/// One node: its ports, store and process.
#[derive(Debug)]
struct Node {
    /// The server's name (`n1`…): what stream info reports as a leader.
    name: String,
    port: u16,
    cluster_port: u16,
    store: TempDir,
    log: PathBuf,
    child: Option<Child>,
}

/// Three routed nats-servers, killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    pub const SIZE: usize = 3;

    /// Starts three nodes and waits until the cluster can keep a stream at three replicas
    /// (every node is known to the JetStream meta leader).
    pub async fn start() -> Self {
        let nodes = (1..=Self::SIZE)
            .map(|n| {
                let port = free_port();
                Node {
                    name: format!("n{n}"),
                    port,
                    cluster_port: free_port(),
                    store: tempfile::Builder::new().prefix("nats-cluster-").tempdir().expect("temp dir"),
                    log: log_dir().join(format!("nats-cluster-n{n}-{port}.log")),
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes };
        for index in 0..Self::SIZE {
            cluster.spawn(index);
        }
        let addresses = cluster.addresses();
        wait_until("the cluster keeps a stream at three replicas", Duration::from_secs(30), || async {
            let probe = quick_jetstream(addresses.clone()).await?;
            let config = stream::Config {
                name: "cluster_probe".to_owned(),
                subjects: vec!["cluster_probe".to_owned()],
                num_replicas: Self::SIZE,
                ..Default::default()
            };
            probe.create_stream(config).await.ok()?;
            probe.delete_stream("cluster_probe").await.ok()
        })
        .await;
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, node)| format!("nats-route://127.0.0.1:{}", node.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "node {} is already running", node.name);
        let flags = [
            "-n",
            &node.name,
            "--cluster_name",
            CLUSTER_NAME,
            "--cluster",
            &format!("nats://127.0.0.1:{}", node.cluster_port),
            "--routes",
            &routes,
        ]
        .map(str::to_owned);
        let child = spawn_server(&config_file(), node.port, &flags, node.store.path(), &node.log);
        node.child = Some(child);
    }

    /// The nodes' client addresses, without credentials.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("nats://127.0.0.1:{}", node.port)).collect()
    }

    /// `NATS_URL` for `user`: every node, comma-separated, each with the user and password.
    pub fn url_as(&self, user: NatsUser) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://{}:{}@127.0.0.1:{}", user.name(), user.password(), node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The name of node `index` (`n1`, `n2`, `n3`).
    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// A client logged in as `admin` to whichever node answers (it reconnects to another).
    pub async fn client(&self) -> async_nats::Client {
        crate::nats::connect_as(self.addresses(), NatsUser::Admin).await.expect("connect to the test cluster")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// Kills node `index` (SIGKILL), as a crashed machine would stop.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts node `index` again on its ports and store, and waits until it answers JetStream
    /// requests itself.
    pub async fn restart(&mut self, index: usize) {
        self.spawn(index);
        let address = format!("nats://127.0.0.1:{}", self.nodes[index].port);
        wait_until("the restarted node answers JetStream requests", Duration::from_secs(30), || async {
            let client = crate::nats::connect_as(address.as_str(), NatsUser::Admin).await.ok()?;
            jetstream::new(client).query_account().await.ok()
        })
        .await;
    }

    /// Which node leads `stream` now, if any (none while its replicas elect one, or when no
    /// node answers within a second). Asks the nodes that run, on a connection of its own.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        let running = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>();
        let js = quick_jetstream(running).await?;
        let info = js.get_stream(stream).await.ok()?.info().await.ok()?.clone();
        let leader = info.cluster?.leader?;
        self.nodes.iter().position(|node| node.name == leader)
    }
}

/// A JetStream context as `admin` on `addresses` whose requests give up after a second: a
/// request sent while the cluster has no meta leader goes unanswered, and polling is quicker
/// than the default timeout of ten seconds.
async fn quick_jetstream(addresses: Vec<String>) -> Option<jetstream::Context> {
    let client = crate::nats::connect_as(addresses, NatsUser::Admin).await.ok()?;
    Some(jetstream::ContextBuilder::new().timeout(Duration::from_secs(1)).build(client))
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
