//! The Rust client crate (`crablet-client`) against real `crablet serve`
//! processes: appends through it survive a SIGKILL of the server exactly
//! once, a subscription through it survives a lag disconnect and a restart
//! with every event once and in order, and its examples run.

#[path = "../../client/examples/decide.rs"]
mod decide;
#[path = "../../client/examples/read_model.rs"]
mod read_model;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crablet_client::model::{NewEvent, Query};
use crablet_client::{Append, AppendOutcome, Client, RetryPolicy};
use futures_util::StreamExt;
use serde_json::json;

use crate::helpers::subscription::counted_violations;
use crablet::faults::{FaultPoint, Faults};

use crate::helpers::{
    free_port, fresh_database, metric, metrics_text, spawn_app, spawn_app_with, start_process_on,
    ServerProcess,
};

/// `crablet serve` on `port` over `database`, with extra settings.
async fn serve(database: &str, port: u16, env: &[(&str, &str)]) -> ServerProcess {
    start_process_on(
        port,
        |command| {
            command
                .env("DATABASE_URL", database)
                .envs(env.iter().copied());
        },
        Duration::from_secs(20),
    )
    .await
}

/// A client that keeps trying for a minute (a restart takes seconds).
fn patient_client(address: &str) -> Client {
    Client::builder(address)
        .retry(RetryPolicy {
            deadline: Duration::from_secs(60),
            ..RetryPolicy::default()
        })
        .request_timeout(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

#[actix_rt::test]
async fn appends_through_the_client_across_a_sigkill_and_a_restart_are_stored_exactly_once() {
    let database = fresh_database().await;
    let port = free_port();
    let mut server = serve(&database, port, &[]).await;
    let client = patient_client(&server.address);
    let running = Cell::new(true);
    // key -> what the client answered for the append that carries it.
    let answers: RefCell<HashMap<String, Result<AppendOutcome, String>>> = Default::default();
    let writer = |w: usize| {
        let (client, running, answers) = (&client, &running, &answers);
        async move {
            let mut i = 0;
            while running.get() {
                let key = format!("w{w}-{i}");
                i += 1;
                let event = NewEvent::new("Deposited", json!({ "key": key }).to_string())
                    .tag(format!("key:{key}"));
                // Half conditional: "only if this key is not stored yet". A
                // repeat of one that was written must answer `duplicate`,
                // never "condition failed".
                let append = if w.is_multiple_of(2) {
                    Append::new([event])
                } else {
                    Append::new([event]).fail_if_events_match(Query::tag(format!("key:{key}")), 0)
                };
                let outcome = client.append(append).await.map_err(|e| e.to_string());
                answers.borrow_mut().insert(key, outcome);
            }
        }
    };
    let crash = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarted = serve(&database, port, &[]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        running.set(false);
        restarted
    };
    let (_restarted, _) =
        futures_util::join!(crash, futures_util::future::join_all((0..8).map(writer)));

    let (stored, _) = client.read(Query::all()).collect().await.expect("read");
    let mut stored_keys: HashMap<String, usize> = HashMap::new();
    for event in &stored {
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("json data");
        *stored_keys
            .entry(data["key"].as_str().expect("key").to_owned())
            .or_default() += 1;
    }
    let answers = answers.into_inner();
    let (mut errors, mut not_written, mut missing, mut repeats) = (0, 0, 0, 0);
    for (key, outcome) in &answers {
        match outcome {
            Ok(AppendOutcome::Appended { duplicate, .. }) => {
                repeats += usize::from(*duplicate);
                if stored_keys.get(key).copied().unwrap_or(0) != 1 {
                    missing += 1;
                }
            }
            Ok(other) => {
                not_written += 1;
                println!("{key}: {other:?}");
            }
            Err(e) => {
                errors += 1;
                println!("{key}: {e}");
            }
        }
    }
    let twice = stored_keys.values().filter(|n| **n > 1).count();
    let unasked = stored_keys
        .keys()
        .filter(|k| !answers.contains_key(*k))
        .count();
    println!(
        "{} appends, {} events stored, {repeats} answered as duplicates, {errors} errors, \
         {not_written} not written, {missing} not stored exactly once, {twice} stored twice, \
         {unasked} stored but never asked for",
        answers.len(),
        stored.len()
    );
    assert!(answers.len() > 100, "too few appends to mean anything");
    assert_eq!(
        (errors, not_written, missing, twice, unasked),
        (0, 0, 0, 0, 0)
    );
}

#[actix_rt::test]
async fn a_subscription_through_the_client_survives_a_lag_disconnect_and_a_restart() {
    let database = fresh_database().await;
    let port = free_port();
    let settings = [
        ("CRABLET_SUBSCRIPTIONS__BUFFER_EVENTS", "8"),
        ("CRABLET_SUBSCRIPTIONS__MAX_LAG_EVENTS", "200"),
        ("CRABLET_SUBSCRIPTIONS__HEARTBEAT_INTERVAL_MS", "250"),
    ];
    let mut server = serve(&database, port, &settings).await;
    let client = patient_client(&server.address);
    let query = Query::tag("stream:s");
    let mut events = client.subscribe(query.clone()).stream();
    // 4 KiB events: more than the sockets buffer, so a subscriber that does
    // not read falls behind on the server.
    let data = json!({ "pad": "x".repeat(4096) }).to_string();
    let append_batch = |n: usize| {
        let client = &client;
        let data = &data;
        async move {
            for _ in 0..n {
                let batch = (0..10).map(|_| NewEvent::new("E", data.clone()).tag("stream:s"));
                client.append(Append::new(batch)).await.expect("append");
            }
        }
    };

    // Read one event, then nothing while 3,000 are appended: the server
    // ends the subscription as lagging.
    append_batch(1).await;
    let mut got = Vec::new();
    got.push(events.next().await.expect("an event").expect("ok").position);
    append_batch(300).await;
    let http = crate::helpers::client();
    let mut lagging = 0.0;
    let started = Instant::now();
    while lagging < 1.0 && started.elapsed() < Duration::from_secs(20) {
        // Reading a few lets the server notice how far behind it is.
        if let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_millis(1), events.next()).await
        {
            got.push(event.position);
        }
        let text = metrics_text(&http, &server.address).await;
        lagging = metric(&text, "crablet_subscription_ended_total", "lagging");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lagging >= 1.0,
        "the server never ended the subscription as lagging"
    );

    // Then the server is killed and restarted while more are appended.
    let consume = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < 4_010 && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(Some(Ok(event))) => got.push(event.position),
                Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
                Ok(None) => panic!("subscription ended"),
                Err(_) => {}
            }
        }
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(10)).await;
        let restarted = serve(&database, port, &settings).await;
        append_batch(100).await;
        restarted
    };
    let (_restarted, ()) = futures_util::join!(restart, consume);

    let (stored, _) = client.read(query).collect().await.expect("read");
    let expected: Vec<i64> = stored.iter().map(|e| e.position).collect();
    assert_eq!(expected.len(), 4_010);
    let violations = counted_violations("client subscriber", &expected, &got);
    assert_eq!(violations, (0, 0, 0));
    assert_eq!(got.len(), expected.len());
}

