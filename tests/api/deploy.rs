//! The deployment files under `deploy/`, the Dockerfile and compose file:
//! Prometheus' own checks of the scrape config and alert rules, a real
//! Prometheus scraping a live crablet, the metrics that dashboards and
//! alerts use, `docker-compose config`, and the image's health probe.
//!
//! Tests that need a tool (`promtool`, `prometheus`, `docker-compose`) skip
//! with a message when it is not installed; CI installs the Debian packages
//! `prometheus` and `docker-compose`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{event, free_port, spawn_app, TempDir, TestApp};
use crate::observability::{exported_families, scrape};

/// Metrics that dashboards and alerts use before the code that exports them
/// is in: the subscriptions' (`GET/POST /subscribe`). Allowed missing from
/// `/metrics`, nothing else is.
const EXPECTED_FROM_SUBSCRIPTIONS: &[&str] = &[];

/// The replicas' metrics: exported only by a server started with replicas
/// (`--replica-url`), which the test server is not. Allowed missing from its
/// `/metrics`; their alerts are unit-tested with promtool instead
/// (`deploy/prometheus/alerts.test.yml`).
const EXPECTED_FROM_REPLICAS: &[&str] = &[
    "crablet_replica_up",
    "crablet_replica_lag_positions",
    "crablet_replica_lag_seconds",
    "crablet_replica_requests_total",
    "crablet_replica_fallbacks_total",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` runs; prints why a test skips when it does not.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED {test}: `{tool}` is not installed (Debian: apt-get install prometheus docker-compose)");
    }
    found
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_scrape_config() {
    if !have(
        "promtool",
        "promtool_accepts_the_alert_rules_and_the_scrape_config",
    ) {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("alerts.yml")));
    assert!(ok, "promtool check rules:\n{out}");
    for config in ["prometheus.yml", "prometheus-replicas.yml"] {
        let (ok, out) = run(Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.join(config)));
        assert!(ok, "promtool check config {config}:\n{out}");
    }
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() {
    if !have("promtool", "promtool_unit_tests_of_the_alert_rules_pass") {
        return;
    }
    let tests = repo().join("deploy/prometheus/alerts.test.yml");
    let (ok, out) = run(Command::new("promtool").args(["test", "rules"]).arg(&tests));
    assert!(ok, "promtool test rules:\n{out}");
    // Every replica alert has a unit test.
    let unit_tests = std::fs::read_to_string(&tests).expect("alerts.test.yml");
    for alert in ["CrabletReplicaLagging", "CrabletReplicaDown"] {
        assert!(
            unit_tests.contains(&format!("alertname: {alert}")),
            "no unit test for {alert}"
        );
    }
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(http: &reqwest::Client, prometheus: &str, promql: &str) -> Option<Value> {
    let response = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?;
    response.json::<Value>().await.ok()
}

#[actix_rt::test]
async fn a_real_prometheus_scrapes_crablet_and_evaluates_every_alert_rule() {
    let test = "a_real_prometheus_scrapes_crablet_and_evaluates_every_alert_rule";
    if !have("prometheus", test) {
        return;
    }
    let app = spawn_app().await;
    let answer = app
        .append(json!({"events": [event("E", &["t"], "")]}))
        .await;
    assert!(answer.appended(), "{answer:?}");
    let target = app.address.trim_start_matches("http://");

    // The repository's rules, scraped from the test server every second.
    let dir = TempDir::new("prometheus");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: crablet\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules = repo().join("deploy/prometheus/alerts.yml").display()
    );
    std::fs::write(dir.0.join("prometheus.yml"), config).expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.0.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let _prometheus = Running(child);
    let prometheus = format!("http://127.0.0.1:{port}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some(answer) = query(&app.http, &prometheus, "crablet_build_info").await {
            let result = &answer["data"]["result"];
            if result.as_array().is_some_and(|r| !r.is_empty()) {
                seen = Some(result.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = || std::fs::read_to_string(dir.0.join("prometheus.log")).unwrap_or_default();
    let seen =
        seen.unwrap_or_else(|| panic!("Prometheus never saw crablet_build_info:\n{}", log()));
    assert_eq!(seen[0]["metric"]["job"], "crablet");
    assert_eq!(seen[0]["value"][1], "1");
    let events = query(&app.http, &prometheus, "crablet_events_appended_total")
        .await
        .expect("query");
    assert_eq!(events["data"]["result"][0]["value"][1], "1", "{events}");

    // Every rule loaded, and evaluated without error on crablet's series:
    // wait for evaluations (every second) that come after the first scrape.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rules = Vec::new();
    while Instant::now() < deadline {
        let answer: Value = app
            .http
            .get(format!("{prometheus}/api/v1/rules"))
            .send()
            .await
            .expect("rules")
            .json()
            .await
            .expect("rules JSON");
        rules = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rules.len() >= 5, "rules not loaded: {rules:?}\n{}", log());
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "rule {} failed: {rule}", rule["name"]);
    }
    // A healthy server fires nothing.
    let firing: Vec<_> = rules
        .iter()
        .flat_map(|r| r["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy server: {firing:?}"
    );
}

/// The metric names (`crablet_*`, `process_*`) in a PromQL text; histogram
/// series (`_bucket`, `_sum`, `_count`) are named by their family when
/// `families` has it.
fn metric_names(promql: &str, families: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in promql.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("crablet_") || word.starts_with("process_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = word.strip_suffix(suffix)?;
                    families.contains(base).then(|| base.to_string())
                })
                .unwrap_or_else(|| word.clone());
            names.insert(family);
        }
        word.clear();
    }
    names
}

/// Every `expr` of a dashboard.
fn dashboard_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_expressions(v, out)),
        _ => {}
    }
}

/// Touches appends (accepted and rejected) and reads so every family has a series.
async fn exercise(app: &TestApp) {
    let condition = json!({"failIfEventsMatch": {"items": [{"tags": ["k"]}]}});
    for _ in 0..2 {
        app.append(json!({"events": [event("E", &["k"], "")], "condition": condition}))
            .await;
    }
    app.read_all().await;
}

#[actix_rt::test]
async fn every_metric_a_dashboard_panel_or_an_alert_uses_is_exported() {
    let app = spawn_app().await;
    exercise(&app).await;
    let exported = exported_families(&scrape(&app).await);

    let mut used: Vec<(String, String)> = Vec::new();
    let dashboards = repo().join("deploy/grafana/dashboards");
    let mut panels = 0;
    for entry in std::fs::read_dir(&dashboards).expect("dashboards") {
        let path = entry.expect("entry").path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut expressions = Vec::new();
        dashboard_expressions(&dashboard, &mut expressions);
        panels += dashboard["panels"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["type"] != "row").count());
        for expr in expressions {
            for name in metric_names(&expr, &exported) {
                used.push((name, path.display().to_string()));
            }
        }
    }
    assert!(panels >= 10, "too few dashboard panels: {panels}");
    let alerts =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    for name in metric_names(&alerts, &exported) {
        used.push((name, "deploy/prometheus/alerts.yml".into()));
    }
    let names: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "crablet_append_duration_seconds",
        "crablet_pool_connections",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found in {names:?}"
        );
    }

    let unknown: Vec<_> = used
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .filter(|(name, _)| !EXPECTED_FROM_SUBSCRIPTIONS.contains(&name.as_str()))
        .filter(|(name, _)| !EXPECTED_FROM_REPLICAS.contains(&name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics used but not exported by crablet: {unknown:?}"
    );
}

#[test]
fn docker_compose_accepts_the_stack_and_every_service_has_a_health_check_and_a_restart_policy() {
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose");
    let services = ["postgres", "crablet", "prometheus", "grafana"];
    assert_eq!(
        compose.matches("\n    healthcheck:").count(),
        services.len()
    );
    assert_eq!(
        compose.matches("\n    restart: unless-stopped").count(),
        services.len()
    );
    for volume in ["pgdata:", "prometheus:", "grafana:"] {
        assert!(
            compose.contains(&format!("\n  {volume}")),
            "volume {volume}"
        );
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target/", "data/", ".git"] {
        assert!(ignored.contains(&must), ".dockerignore must exclude {must}");
    }

    let test = "docker_compose_accepts_the_stack";
    if !have("docker-compose", test) {
        return;
    }
    let (ok, out) = run(Command::new("docker-compose")
        .current_dir(repo())
        .args(["config"]));
    assert!(ok, "docker-compose config:\n{out}");
    for service in services {
        assert!(
            out.contains(&format!("\n  {service}:\n")),
            "service {service}:\n{out}"
        );
    }
}

/// The block of service `name` in `docker-compose config` output (two-space
/// indented service names under `services:`), without its first line.
fn service_block<'a>(config: &'a str, name: &str) -> Option<&'a str> {
    let start = config.find(&format!("\n  {name}:\n"))? + name.len() + 5;
    let rest = &config[start..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let line = &rest[i..];
            !line.starts_with("   ") && !line.is_empty()
        })
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The `targets` of the static scrape configs of a Prometheus config file.
fn scrape_targets(config: &str) -> BTreeSet<String> {
    config
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- targets:"))
        .flat_map(|list| {
            list.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|t| t.trim().trim_matches('"').to_string())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_replicas_stack_adds_a_replica_a_pooler_and_two_crablet_processes_all_scraped() {
    let file = "docker-compose.replicas.yml";
    let text = std::fs::read_to_string(repo().join(file)).expect("replicas compose file");
    // The services it adds: each with a health check and a restart policy.
    let added = ["postgres-replica", "pgbouncer", "crablet-2"];
    assert_eq!(text.matches("\n    healthcheck:").count(), added.len());
    assert_eq!(
        text.matches("\n    restart: unless-stopped").count(),
        added.len()
    );
    assert!(text.contains("\n  pgdata-replica:"), "replica volume");
    for script in ["primary-replication.sh", "replica-entrypoint.sh"] {
        assert!(
            repo().join("deploy/postgres").join(script).is_file(),
            "deploy/postgres/{script}"
        );
    }
    let entrypoint = std::fs::read_to_string(repo().join("deploy/postgres/replica-entrypoint.sh"))
        .expect("replica entrypoint");
    assert!(entrypoint.contains("pg_basebackup") && entrypoint.contains(" -R "));
    assert!(entrypoint.contains("hot_standby=on"));
    let pgbouncer = std::fs::read_to_string(repo().join("deploy/pgbouncer/pgbouncer.ini"))
        .expect("pgbouncer.ini");
    assert!(pgbouncer.contains("\npool_mode = transaction\n"));

    let prometheus_config = "prometheus-replicas.yml";
    let targets = scrape_targets(
        &std::fs::read_to_string(repo().join("deploy/prometheus").join(prometheus_config))
            .expect("prometheus config"),
    );

    let test = "the_replicas_stack_adds_a_replica_a_pooler_and_two_crablet_processes_all_scraped";
    if !have("docker-compose", test) {
        return;
    }
    let (ok, out) = run(Command::new("docker-compose").current_dir(repo()).args([
        "-f",
        "docker-compose.yml",
        "-f",
        file,
        "config",
    ]));
    assert!(ok, "docker-compose config:\n{out}");
    let services = [
        "postgres",
        "postgres-replica",
        "pgbouncer",
        "crablet",
        "crablet-2",
        "prometheus",
        "grafana",
    ];
    for service in services {
        let block = service_block(&out, service).unwrap_or_else(|| panic!("{service}:\n{out}"));
        assert!(block.contains("\n    healthcheck:"), "{service}: {block}");
        assert!(block.contains("\n    restart: unless-stopped"), "{service}");
    }
    let primary = service_block(&out, "postgres").expect("postgres");
    for setting in ["wal_level=replica", "max_wal_senders="] {
        assert!(primary.contains(setting), "primary: {setting}");
    }

    // Every crablet process: through PgBouncer in transaction mode, the log
    // followed directly on the primary, reads from the replica; and scraped.
    let crablets: Vec<&str> = services
        .into_iter()
        .filter(|s| service_block(&out, s).is_some_and(|b| b.contains("image: crablet:")))
        .collect();
    assert_eq!(crablets, ["crablet", "crablet-2"]);
    for service in &crablets {
        let block = service_block(&out, service).expect("crablet service");
        for line in [
            "DATABASE_URL: postgres://crablet:crablet@pgbouncer:5432/crablet",
            "CRABLET_DATABASE_POOLER: transaction",
            "CRABLET_LISTEN_DATABASE_URL: postgres://crablet:crablet@postgres:5432/crablet",
            "CRABLET_REPLICA_URLS: postgres://crablet:crablet@postgres-replica:5432/crablet",
        ] {
            assert!(block.contains(line), "{service} lacks {line}:\n{block}");
        }
        assert!(
            targets.contains(&format!("{service}:8080")),
            "Prometheus does not scrape {service}: {targets:?}"
        );
    }
    let prometheus = service_block(&out, "prometheus").expect("prometheus");
    assert!(
        prometheus.contains(&format!(
            "--config.file=/etc/prometheus/{prometheus_config}"
        )),
        "{prometheus}"
    );
}

/// The image's `HEALTHCHECK` command, from the Dockerfile, with the port
/// replaced by `port`.
fn dockerfile_health_command(port: u16) -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK line");
    let json = &line[line.find("CMD").expect("CMD") + 3..];
    let command: Vec<String> = serde_json::from_str(json.trim()).expect("exec-form CMD");
    command
        .into_iter()
        .map(|arg| arg.replace(":8080", &format!(":{port}")))
        .collect()
}

#[actix_rt::test]
async fn the_image_health_check_passes_against_a_live_server_and_fails_against_a_dead_port() {
    let app = spawn_app().await;
    let port: u16 = app
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let binary = env!("CARGO_BIN_EXE_crablet");
    let health = |args: Vec<String>| {
        let mut command = Command::new(binary);
        command.args(&args[1..]);
        assert_eq!(args[0], "crablet");
        async move {
            actix_web::rt::task::spawn_blocking(move || run(&mut command))
                .await
                .expect("join")
        }
    };

    let command = dockerfile_health_command(port);
    assert!(command.contains(&"health".to_string()), "{command:?}");
    let (ok, out) = health(command).await;
    assert!(ok, "health against a live server failed: {out}");
    let mut live = dockerfile_health_command(port);
    live.push("--live".into());
    let (ok, out) = health(live).await;
    assert!(ok, "liveness against a live server failed: {out}");

    let dead = free_port();
    let (ok, out) = health(dockerfile_health_command(dead)).await;
    assert!(!ok, "health against a dead port succeeded: {out}");
    // A server that answers, but not 200, fails too.
    let mut not_found = dockerfile_health_command(port);
    let url = not_found
        .iter_mut()
        .find(|a| a.starts_with("http://"))
        .expect("--url");
    url.push_str("/nowhere");
    let (ok, out) = health(not_found).await;
    assert!(!ok && out.contains("404"), "{out}");
}
