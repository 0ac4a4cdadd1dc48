//! Crashes under load: a `crablet serve` process killed with SIGKILL, and
//! PostgreSQL stopped with `pg_ctl stop -m immediate`, each with the embedded
//! cluster (`crablet serve --data-dir`) and with an external one. Afterwards
//! every acknowledged append is in the store exactly once and no append is
//! partial: all its events or none, at consecutive positions. Violations are
//! counted and asserted zero.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crablet::dcb::SequencedEvent;
use crablet::embedded::EmbeddedPostgres;
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{
    client, event, fresh_database, get_read, spawn_embedded_process, spawn_process, unless_tagged,
    OwnCluster,
};

/// Clients appending at once.
const CLIENTS: usize = 16;
/// Load before the crash.
const LOAD_BEFORE_CRASH: Duration = Duration::from_millis(1500);
/// Clients go on sending this long after the crash.
const LOAD_AFTER_CRASH: Duration = Duration::from_millis(300);

/// An append the server acknowledged.
struct Acked {
    /// `<client>:<sequence>`, the prefix of its events' data.
    id: String,
    events: usize,
    last_position: i64,
}

/// 16 clients append (1 to 3 events each time; every third append with a
/// condition) until a little after `crash` has run; returns the
/// acknowledged appends.
async fn load_then(address: &str, crash: impl Future<Output = ()>) -> Vec<Acked> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..CLIENTS).map(|c| {
        let (stop, address, http) = (stop.clone(), address.to_owned(), client());
        async move {
            let mut acked = Vec::new();
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let id = format!("{c}:{seq}");
                let events = 1 + seq % 3;
                let tag = format!("append:{id}");
                let body_events: Vec<_> = (0..events)
                    .map(|k| {
                        event(
                            "Crash",
                            &[&tag, &format!("client:{c}")],
                            &format!("{id}:{k}:{events}"),
                        )
                    })
                    .collect();
                let mut body = json!({ "events": body_events });
                if seq.is_multiple_of(3) {
                    body["condition"] = unless_tagged(&[&tag], None);
                }
                let answer = match http
                    .post(format!("{address}/append"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.ok(),
                    _ => None,
                };
                match answer {
                    Some(body) if body["appendConditionFailed"] == json!(false) => {
                        acked.push(Acked {
                            id,
                            events,
                            last_position: body["lastPosition"].as_i64().unwrap_or(-1),
                        })
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            acked
        }
    });
    let crasher = async {
        tokio::time::sleep(LOAD_BEFORE_CRASH).await;
        crash.await;
        tokio::time::sleep(LOAD_AFTER_CRASH).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (acked, ()) = futures_util::join!(join_all(clients), crasher);
    acked.into_iter().flatten().collect()
}

/// Reads the whole store through `address`, retrying while it is not yet
/// serving again.
async fn read_store(address: &str) -> Vec<SequencedEvent> {
    let http = client();
    for _ in 0..100 {
        let ready = http
            .get(format!("{address}/read"))
            .query(&[("query", r#"{"items":[]}"#), ("options", r#"{"limit":1}"#)])
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return get_read(&http, address, &json!({"items": []}), &json!({})).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{address} did not serve reads again");
}

/// Every violation of "each acknowledged append exactly once, no partial append".
fn violations(acked: &[Acked], stored: &[SequencedEvent]) -> Vec<String> {
    // id -> (events it says it has, positions of its events by index k)
    let mut appends: BTreeMap<String, (usize, BTreeMap<usize, Vec<i64>>)> = BTreeMap::new();
    let mut bad = Vec::new();
    for e in stored.iter().filter(|e| e.event_type == "Crash") {
        let parts: Vec<&str> = e.data.split(':').collect();
        let parsed = match parts.as_slice() {
            [c, s, k, n] => k
                .parse::<usize>()
                .ok()
                .zip(n.parse::<usize>().ok())
                .map(|(k, n)| (format!("{c}:{s}"), k, n)),
            _ => None,
        };
        let Some((id, k, n)) = parsed else {
            bad.push(format!("unparsable event data {:?}", e.data));
            continue;
        };
        let entry = appends.entry(id).or_insert((n, BTreeMap::new()));
        entry.1.entry(k).or_default().push(e.position);
    }
    for (id, (n, by_k)) in &appends {
        let positions: Vec<i64> = (0..*n)
            .filter_map(|k| match by_k.get(&k).map(Vec::as_slice) {
                Some([p]) => Some(*p),
                _ => None,
            })
            .collect();
        let consecutive = positions.windows(2).all(|w| w[1] == w[0] + 1);
        if positions.len() != *n || by_k.len() != *n || !consecutive {
            bad.push(format!(
                "append {id} stored partially or twice: {by_k:?} of {n}"
            ));
        }
    }
    for a in acked {
        match appends.get(&a.id) {
            None => bad.push(format!("acknowledged append {} is missing", a.id)),
            Some((n, by_k)) => {
                let last = by_k.get(&(n - 1)).and_then(|p| p.first()).copied();
                if *n != a.events || last != Some(a.last_position) {
                    bad.push(format!(
                        "acknowledged append {} ended at {} but is stored as {by_k:?}",
                        a.id, a.last_position
                    ));
                }
            }
        }
    }
    bad
}

fn check(what: &str, acked: &[Acked], stored: &[SequencedEvent]) {
    let bad = violations(acked, stored);
    eprintln!(
        "{what}: {} appends acknowledged, {} events stored, {} violations",
        acked.len(),
        stored.len(),
        bad.len()
    );
    assert!(!acked.is_empty(), "{what}: nothing was acknowledged");
    assert!(bad.is_empty(), "{what}: {bad:#?}");
}

/// `pg_ctl stop -m immediate` on `pgdata`, as the owner of the cluster: the
/// server exits without a checkpoint, as in a crash.
fn stop_immediately(pgdata: &Path) {
    let pg_ctl = crablet::embedded::postgres_tool("pg_ctl").expect("pg_ctl");
    let owner = std::fs::metadata(pgdata).expect("pgdata");
    let status = Command::new(pg_ctl)
        .arg("stop")
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "-w"])
        .uid(owner.uid())
        .gid(owner.gid())
        .current_dir("/")
        .status()
        .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl stop -m immediate failed");
}

/// A data directory of the test's own, removed (its server stopped) on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        DataDir(std::env::temp_dir().join(format!("crablet-crash-{:016x}", rand::random::<u64>())))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.0.join("pgdata/postmaster.pid").exists() {
            if let Ok(mut pg) = EmbeddedPostgres::start(&self.0) {
                let _ = pg.stop();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_cluster(dir: PathBuf) -> EmbeddedPostgres {
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
        .await
        .expect("join")
        .expect("start PostgreSQL")
}

#[actix_rt::test]
async fn a_server_killed_under_load_loses_no_acknowledged_append_and_leaves_none_partial_external_postgresql(
) {
    let database = fresh_database().await;
    let server = spawn_process(&database).await;
    let acked = load_then(&server.address, async { server.signal("KILL") }).await;
    drop(server);
    let after = spawn_process(&database).await;
    check(
        "SIGKILL, external",
        &acked,
        &read_store(&after.address).await,
    );
}

#[actix_rt::test]
async fn a_server_killed_under_load_loses_no_acknowledged_append_and_leaves_none_partial_embedded_postgresql(
) {
    let dir = DataDir::new();
    let server = spawn_embedded_process(&dir.0).await;
    let acked = load_then(&server.address, async { server.signal("KILL") }).await;
    drop(server);
    let after = spawn_embedded_process(&dir.0).await;
    check(
        "SIGKILL, embedded",
        &acked,
        &read_store(&after.address).await,
    );
    after.signal("TERM");
}

#[actix_rt::test]
async fn postgresql_stopped_immediately_under_load_loses_no_acknowledged_append_external() {
    let mut cluster = OwnCluster::start().await;
    let server = spawn_process(&cluster.url()).await;
    let pgdata = cluster.dir.join("pgdata");
    let acked = load_then(&server.address, async { stop_immediately(&pgdata) }).await;
    // The holder that started it is gone with the server; start it anew.
    drop(cluster.pg.take());
    cluster.pg = Some(start_cluster(cluster.dir.clone()).await);
    check(
        "pg_ctl stop -m immediate, external",
        &acked,
        &read_store(&server.address).await,
    );
}

#[actix_rt::test]
async fn postgresql_stopped_immediately_under_load_loses_no_acknowledged_append_embedded() {
    let dir = DataDir::new();
    let server = spawn_embedded_process(&dir.0).await;
    let pgdata = dir.0.join("pgdata");
    let acked = load_then(&server.address, async { stop_immediately(&pgdata) }).await;
    // Started again by a second holder; the server reconnects by itself.
    let holder = start_cluster(dir.0.clone()).await;
    check(
        "pg_ctl stop -m immediate, embedded",
        &acked,
        &read_store(&server.address).await,
    );
    drop(server);
    drop(holder);
}