#[actix_rt::test]
async fn an_append_written_but_answered_outcome_unknown_is_repeated_and_stored_once() {
    let faults = Faults::default();
    let armed = faults.clone();
    let app = spawn_app_with(move |s| {
        s.writer.faults = armed;
        s.writer.restart_backoff_ms = 10;
    })
    .await;
    let client = patient_client(&app.address);
    let mut outcomes = Vec::new();
    for key in ["a", "b", "c"] {
        // The writer lane panics after the batch committed: the first
        // attempt is answered 500 `outcome_unknown`; the repeat finds it.
        faults.arm(FaultPoint::AfterCall, 1);
        let event = NewEvent::new("Registered", json!({ "key": key }).to_string())
            .tag(format!("key:{key}"));
        let append = Append::new([event]).fail_if_events_match(Query::tag(format!("key:{key}")), 0);
        outcomes.push(client.append(append).await.expect("append"));
    }
    assert_eq!(faults.fired(), 3, "every first attempt was faulted");
    let (stored, _) = client.read(Query::all()).collect().await.expect("read");
    let positions: Vec<i64> = stored.iter().map(|e| e.position).collect();
    let expected: Vec<AppendOutcome> = positions
        .iter()
        .map(|&p| AppendOutcome::Appended {
            positions: p..=p,
            duplicate: true,
        })
        .collect();
    assert_eq!(stored.len(), 3, "each append stored once: {stored:?}");
    assert_eq!(outcomes, expected);
}

