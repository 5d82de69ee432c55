//! compose.yaml, checked without a container engine: against the compose specification, and
//! against the code it deploys (variables, ports, health paths, binaries, metric names in the
//! dashboard). These run in seconds with every `scripts/test`; `scripts/test-compose` runs the
//! file for real and checks the running system. compose.cluster.yaml, the overlay for a NATS
//! cluster, is checked the same way (the specification, its routes, every service's settings);
//! nothing runs it yet.
#![allow(clippy::unwrap_used)] // A test that cannot go on should panic, loudly.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
};

use serde_json::Value;
use shared::config::Env;
use test_support::{metrics::scrape, stack::Stack, workspace_root};

const SERVICES: [&str; 3] = ["order-api", "inventory-worker", "dlq-service"];

fn read(path: &str) -> String {
    let path: PathBuf = workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A YAML file as JSON, with its `<<` merge keys applied, as compose applies them, and its
/// `!reset` and `!override` tags read as compose reads them in an override file (the key left
/// out; the value as written).
fn yaml(path: &str) -> Value {
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(path)).unwrap();
    value.apply_merge().unwrap();
    serde_json::to_value(untagged(value)).unwrap()
}

fn untagged(value: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::Tagged(tagged) => untagged(tagged.value),
        Yaml::Sequence(items) => Yaml::Sequence(items.into_iter().map(untagged).collect()),
        Yaml::Mapping(map) => Yaml::Mapping(
            map.into_iter()
                .filter(|(_, v)| !matches!(v, Yaml::Tagged(t) if t.tag == "reset"))
                .map(|(k, v)| (k, untagged(v)))
                .collect(),
        ),
        other => other,
    }
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

