//! Slow and idle clients cannot take the server from the others: requests
//! that do not arrive whole within the deadline are answered 408 and their
//! connections closed, thousands of idle connections never lock out a normal
//! client, and normal clients keep their usual latency meanwhile.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{event, spawn_app_with, TestApp};

/// How many connections this process may hold open for the test, leaving
/// room for the server's side of each (the server runs in this process).
fn connection_budget(wanted: usize) -> usize {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    wanted.min((soft as usize).saturating_sub(512) / 2)
}

/// p50 and max latency of `n` sequential appends.
async fn append_latencies(app: &TestApp, n: usize, tag: &str) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let answer = app
            .append(json!({"events": [event("E", &[&format!("{tag}:{i}")], "")]}))
            .await;
        assert!(answer.appended(), "{answer:?}");
        samples.push(started.elapsed());
    }
    samples.sort();
    (samples[n / 2], samples[n - 1])
}

#[actix_rt::test]
async fn a_thousand_slow_connections_neither_stall_normal_clients_nor_outlive_the_deadline() {
    let app = spawn_app_with(|s| s.http.request_timeout_ms = 2_000).await;
    let slow = connection_budget(1_000);
    let (baseline_p50, _) = append_latencies(&app, 50, "warm").await;

    let address = app.address.trim_start_matches("http://").to_string();
    let mut slow_clients = Vec::with_capacity(slow);
    for i in 0..slow {
        let address = address.clone();
        slow_clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&address).await.ok()?;
            let started = Instant::now();
            // Thirds: a head sent byte by byte, a body sent byte by byte,
            // and a short body followed by silence.
            let (head, trickle): (&[u8], &[u8]) = match i % 3 {
                0 => (b"", b"POST /append HTTP/1.1\r\nHost: x\r\n"),
                1 => (
                    b"POST /append HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                    b"{\"events\":[{\"type\":\"E\",\"tags\":[],\"data\":\"\"}]",
                ),
                _ => (
                    b"POST /append HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
                    b"",
                ),
            };
            stream.write_all(head).await.ok()?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 512];
            for byte in trickle.iter().cycle().take(60) {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            if trickle.is_empty() || answer.is_empty() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    stream.read_to_end(&mut answer),
                )
                .await;
            }
            let status = String::from_utf8_lossy(&answer)
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok());
            Some((status, started.elapsed()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (loaded_p50, loaded_max) = append_latencies(&app, 200, "busy").await;

    let mut answered_408 = 0;
    let mut outlived = 0;
    let mut unconnected = 0;
    for client in slow_clients {
        match client.await.expect("slow client task") {
            None => unconnected += 1,
            Some((status, lived)) => {
                if status == Some(408) {
                    answered_408 += 1;
                }
                if lived > Duration::from_secs(6) {
                    outlived += 1;
                }
            }
        }
    }
    println!(
        "{slow} slow connections: {answered_408} answered 408, {outlived} open past 6 s, \
         {unconnected} could not connect; normal appends p50 {baseline_p50:?} alone, \
         {loaded_p50:?} beside them (max {loaded_max:?})"
    );
    assert_eq!(unconnected, 0);
    assert_eq!(outlived, 0, "slow connections outlived the 2 s deadline");
    assert_eq!(answered_408, slow, "every slow request gets its 408");
    assert!(
        loaded_max < Duration::from_secs(2),
        "a normal append waited {loaded_max:?} beside slow clients"
    );
    assert_eq!(
        app.read(json!({"items": [{"types": ["E"]}]}), json!({}))
            .await
            .len(),
        250,
        "slow clients wrote events"
    );
}

#[actix_rt::test]
async fn thousands_of_idle_connections_never_lock_out_a_normal_client() {
    let app = spawn_app_with(|s| s.http.request_timeout_ms = 10_000).await;
    let idle = connection_budget(5_000);
    let address = app.address.trim_start_matches("http://").to_string();
    let mut held = Vec::with_capacity(idle);
    for _ in 0..idle {
        match TcpStream::connect(&address).await {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("connection {} refused: {e}", held.len()),
        }
    }
    let started = Instant::now();
    let (p50, max) = append_latencies(&app, 20, "beside-idle").await;
    let health = app.get("/health/live").await;
    println!(
        "{} idle connections held: 20 appends in {:?} (p50 {p50:?}, max {max:?})",
        held.len(),
        started.elapsed()
    );
    assert_eq!(health.status(), 200);
    assert!(max < Duration::from_secs(2), "an append waited {max:?}");
    drop(held);
}