/// A TCP proxy to `target` whose connections can be silenced: after
/// `silence()`, the connections open at that moment stay open but carry
/// nothing more either way (a dead server or a lost network, without a
/// reset); new connections are forwarded as usual.
struct SilentProxy {
    address: String,
    generation: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl SilentProxy {
    async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let target = target.trim_start_matches("http://").to_owned();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shared = generation.clone();
        actix_rt::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let born = shared.load(Ordering::SeqCst);
                let alive = shared.clone();
                let target = target.clone();
                actix_rt::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    futures_util::join!(
                        pump(in_read, out_write, alive.clone(), born),
                        pump(out_read, in_write, alive, born)
                    );
                });
            }
        });
        SilentProxy {
            address,
            generation,
        }
    }

    fn silence(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, or holds both silently once the
/// proxy's generation is no longer `born`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: std::sync::Arc<std::sync::atomic::AtomicU32>,
    born: u32,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if alive.load(std::sync::atomic::Ordering::SeqCst) != born {
            // Silenced: hold the connection, say nothing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The next event's position, within 10 s.
async fn next(events: &mut crablet_client::Subscription) -> i64 {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("an event")
        .position
}

#[actix_rt::test]
async fn a_subscription_whose_connection_goes_silent_reconnects_after_its_heartbeat_timeout() {
    let app = spawn_app_with(|s| s.subscriptions.heartbeat_interval_ms = 200).await;
    let proxy = SilentProxy::start(&app.address).await;
    let through_proxy = Client::builder(&proxy.address)
        .heartbeat_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let direct = Client::new(&app.address).expect("client");
    let mut events = through_proxy.subscribe(Query::tag("s")).stream();
    let append = |n: usize| {
        let direct = &direct;
        async move {
            for i in 0..n {
                let event = NewEvent::new("E", json!({ "i": i }).to_string()).tag("s");
                direct.append(event).await.expect("append");
            }
        }
    };
    append(5).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut events).await);
    }
    // The open connection goes silent: no event, no heartbeat, no close.
    proxy.silence();
    append(5).await;
    let silenced = Instant::now();
    for _ in 0..5 {
        got.push(next(&mut events).await);
    }
    let waited = silenced.elapsed();
    println!("the five events after the silence came {waited:?} later");
    assert_eq!(got, (1..=10).collect::<Vec<i64>>());
    assert!(
        waited >= Duration::from_millis(900),
        "not through a new connection: {waited:?}"
    );
}

#[actix_rt::test]
async fn the_decide_example_lets_exactly_the_covered_withdrawals_through() {
    let app = spawn_app().await;
    let succeeded = decide::run(&app.address, "alice").await.expect("example");
    assert_eq!(succeeded, 5);
    let client = Client::new(&app.address).expect("client");
    let projection = client
        .project(vec![decide::balance("alice")])
        .await
        .expect("project");
    assert_eq!(projection.states["balance"], json!(0));
}

#[actix_rt::test]
async fn the_read_model_example_folds_every_movement_once() {
    let app = spawn_app().await;
    let client = Client::new(&app.address).expect("client");
    decide::deposit(&client, "ada", 50).await.expect("deposit");
    decide::deposit(&client, "bob", 7).await.expect("deposit");
    assert!(decide::withdraw(&client, "ada", 20)
        .await
        .expect("withdraw"));
    let unrelated = client
        .append(NewEvent::new("Noted", "{}"))
        .await
        .expect("append");
    let last = decide::withdraw_in_one_request(&client, "bob", 7)
        .await
        .expect("withdraw");
    assert!(last && unrelated.is_appended());
    let head = client.head().await.expect("head");
    let model = read_model::run(&app.address, head).await.expect("example");
    assert_eq!(model.accounts["ada"], 30);
    assert_eq!(model.accounts["bob"], 0);
    assert_eq!(model.position, head);
}