fn environment(service: &Value) -> HashMap<String, String> {
    service["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(&v.as_str().map_or_else(|| v.to_string(), str::to_owned))))
        .collect()
}

/// A value as compose sees it with nothing set in the shell: each `${NAME:-default}` in it is
/// `default` (e.g. the password in `postgres://order_api:${ORDER_API_DB_PASSWORD:-demo}@…`).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else { break };
        let expr = &rest[start + 2..start + len];
        out.push_str(&rest[..start]);
        out.push_str(expr.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Loads service `name`'s configuration from `env`, as it does at start-up.
fn load_config(name: &str, env: &Env) -> Result<(), String> {
    match name {
        "order-api" => order_api::Config::from_env(env).map(drop).map_err(|e| e.to_string()),
        "inventory-worker" => inventory_worker::Config::from_env(env).map(drop).map_err(|e| e.to_string()),
        _ => dlq_service::Config::from_env(env).map(drop).map_err(|e| e.to_string()),
    }
}

fn port_of(env: &HashMap<String, String>) -> u16 {
    env["HTTP_ADDR"].rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn both_compose_files_are_valid_against_the_compose_specification() {
    let schema: Value = serde_json::from_str(&read(".ci/compose-spec.schema.json")).unwrap();
    // The copy in .ci/ is the one the project was given; keep it in step when that one is near.
    let given = workspace_root().join("../shared/compose-spec.schema.json");
    if let Ok(text) = std::fs::read_to_string(given) {
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            schema,
            ".ci/compose-spec.schema.json is stale"
        );
    }
    let validator = jsonschema::validator_for(&schema).unwrap();
    for file in ["compose.yaml", "compose.cluster.yaml"] {
        let compose = yaml(file);
        let errors: Vec<String> =
            validator.iter_errors(&compose).map(|e| format!("{} (at {})", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{file} breaks the compose specification:\n{}", errors.join("\n"));
    }
}

#[test]
fn every_variable_compose_sets_for_a_service_is_one_the_service_reads_and_accepts() {
    let compose = yaml("compose.yaml");
    // Read by `telemetry::init` through tracing-subscriber, not through `Env`.
    let read_by_the_log_setup = ["RUST_LOG", "LOG_FORMAT"];
    for name in SERVICES {
        let env_map = environment(service(&compose, name));
        let (env, asked) = Env::recording(env_map.clone());
        load_config(name, &env).unwrap_or_else(|e| panic!("{name} refuses compose's settings: {e}"));
        shared::telemetry::export_from_env(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
        let asked = asked.lock().unwrap();
        for variable in env_map.keys() {
            assert!(
                asked.contains(variable) || read_by_the_log_setup.contains(&variable.as_str()),
                "compose.yaml sets {variable} for {name}, which {name} never reads"
            );
        }
    }
}

#[test]
fn compose_gives_the_services_with_operator_routes_a_token_and_never_turns_authentication_off() {
    let compose = yaml("compose.yaml");
    for name in ["inventory-worker", "dlq-service"] {
        let env = Env::from_map(environment(service(&compose, name)));
        let auth = match name {
            "inventory-worker" => inventory_worker::Config::from_env(&env).unwrap().operator_auth,
            _ => dlq_service::Config::from_env(&env).unwrap().operator_auth,
        };
        auth.ensure_configured().unwrap_or_else(|e| panic!("{name} would refuse to start: {e}"));
        assert!(!auth.is_disabled(), "{name}: authentication must stay on");
        assert_eq!(auth.operators(), ["demo"], "{name}: the demo operator the README's curl lines use");
    }
}

#[test]
fn the_load_generator_is_configured_only_with_variables_its_command_line_reads() {
    use clap::{CommandFactory, Parser};
    let compose = yaml("compose.yaml");
    let known: BTreeSet<String> = loadgen::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let loadgen = service(&compose, "loadgen");
    for variable in environment(loadgen).keys() {
        assert!(
            known.contains(variable),
            "compose.yaml sets {variable} for loadgen, which loadgen never reads"
        );
    }
    let mut args = vec!["loadgen".to_owned()];
    args.extend(loadgen["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()));
    loadgen::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("loadgen refuses compose's command: {e}"));
}

#[test]
fn ports_and_healthchecks_match_what_each_service_listens_on_and_serves() {
    let compose = yaml("compose.yaml");
    let prometheus = read("monitoring/prometheus.yml");
    for name in SERVICES {
        let service = service(&compose, name);
        let port = port_of(&environment(service));
        let check = service["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect::<Vec<_>>();
        assert!(
            check.contains(&format!("http://localhost:{port}/readyz").as_str()),
            "{name}'s healthcheck {check:?}"
        );
        for published in service["ports"].as_array().into_iter().flatten() {
            let container_port = published.as_str().unwrap().rsplit(':').next().unwrap();
            assert_eq!(container_port, port.to_string(), "{name} publishes a port it does not listen on");
        }
        // Prometheus scrapes each service where it listens.
        assert!(
            prometheus.contains(&format!("{name}:{port}")) || prometheus.contains(&format!("port: {port}")),
            "monitoring/prometheus.yml does not scrape {name} on {port}"
        );
    }
}

/// A service waited on with `condition: service_healthy` must have a healthcheck that can run,
/// or compose waits forever. Every service has one, except those listed here with the reason.
#[test]
fn start_up_waits_only_on_healthchecks_that_exist() {
    let without_healthcheck = [
        ("loadgen", "a one-shot job: it runs its burst and exits"),
        ("db-provision", "a one-shot job: the services wait for it to complete successfully"),
    ];
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().unwrap();
    let has_check = |name: &str| {
        let check = &services[name]["healthcheck"];
        check["disable"] != true && check["test"].as_array().is_some_and(|t| !t.is_empty())
    };
    for (name, service) in services {
        let excused = without_healthcheck.iter().any(|(n, _)| n == name);
        assert!(has_check(name) != excused, "{name}: healthcheck present = {}", has_check(name));
        for (dependency, how) in service["depends_on"].as_object().into_iter().flatten() {
            assert!(services.contains_key(dependency), "{name} depends on unknown {dependency}");
            if how["condition"] == "service_healthy" {
                assert!(
                    has_check(dependency),
                    "{name} waits for {dependency} to be healthy, but {dependency} has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_and_ships_every_binary_compose_runs() {
    let compose = yaml("compose.yaml");
    let dockerfile = read("Dockerfile");
    let binaries: BTreeSet<String> = compose["services"]
        .as_object()
        .unwrap()
        .values()
        .filter(|s| s["image"] == "orders-demo:local")
        .map(|s| s["entrypoint"][0].as_str().or(s["command"][0].as_str()).unwrap().to_owned())
        .collect();
    assert!(binaries.len() >= 4, "{binaries:?}");
    for binary in &binaries {
        assert!(
            dockerfile.matches(&format!("-p {binary}")).count() >= 2,
            "the Dockerfile does not build {binary}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/{binary}")),
            "the image does not ship {binary}"
        );
        // And it is one of the workspace's binaries (scripts/test builds them all).
        test_support::process::binary_path(binary);
    }
    // The dependency layer needs every workspace member's manifest.
    for entry in std::fs::read_dir(workspace_root().join("crates")).unwrap() {
        let crate_name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            dockerfile.contains(&format!("COPY crates/{crate_name}/Cargo.toml crates/{crate_name}/")),
            "the Dockerfile's dependency layer misses crates/{crate_name}/Cargo.toml"
        );
    }
}

/// Metric names in a PromQL expression: identifiers not followed by `(` (functions), outside
/// `{…}` (label matchers) and `by (…)` (grouping labels).
fn metric_names(expr: &str) -> Vec<String> {
    let mut cleaned = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let cleaned = cleaned.replace("by (", "by(");
    let mut names = Vec::new();
    let mut rest = cleaned.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        let word = &tail[..end];
        let after = tail[end..].trim_start();
        let grouping = rest[..start].trim_end().ends_with("by(");
        if !after.starts_with('(') && !grouping && word.contains('_') {
            names.push(word.to_owned());
        }
        rest = &tail[end..];
        if grouping {
            rest = rest.split_once(')').map_or("", |(_, r)| r);
        }
    }
    names
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_services_export() {
    let dashboard: Value =
        serde_json::from_str(&read("monitoring/grafana/dashboards/orders-pipeline.json")).unwrap();
    let datasource = read("monitoring/grafana/provisioning/datasources/prometheus.yaml");

    // What the services really export, after some traffic of every kind.
    let stack = Stack::start_with_dlq(1, &[("LAG_POLL_INTERVAL", "100ms")]).await;
    let id = stack.api.place_ok("c-1", &[("FAIL-1", 1)], None).await;
    stack.api.place_ok("c-2", &[("WIDGET-1", 1)], None).await;
    let refused = stack.api.place(&test_support::http::order_body("", &[("WIDGET-1", 1)]), None).await;
    assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    test_support::wait_until(
        "the failing order is dead-lettered",
        std::time::Duration::from_secs(60),
        || async { (stack.api.status_of(&id).await.as_deref() == Some("dead_lettered")).then_some(()) },
    )
    .await;
    let mut exported = BTreeSet::new();
    let urls = [
        stack.api.base_url.clone(),
        stack.workers[0].inventory.base_url.clone(),
        stack.dlq.as_ref().unwrap().base_url.clone(),
    ];
    for url in urls {
        exported.extend(scrape(&url).await.samples.into_iter().map(|s| s.metric));
    }
    // The exporter's names are its own: a service's series under one of them would be returned
    // by the same query, with other label names.
    let clashing: Vec<_> = exported.iter().filter(|name| name.starts_with("jetstream_")).collect();
    assert!(clashing.is_empty(), "services export the NATS exporter's names: {clashing:?}");
    // From the NATS exporter, which compose runs beside NATS.
    exported.insert("jetstream_stream_total_messages".to_owned());

    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "prometheus");
            assert!(datasource.contains("uid: prometheus"));
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name.clone(), |n, s| n.strip_suffix(s).map_or(n.clone(), str::to_owned));
                assert!(
                    exported.contains(&name) || exported.contains(&base),
                    "panel {:?} queries {name}, which nothing exports",
                    panel["title"]
                );
                queries += 1;
            }
        }
    }
    assert!(queries > 10, "{queries} metric references found");
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(r#"histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{job="a",b=~"c"}[1m])))"#),
        ["x_seconds_bucket"]
    );
    assert_eq!(
        metric_names("sum by (reason) (rate(orders_refused_total[1m])) / outbox_pending_messages"),
        ["orders_refused_total", "outbox_pending_messages"]
    );
}

/// Each service logs in as its own NATS user and Postgres role, whose passwords are the ones the
/// nats-server and `scripts/provision-db` are given; NATS runs the repository's configuration.
#[test]
fn each_service_logs_in_as_its_own_user_and_role_with_the_passwords_the_servers_are_given() {
    let compose = yaml("compose.yaml");
    let nats = service(&compose, "nats");
    let nats_env = environment(nats);
    let provision_env = environment(service(&compose, "db-provision"));
    assert!(
        nats["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().starts_with("./deploy/nats/nats-server.conf:")),
        "nats runs the repository's configuration"
    );
    for (name, user) in
        [("order-api", "order_api"), ("inventory-worker", "inventory_worker"), ("dlq-service", "dlq_service")]
    {
        let env = environment(service(&compose, name));
        let prefix = user.to_uppercase();
        let nats_password = &nats_env[&format!("{prefix}_NATS_PASSWORD")];
        assert_eq!(env["NATS_URL"], format!("nats://{user}:{nats_password}@nats:4222"), "{name}");
        let db_password = &provision_env[&format!("{prefix}_DB_PASSWORD")];
        assert_eq!(
            env["DATABASE_URL"],
            format!("postgres://{user}:{db_password}@postgres:5432/orders"),
            "{name}"
        );
        assert_eq!(
            service(&compose, name)["depends_on"]["db-provision"]["condition"],
            "service_completed_successfully"
        );
    }
}

/// The NATS nodes of compose.cluster.yaml: compose service name → node name.
const CLUSTER_NODES: [(&str, &str); 3] = [("nats", "n1"), ("nats-2", "n2"), ("nats-3", "n3")];

/// A node's command-line flag value (`-n n1` → `n1`).
fn flag<'a>(command: &'a [Value], name: &str) -> &'a str {
    let at = command.iter().position(|a| a == name).unwrap_or_else(|| panic!("no {name} in {command:?}"));
    command[at + 1].as_str().unwrap()
}

#[test]
fn the_cluster_file_routes_every_nats_node_to_the_two_others_with_the_repository_configuration() {
    let cluster = yaml("compose.cluster.yaml");
    for (node, name) in CLUSTER_NODES {
        let command = service(&cluster, node)["command"].as_array().unwrap().clone();
        assert_eq!(
            command[..2],
            ["-c", "/etc/nats/orders.conf"],
            "{node} runs the repository's configuration"
        );
        assert_eq!(flag(&command, "-n"), name);
        assert_eq!(flag(&command, "--cluster"), "nats://0.0.0.0:6222", "{node}");
        let mut routes: Vec<&str> = flag(&command, "--routes").split(',').collect();
        routes.sort_unstable();
        let mut others: Vec<String> = CLUSTER_NODES
            .iter()
            .filter(|(other, _)| *other != node)
            .map(|(other, _)| format!("nats-route://{other}:6222"))
            .collect();
        others.sort();
        assert_eq!(routes, others, "{node} is routed to the two others");
    }
}

#[test]
fn in_the_cluster_file_every_service_is_given_every_node_as_its_own_user_at_three_replicas_and_accepts_it() {
    let base = yaml("compose.yaml");
    let cluster = yaml("compose.cluster.yaml");
    for (name, replica) in
        [("order-api", "order-api-2"), ("inventory-worker", ""), ("dlq-service", "dlq-service-2")]
    {
        let base_env = environment(service(&base, name));
        for in_cluster in [name, replica].into_iter().filter(|n| !n.is_empty()) {
            let overrides = environment(service(&cluster, in_cluster));
            let first_node = base_env["NATS_URL"].clone();
            let mut every_node = vec![first_node];
            every_node.extend(["nats://nats-2:4222".to_owned(), "nats://nats-3:4222".to_owned()]);
            assert_eq!(overrides["NATS_URL"], every_node.join(","), "{in_cluster}: its own user, every node");
            assert_eq!(overrides["STREAM_REPLICAS"], "3", "{in_cluster}");
            let mut env_map = base_env.clone();
            env_map.extend(overrides);
            let env = Env::recording(env_map).0;
            load_config(name, &env)
                .unwrap_or_else(|e| panic!("{in_cluster} refuses the cluster's settings: {e}"));
            for node in ["nats-2", "nats-3"] {
                assert_eq!(
                    service(&cluster, in_cluster)["depends_on"][node]["condition"],
                    "service_healthy",
                    "{in_cluster} waits for {node}"
                );
            }
        }
    }
}
