//! Subscriptions (`/subscribe`) and `/head`: every matching event exactly once
//! and in order, across processes, through resumption and slow consumers;
//! heartbeats, the subscriber limit and the places closed clients free, the
//! memory subscribers that never read may hold, the end of a subscriber that
//! lags too far and the final message on shutdown.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::subscription::{
    counted_violations, find, json_lines, positions, positions_in, read_until, unread_subscription,
    violations, Item, Subscription,
};
use crablet::dcb::SequencedEvent;

use crate::helpers::{
    append_events, client, event, eventually, fresh_database, get_read, metric, metrics_text,
    post_append, spawn_app, spawn_app_with, spawn_process, spawn_process_with_env, two_processes,
    ServerProcess, TestApp,
};

#[actix_rt::test]
async fn four_subscribers_on_two_processes_get_every_matching_event_once_in_order() {
    let (_database, first, second) = two_processes().await;
    let http = client();
    let queries = [
        json!({"items": []}),
        json!({"items": [{"tags": ["color:red"]}]}),
        json!({"items": [{"types": ["Shipped"]}]}),
        json!({"items": [{"types": ["Ordered"], "tags": ["color:blue"]}, {"tags": ["big"]}]}),
    ];
    // Some history first, so the subscribers catch up, then follow live.
    for i in 0..50 {
        let color = if i % 2 == 0 {
            "color:red"
        } else {
            "color:blue"
        };
        post_append(
            &http,
            &first.address,
            &json!({"events": [event("Ordered", &[color], &format!("{i}"))]}),
        )
        .await;
    }
    let mut subscriptions = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let address = if i % 2 == 0 {
            &first.address
        } else {
            &second.address
        };
        subscriptions.push(Subscription::open(&http, address, query, None, i < 2, None).await);
    }
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (http, address) = (
                http.clone(),
                if w % 2 == 0 {
                    first.address.clone()
                } else {
                    second.address.clone()
                },
            );
            tokio::spawn(async move {
                for i in 0..60 {
                    let color = ["color:red", "color:blue", "color:green"][(w + i) % 3];
                    let kind = ["Ordered", "Shipped"][i % 2];
                    let mut events = vec![event(kind, &[color], &format!("{w}-{i}"))];
                    if i % 10 == 0 {
                        // Now and then a larger append, with a "big" tag.
                        events.extend(
                            (0..30).map(|j| event("Ordered", &[color, "big"], &format!("{j}"))),
                        );
                    }
                    append_events(&http, &address, &events).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let mut total = (0, 0, 0);
    for (i, (query, subscription)) in queries.iter().zip(subscriptions.iter_mut()).enumerate() {
        let expected = positions(&get_read(&http, &first.address, query, &json!({})).await);
        let got = subscription
            .events(expected.len(), Duration::from_secs(30))
            .await;
        // Nothing more may follow.
        let extra = subscription.events(1, Duration::from_millis(300)).await;
        let mut got = positions(&got);
        got.extend(positions(&extra));
        let (missing, duplicated, unordered) = violations(&expected, &got);
        println!(
            "subscriber {i}: expected {} events, got {}: {missing} missing, {duplicated} duplicated, {unordered} out of order, {} extra, {} SSE ids off",
            expected.len(),
            got.len(),
            extra.len(),
            subscription.bad_ids.load(std::sync::atomic::Ordering::Relaxed),
        );
        assert_eq!(got, expected, "subscriber {i} saw a different sequence");
        total.0 += missing;
        total.1 += duplicated;
        total.2 += unordered;
        assert_eq!(
            subscription
                .bad_ids
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    assert_eq!(total, (0, 0, 0));
}

#[actix_rt::test]
async fn a_subscriber_dropped_mid_stream_resumes_with_last_event_id_or_after_and_misses_nothing() {
    let app = spawn_app().await;
    let all = json!({"items": []});
    for i in 0..100 {
        app.append(json!({"events": [event("E", &["t"], &format!("{i}"))]}))
            .await;
    }
    // SSE: read 40, drop, resume with Last-Event-ID.
    let mut sse = Subscription::open(&app.http, &app.address, &all, None, true, None).await;
    let first = sse.events(40, Duration::from_secs(10)).await;
    drop(sse);
    let last_seen = first.last().expect("40 events").position;
    for i in 100..200 {
        app.append(json!({"events": [event("E", &["t"], &format!("{i}"))]}))
            .await;
    }
    // `after=1` is overridden by the header.
    let mut resumed = Subscription::open(
        &app.http,
        &app.address,
        &all,
        Some(1),
        true,
        Some(last_seen),
    )
    .await;
    let rest = resumed.events(160, Duration::from_secs(10)).await;
    assert_resumed(&app, &first, &rest, "SSE").await;

    // NDJSON: the same with `after`, while appends continue live.
    let mut nd = Subscription::open(&app.http, &app.address, &all, None, false, None).await;
    let first = nd.events(150, Duration::from_secs(10)).await;
    drop(nd);
    for i in 200..250 {
        app.append(json!({"events": [event("E", &["t"], &format!("{i}"))]}))
            .await;
    }
    let after = first.last().expect("events").position;
    let mut resumed =
        Subscription::open(&app.http, &app.address, &all, Some(after), false, None).await;
    let rest = resumed.events(100, Duration::from_secs(10)).await;
    assert_resumed(&app, &first, &rest, "NDJSON").await;
}

/// Asserts that the events read before a subscription was dropped, `first`,
/// and after it resumed, `rest`, are the whole store, once and in order.
async fn assert_resumed(
    app: &TestApp,
    first: &[SequencedEvent],
    rest: &[SequencedEvent],
    format: &str,
) {
    let mut got = positions(first);
    got.extend(positions(rest));
    let expected = positions(&app.read_all().await);
    counted_violations(&format!("{format} resume"), &expected, &got);
    assert_eq!(got, expected);
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[actix_rt::test]
async fn a_slow_subscriber_neither_delays_the_others_nor_grows_memory_without_bound() {
    let database = fresh_database().await;
    let mut server =
        spawn_process_with_env(&database, &[("CRABLET_SUBSCRIPTIONS__BUFFER_EVENTS", "64")]).await;
    let http = client();
    let all = json!({"items": []});
    // The slow subscriber sends its request and then reads nothing at all.
    let mut slow = unread_subscription(&server.address, &all).await;
    let mut fast = Subscription::open(&http, &server.address, &all, None, false, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes(server.pid()).unwrap_or(0);

    // 40 MB of events: far more than the socket buffers hold.
    let data = "x".repeat(2_000);
    let (appends, per_append) = (200, 100);
    let mut latencies = Vec::new();
    let mut fast_events = Vec::new();
    for i in 0..appends {
        let events: Vec<Value> = (0..per_append)
            .map(|_| event("E", &[&format!("a:{i}")], &data))
            .collect();
        let started = Instant::now();
        append_events(&http, &server.address, &events).await;
        let got = fast.events(per_append, Duration::from_secs(10)).await;
        latencies.push(started.elapsed());
        let short = got.len() < per_append;
        fast_events.extend(got);
        if short {
            break;
        }
    }
    latencies.sort();
    let rss_after = rss_bytes(server.pid()).unwrap_or(0);
    let metrics = metrics_text(&http, &server.address).await;
    let detached = metric(&metrics, "crablet_subscription_detached_total", "");
    let expected: Vec<i64> = (1..=(appends * per_append) as i64).collect();
    let (missing, duplicated, unordered) = violations(&expected, &positions(&fast_events));
    println!(
        "fast subscriber: {} events, {missing} missing, {duplicated} duplicated, {unordered} out of order; append-to-delivery p50 {:?}, max {:?}; slow subscriber detached {detached} times; server RSS {} MiB before, {} MiB after {} MiB appended",
        fast_events.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        rss_before >> 20,
        rss_after >> 20,
        (appends * per_append * data.len()) >> 20,
    );
    assert_eq!((missing, duplicated, unordered), (0, 0, 0));
    assert!(latencies[latencies.len() / 2] < Duration::from_millis(500));
    assert!(detached >= 1.0, "the slow subscriber was never detached");
    assert!(
        rss_after < rss_before + (24 << 20),
        "server RSS grew from {} MiB to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );

    // Now the slow subscriber reads: it gets everything, once, in order.
    let needle = format!("\"position\":{}}}", appends * per_append);
    let received = read_until(&mut slow, |received| {
        let tail = &received[received.len().saturating_sub(64 << 10)..];
        find(tail, needle.as_bytes()).is_some()
    })
    .await;
    let slow_positions = positions_in(&received);
    assert_eq!(
        counted_violations("slow subscriber", &expected, &slow_positions),
        (0, 0, 0)
    );
    let _ = server_kill(&mut server);
}

#[actix_rt::test]
async fn a_subscriber_that_falls_too_far_behind_is_ended_saying_where_to_resume_and_misses_nothing()
{
    let database = fresh_database().await;
    let max_lag = 2_000;
    let mut server = spawn_process_with_env(
        &database,
        &[
            ("CRABLET_SUBSCRIPTIONS__BUFFER_EVENTS", "64"),
            (
                "CRABLET_SUBSCRIPTIONS__MAX_LAG_EVENTS",
                &max_lag.to_string(),
            ),
        ],
    )
    .await;
    let http = client();
    // The lagging subscriber sends its request, then reads nothing while
    // 20 MB of events (10,000) are appended: far more than socket buffers
    // hold, and far more than max_lag_events.
    let mut slow = unread_subscription(&server.address, &json!({"items": []})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let data = "x".repeat(2_000);
    let (appends, per_append) = (100, 100);
    for i in 0..appends {
        let events: Vec<Value> = (0..per_append)
            .map(|_| event("E", &[&format!("a:{i}")], &data))
            .collect();
        append_events(&http, &server.address, &events).await;
    }
    let total = (appends * per_append) as i64;

    // Now it reads: what was already on its way, then the final message.
    let received = read_until(&mut slow, |received| {
        let tail = &received[received.len().saturating_sub(4096)..];
        find(tail, b"{\"end\"").is_some() && find(tail, b"}}\n").is_some()
    })
    .await;
    let got = positions_in(&received);
    let lines = json_lines(&received);
    let end = lines
        .iter()
        .find(|v| v.get("end").is_some())
        .unwrap_or_else(|| panic!("no final message after {} events", got.len()));
    let resume_after = end["end"]["after"].as_i64().expect("after");
    println!(
        "lagging subscriber: {} events, then {end}; {} events stored",
        got.len(),
        total
    );
    assert_eq!(end["end"]["reason"], "lagging");
    assert!(resume_after < total - max_lag, "{resume_after}");
    // Everything up to where it was told to resume arrived, once, in order.
    let expected: Vec<i64> = (1..=resume_after).collect();
    assert_eq!(violations(&expected, &got), (0, 0, 0));

    // Resuming there delivers the rest: nothing lost at the cut.
    let mut resumed = Subscription::open(
        &http,
        &server.address,
        &json!({"items": []}),
        Some(resume_after),
        false,
        None,
    )
    .await;
    let rest = resumed
        .events((total - resume_after) as usize, Duration::from_secs(60))
        .await;
    let expected: Vec<i64> = (resume_after + 1..=total).collect();
    assert_eq!(violations(&expected, &positions(&rest)), (0, 0, 0));
    let _ = server_kill(&mut server);
}

/// Stops `server` with SIGTERM; its exit status, if it exits within 15 s.
fn server_kill(server: &mut ServerProcess) -> Option<std::process::ExitStatus> {
    server.signal("TERM");
    server.wait_for_exit(Duration::from_secs(15))
}

#[actix_rt::test]
async fn a_thousand_subscribers_each_get_their_own_events() {
    let app = spawn_app_with(|s| s.subscriptions.heartbeat_interval_ms = 60_000).await;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let n = 1_000.min((soft as usize).saturating_sub(512) / 2);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(n + 16)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut subscriptions = Vec::with_capacity(n);
    for i in 0..n {
        let query = json!({"items": [{"tags": [format!("s:{i}")]}]});
        subscriptions
            .push(Subscription::open(&http, &app.address, &query, None, i % 2 == 0, None).await);
    }
    let opened = started.elapsed();
    // Let every subscriber join the live feed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .flat_map(|i| {
                let tag = format!("s:{i}");
                vec![event("E", &[&tag], "1"), event("E", &[&tag], "2")]
            })
            .collect();
        assert!(app.append(json!({"events": events})).await.appended());
    }
    let mut wrong = 0;
    for (i, s) in subscriptions.iter_mut().enumerate() {
        let got = s.events(2, Duration::from_secs(20)).await;
        let ok = got.len() == 2
            && got.iter().all(|e| e.tags == vec![format!("s:{i}")])
            && got[0].data == "1"
            && got[1].data == "2";
        if !ok {
            wrong += 1;
        }
    }
    println!(
        "{n} subscribers opened in {opened:?}; all events delivered {:?} after the first append; {wrong} subscribers got something else",
        started.elapsed()
    );
    assert_eq!(wrong, 0);
}

#[actix_rt::test]
async fn heartbeats_arrive_in_both_formats_with_the_head() {
    let app = spawn_app_with(|s| s.subscriptions.heartbeat_interval_ms = 100).await;
    app.append(json!({"events": [event("E", &[], "")]})).await;
    let query = json!({"items": [{"types": ["Other"]}]});
    for sse in [true, false] {
        let mut s = Subscription::open(&app.http, &app.address, &query, None, sse, None).await;
        let (mut heartbeats, mut heads) = (0, Vec::new());
        let deadline = Instant::now() + Duration::from_millis(1_000);
        while let Some(item) = s
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if let Item::Heartbeat(head) = item {
                heartbeats += 1;
                heads.push(head);
            }
        }
        println!("sse={sse}: {heartbeats} heartbeats in 1 s, heads {heads:?}");
        assert!(heartbeats >= 5, "{heartbeats} heartbeats");
        assert!(heads.iter().all(|h| *h == 1));
    }
}

#[actix_rt::test]
async fn over_the_subscriber_limit_the_answer_is_503_json_until_a_place_frees() {
    let app = spawn_app_with(|s| s.subscriptions.max_subscribers = 2).await;
    let all = json!({"items": []});
    let a = Subscription::open(&app.http, &app.address, &all, None, false, None).await;
    let _b = Subscription::open(&app.http, &app.address, &all, None, true, None).await;
    let third = app.get("/subscribe").await;
    let status = third.status().as_u16();
    let body = third.text().await.unwrap_or_default();
    println!("third subscriber: {status} {body}");
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "overloaded");
    drop(a);
    // The server reads the end of the closed connection: the place frees
    // without anything written to it.
    let app = &app;
    let freed = eventually(20, Duration::from_millis(50), move || async move {
        app.get("/subscribe").await.status() == 200
    })
    .await;
    assert!(freed, "the place of a closed subscription was never freed");
}

#[actix_rt::test]
async fn subscribe_parameters_are_strict() {
    let app = spawn_app().await;
    for path in [
        "/subscribe?from=1",
        "/subscribe?after=-1",
        "/subscribe?after=abc",
        "/subscribe?query=%7B%22items%22%3A%5B%7B%7D%5D%7D",
    ] {
        let (status, body) = app.raw(reqwest::Method::GET, path, None).await;
        println!("{path}: {status} {body}");
        assert_eq!(status, 400, "{path}");
    }
    let response = app
        .http
        .get(format!("{}/subscribe", app.address))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[actix_rt::test]
async fn post_subscribe_takes_query_and_after_in_a_json_body() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.append(json!({"events": [event("E", &[&format!("n:{}", i % 2)], "")]}))
            .await;
    }
    let response = app
        .http
        .post(format!("{}/subscribe", app.address))
        .json(&json!({"query": {"items": [{"tags": ["n:0"]}]}, "after": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.lines().count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let got: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, vec![3, 5]);
}

#[actix_rt::test]
async fn head_is_the_last_position_and_zero_when_empty() {
    let app = spawn_app().await;
    let (status, body) = app.raw(reqwest::Method::GET, "/head", None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"position":0}"#));
    app.append(json!({"events": [event("E", &[], ""), event("E", &[], "")]}))
        .await;
    let (_, body) = app.raw(reqwest::Method::GET, "/head", None).await;
    assert_eq!(body, r#"{"position":2}"#);
}

#[actix_rt::test]
async fn on_shutdown_every_subscription_ends_at_once_saying_where_to_resume() {
    let database = fresh_database().await;
    let mut server = spawn_process(&database).await;
    let http = client();
    let all = json!({"items": []});
    post_append(
        &http,
        &server.address,
        &json!({"events": [event("E", &[], "")]}),
    )
    .await;
    let mut subscriptions = Vec::new();
    for sse in [true, false, true, false] {
        let mut s = Subscription::open(&http, &server.address, &all, None, sse, None).await;
        assert_eq!(s.events(1, Duration::from_secs(5)).await.len(), 1);
        subscriptions.push(s);
    }
    let started = Instant::now();
    let status = server_kill(&mut server);
    let stopped = started.elapsed();
    let mut ends = 0;
    for s in subscriptions.iter_mut() {
        while let Some(item) = s.next(Duration::from_secs(1)).await {
            if let Item::End(end) = item {
                assert_eq!(end["end"]["reason"], "shutdown");
                assert_eq!(end["end"]["after"], 1);
                ends += 1;
            }
        }
    }
    println!("server stopped in {stopped:?} ({status:?}); {ends} of 4 subscriptions got their final message");
    assert_eq!(ends, 4);
    assert!(
        stopped < Duration::from_secs(5),
        "shutdown took {stopped:?}"
    );
}

#[actix_rt::test]
async fn subscribers_that_read_and_close_free_their_places_at_once() {
    // Heartbeats far apart: a closed subscriber is not noticed by a write.
    let app = spawn_app_with(|s| s.subscriptions.heartbeat_interval_ms = 60_000).await;
    for i in 0..10 {
        app.append(json!({"events": [event("E", &["t"], &format!("{i}"))]}))
            .await;
    }
    let all = json!({"items": []});
    let (cycles, batch) = (500, 50);
    let started = Instant::now();
    for b in 0..cycles / batch {
        let rounds = (0..batch).map(|i| {
            let (http, address, all) = (app.http.clone(), app.address.clone(), all.clone());
            async move {
                let sse = (b + i) % 2 == 0;
                let mut s = Subscription::open(&http, &address, &all, None, sse, None).await;
                s.events(10, Duration::from_secs(20)).await.len()
            }
        });
        let read = futures_util::future::join_all(rounds).await;
        assert!(read.iter().all(|n| *n == 10), "{read:?}");
    }
    let cycled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let active = metric(
        &metrics_text(&app.http, &app.address).await,
        "crablet_subscriptions_active",
        "",
    );
    println!("{cycles} subscribe-read-close cycles in {cycled:?}; 2 s later {active} subscriptions active");
    assert!(
        active <= 5.0,
        "{active} subscriptions still active after their clients closed"
    );
    let mut s = Subscription::open(&app.http, &app.address, &all, None, false, None).await;
    assert_eq!(s.events(10, Duration::from_secs(10)).await.len(), 10);
}

#[actix_rt::test]
async fn subscribers_that_never_read_hold_no_more_than_their_byte_budget_of_large_events() {
    let database = fresh_database().await;
    let budget: usize = 2 << 20;
    let mut server = spawn_process_with_env(
        &database,
        &[(
            "CRABLET_SUBSCRIPTIONS__BUFFER_BYTES",
            budget.to_string().as_str(),
        )],
    )
    .await;
    let http = client();
    // Four subscribers, each to its own quarter of the events, that read
    // nothing at all: each would buffer 25 MiB of distinct events.
    let quarters = 4;
    let mut silent = Vec::new();
    for q in 0..quarters {
        let query = json!({"items": [{"tags": [format!("q:{q}")]}]});
        silent.push(unread_subscription(&server.address, &query).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(server.pid()).unwrap_or(0);

    // 200 events of 512 KiB, one per quarter in each append.
    let data = "x".repeat(512 << 10);
    let appends = 50;
    for _ in 0..appends {
        let events: Vec<Value> = (0..quarters)
            .map(|q| event("Big", &[&format!("q:{q}")], &data))
            .collect();
        append_events(&http, &server.address, &events).await;
    }
    // Let the tailer pass everything on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(server.pid()).unwrap_or(0);
    let metrics = metrics_text(&http, &server.address).await;
    let buffered = metric(&metrics, "crablet_subscription_buffered_bytes", "") as usize;
    let detached = metric(&metrics, "crablet_subscription_detached_total", "");
    let appended = appends * quarters * data.len();
    println!(
        "{} MiB appended; buffered {} KiB in live buffers, {detached} detachments; server RSS {} MiB before, {} MiB after",
        appended >> 20,
        buffered >> 10,
        rss_before >> 20,
        rss_after >> 20,
    );
    assert!(
        buffered <= quarters * budget,
        "{buffered} bytes buffered for {quarters} subscribers of {budget} bytes each"
    );
    // Each also has up to one chunk of its events on its way to the socket.
    let margin = 24 << 20;
    assert!(
        (rss_after as usize) < rss_before as usize + 2 * quarters * budget + margin,
        "server RSS grew from {} MiB to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );

    // Now the first reads: every one of its events, once, in order.
    let expected: Vec<i64> = (0..appends as i64)
        .map(|i| i * quarters as i64 + 1)
        .collect();
    let last = format!("\"position\":{}", expected[expected.len() - 1]);
    let received = read_until(&mut silent[0], |received| {
        let tail = &received[received.len().saturating_sub(1 << 20)..];
        find(tail, last.as_bytes()).is_some() && tail.ends_with(b"\n")
    })
    .await;
    let got = positions_in(&received);
    counted_violations("the reader", &expected, &got);
    assert_eq!(got, expected);
    let _ = server_kill(&mut server);
}
